"""The unstack pass: per-direction coefficients on the CPU, same values as nested autograd."""

from __future__ import annotations

import pytest
import torch
from helpers import compare, mlp, two_tiers
from hypothesis import strategies as st
from torch import nn

import taylorc
from taylorc.passes.unstack import MAX_DIRECTIONS

aten = torch.ops.aten
BURGERS = {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}
pytestmark = pytest.mark.skipif(torch.get_default_device().type != "cpu", reason="CPU pass")


def graph(op, x):
    gm = op.graph_for(x)[0]
    return getattr(gm, "_orig_mod", gm)


def direction_rows(gm) -> int:
    """How many per-direction rows of the ``directions`` buffer the graph reads."""
    return sum(
        n.target is aten.select.int and getattr(n.args[0], "target", None) == "directions"
        for n in gm.graph.nodes
    )


def stacks(gm) -> int:
    return sum(n.target is aten.stack.default for n in gm.graph.nodes)


@pytest.mark.parametrize("method", ["collapsed", "taylor"])
def test_burgers_terms_are_split_and_match_nested(method):
    torch.manual_seed(0)
    model = mlp(2, [9, 7, 5])
    x = torch.rand(13, 2, dtype=torch.float64)
    op = taylorc.compile(model, BURGERS, coords="x t", method=method)
    gm = graph(op, x)
    assert direction_rows(gm) == 2 and stacks(gm) == 0
    compare(model, BURGERS, x, methods=(method,), rel=1e-10, coords="x t")
    got = op(x)
    sum(v.pow(2).sum() for v in got.values()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = taylorc.compile(model, BURGERS, coords="x t", method="nested")(x)
    sum(v.pow(2).sum() for v in ref.values()).backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)


class SumHead(nn.Module):
    """Ends in a reduction over features, which the splitter does not split."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 6)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return (h * h).sum(-1, keepdim=True)


def test_unknown_consumers_get_the_stacked_value_back():
    model = SumHead().double()
    x = torch.rand(7, 3, dtype=torch.float64)
    op = taylorc.compile(model, "laplacian")
    gm = graph(op, x)
    assert direction_rows(gm) == 3 and stacks(gm) > 0
    compare(model, {"lap": "laplacian", "g": "gradient"}, x, rel=1e-10)


@pytest.mark.parametrize(
    "operator,D",
    [("u_xx", 2), ("laplacian", MAX_DIRECTIONS + 1)],  # one direction; too many
)
def test_left_stacked_outside_its_range(operator, D):
    model = mlp(D, [6])
    x = torch.rand(5, D, dtype=torch.float64)
    coords = "x t" if D == 2 else None
    assert direction_rows(graph(taylorc.compile(model, operator, coords=coords), x)) == 0


TERMS = ["u", "u_x", "u_y", "u_xx", "u_xy", "u_yy", "u_xxy", "u_xyy", "u_xxyy", "u_xxxx"]


def _random_operator_dict_matches_nested(spec, seed):
    torch.manual_seed(seed)
    ops = {k: " + ".join(f"{c}*{t}" for t, c in terms) for k, terms in spec.items()}
    model = mlp(2, [5, 4], activation="sin")
    compare(model, ops, torch.rand(6, 2, dtype=torch.float64), rel=1e-9, coords="x y")


# 4 examples in the default tier, 12 in the slow one
test_random_operator_dicts_match_nested, test_random_operator_dicts_match_nested_deep = two_tiers(
    _random_operator_dict_matches_nested,
    fast=4,
    deep=12,
    spec=st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.lists(
            st.tuples(st.sampled_from(TERMS), st.sampled_from([-3, -2, -1, 1, 2, 3])),
            min_size=1,
            max_size=3,
            unique_by=lambda term: term[0],  # repeated terms could cancel to zero
        ),
        min_size=1,
        max_size=3,
    ),
    seed=st.integers(0, 2**16),
)
