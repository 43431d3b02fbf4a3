"""The CPU tanh pass: accuracy of the expm1 form, its derivative, and where the pass applies."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import taylorc
from taylorc.passes.cpu_tanh import tanh_by_expm1, tanh_expm1
from taylorc_contrib.demos.common import mlp

aten = torch.ops.aten


def test_expm1_form_is_accurate_in_float32():
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.logspace(-38, 1, 4001)])
    x = torch.cat([x, -x])
    exact = torch.tanh(x.double())
    rel = (tanh_by_expm1(x).double() - exact).abs() / exact.abs().clamp_min(1e-300)
    assert rel.max() < 4e-7  # about 3 ulp; torch's own tanh: 6e-8


def test_expm1_form_special_values():
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e30, -1e30])
    y = tanh_by_expm1(x)
    assert y[:2].eq(0).all() and torch.signbit(y[1]) and not torch.signbit(y[0])
    assert y[2] == 1 and y[3] == -1 and y[4].isnan() and y[5] == 1 and y[6] == -1


@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=16))
def test_derivatives_are_tanh_derivatives(values):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(tanh_expm1(x), torch.tanh(x), rtol=1e-14, atol=1e-15)
    assert torch.autograd.gradcheck(tanh_expm1, (x,))
    assert torch.autograd.gradgradcheck(tanh_expm1, (x,))


def node_targets(op, x):
    gm = op.graph_for(x)[0]
    return [n.target for n in getattr(gm, "_orig_mod", gm).graph.nodes]


@pytest.mark.skipif(torch.get_default_device().type != "cpu", reason="CPU pass")
@pytest.mark.parametrize("widths", [[16], pytest.param([12, 9, 7], marks=pytest.mark.slow)])
def test_taylorc_backend_rewrites_float32_tanh_on_the_cpu(widths):
    torch.manual_seed(0)
    model = mlp(3, widths)
    x = torch.rand(37, 3)
    op = taylorc.compile(model, "laplacian", backend="taylorc")
    targets = node_targets(op, x)
    assert aten.tanh.default not in targets
    assert targets.count(tanh_expm1) == len(widths)
    reference = copy.deepcopy(model).double()
    expected = taylorc.compile(reference, "laplacian", method="nested")(x.double())
    got = op(x).double()
    assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5
    op(x).pow(2).mean().backward()
    params = list(model.parameters())[:-1]  # the last bias does not reach a Laplacian
    grads = [p.grad.clone() for p in params]
    model.zero_grad()
    taylorc.compile(model, "laplacian")(x).pow(2).mean().backward()  # eager, torch's tanh
    for g, p in zip(grads, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_float64_and_other_backends_keep_torch_tanh():
    torch.manual_seed(0)
    model = mlp(2, [8])
    x = torch.rand(5, 2)
    assert aten.tanh.default in node_targets(taylorc.compile(model, "laplacian"), x)
    inductor = taylorc.compile(model, "laplacian", backend="inductor")
    assert aten.tanh.default in node_targets(inductor, x)
    model.double()
    exact = taylorc.compile(model, "laplacian", backend="taylorc")
    targets = node_targets(exact, x.double())
    assert aten.tanh.default in targets and tanh_expm1 not in targets
