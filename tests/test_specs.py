"""Symbolic operator specs: every way of writing one, exact weights, mixed partials, coefficients, errors."""

import math

import pytest
import sympy
import torch
from helpers import assert_close, compare, mlp, two_tiers
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import taylorc
from taylorc.operators import (
    Advection,
    Biharmonic,
    Heat,
    Helmholtz,
    Laplacian,
    LinearOperator,
    Wave,
    WeightedLaplacian,
    build_plan,
    parse,
    verify_expansion,
)


def _plan_key(op, D, coords):
    p = build_plan({"out": op}, D, coords)
    return p.K, p.directions, p.top_weights, [(q.order, q.weights, q.top) for q in p.terms[0].parts]


def test_every_way_of_writing_an_operator_gives_the_same_plan():
    x, y = sympy.symbols("x y")
    u = sympy.Function("u")
    ways = [
        "laplacian",
        Laplacian(),
        "u_xx + u_yy",
        sympy.Derivative(u(x, y), x, 2) + sympy.Derivative(u(x, y), y, 2),
        LinearOperator({("x", "x"): 1, ("y", "y"): 1}),
        LinearOperator({(0, 0): 1, (1, 1): 1}),
        WeightedLaplacian([[1.0, 0.0], [0.0, 1.0]]),
    ]
    keys = [_plan_key(parse(w, ["x", "y"]), 2, ["x", "y"]) for w in ways]
    assert all(k == keys[0] for k in keys)
    mixed = [
        "u_t - 0.01*u_xx + 2*u_xy",
        LinearOperator({("t",): 1, ("x", "x"): -0.01, ("x", "y"): 2}),
    ]
    t = sympy.Symbol("t")
    mixed.append(
        sympy.Derivative(u(x, y, t), t)
        - sympy.Rational(1, 100) * sympy.Derivative(u(x, y, t), x, 2)
        + 2 * sympy.Derivative(u(x, y, t), x, y)
    )
    keys = [_plan_key(parse(w, ["x", "y", "t"]), 3, ["x", "y", "t"]) for w in mixed]
    assert all(k == keys[0] for k in keys)


@pytest.mark.parametrize(
    "alpha",
    [(2,), (1, 1), (2, 1), (1, 1, 1), (3, 1), (2, 2), (1, 1, 2), (1, 1, 1, 1), (4,), (3, 2)],
)
def test_interpolation_weights_are_exact(alpha):
    D = len(alpha)
    z = sympy.symbols(f"z0:{D}")
    variables = tuple(i for i, a in enumerate(alpha) for _ in range(a))
    assert verify_expansion(
        LinearOperator({variables: 1}), D, math.prod(zi**a for zi, a in zip(z, alpha)), z
    )


def test_named_operators_are_exact_polynomials():
    z = sympy.symbols("z0:3")
    lap_xy = z[0] ** 2 + z[1] ** 2
    assert verify_expansion(Heat(), 3, z[2] - lap_xy, z)
    assert verify_expansion(Wave(), 3, z[2] ** 2 - lap_xy, z)
    assert verify_expansion(Helmholtz(k=2.0), 3, sum(zi**2 for zi in z) + 4, z)
    assert verify_expansion(Advection([1.0, -2.0, 0.5]), 3, z[0] - 2 * z[1] + z[2] / 2, z)
    C = [[2.0, 0.5, 0.0], [0.5, 1.0, -1.0], [0.0, -1.0, 3.0]]
    target = sum(sympy.nsimplify(C[i][j]) * z[i] * z[j] for i in range(3) for j in range(3))
    assert verify_expansion(WeightedLaplacian(C), 3, target, z)
    assert verify_expansion(Biharmonic(dims=[0, 2]), 3, (z[0] ** 2 + z[2] ** 2) ** 2, z)


def _random_operator(draw, D, max_order):
    names = [f"c{i}" for i in range(D)]
    n_terms = draw(st.integers(1, 4))
    terms = {}
    for _ in range(n_terms):
        k = draw(st.integers(0, max_order))
        variables = tuple(sorted(draw(st.lists(st.integers(0, D - 1), min_size=k, max_size=k))))
        terms[variables] = draw(st.sampled_from([1, -2, 0.5, 3]))
    text = " + ".join(
        f"({c})*u" + ("_" + "".join(names[v] for v in variables) if variables else "")
        for variables, c in terms.items()
    )
    return text, names


def _random_linear_operator_matches_nested(data, D, max_order):
    text, names = _random_operator(data.draw, D, max_order)
    model = mlp(D, [6, 6], data.draw(st.sampled_from(["tanh", "sin", "sigmoid"])), out=2)
    x = torch.randn(3, D, dtype=torch.float64)
    for method in ("collapsed", "taylor"):
        out = taylorc.compile(model, text, coords=names, method=method)(x)
        ref = taylorc.compile(model, text, coords=names, method="nested")(x)
        assert_close(out, ref, 1e-8)


# 5 examples in the default tier, 15 in the slow one
test_random_linear_operators_match_nested, test_random_linear_operators_match_nested_deep = (
    two_tiers(
        _random_linear_operator_matches_nested,
        fast=5,
        deep=15,
        data=st.data(),
        D=st.integers(1, 4),
        max_order=st.integers(1, 4),
    )
)


def test_order_four_mixed_partials_in_ten_coordinates():
    names = [f"x{i}" for i in range(10)]
    spec = {
        "a": "u_x0x1x2x3 - 2*u_x4x4x9x9 + u_x5x5x5",
        "b": "u_x7x8 + 3*u_x9 + u",
        "c": "laplacian",
    }
    model = mlp(10, [8], "tanh")
    compare(model, spec, torch.randn(2, 10, dtype=torch.float64), coords=names)


def test_coordinate_dependent_coefficients():
    model = mlp(3, [8, 8], "tanh", out=2)
    x = torch.randn(4, 3, dtype=torch.float64)
    spec = {
        "sympy_coefficients": "sin(x)*u_xx + (1 + y**2)*u_yz - z*u",
        "fokker_planck": WeightedLaplacian(
            lambda p: torch.eye(3, dtype=p.dtype) * (1 + p[:, :1, None] ** 2)
        ),
        "advection": Advection(
            lambda p: torch.stack([p[:, 1], -p[:, 0], torch.ones_like(p[:, 0])], 1)
        ),
    }
    compare(model, spec, x, coords="x y z")


def test_named_pde_operators_against_nested():
    model = mlp(3, [8], "sin")
    x = torch.randn(4, 3, dtype=torch.float64)
    for spec in (
        "heat",
        "wave",
        Helmholtz(k=3.0),
        Laplacian(dims=["x", "y"]),
        Biharmonic(dims=["x", "y"]),
    ):
        ref = taylorc.compile(model, spec, coords="x y t", method="nested")(x)
        assert_close(taylorc.compile(model, spec, coords="x y t")(x), ref, 1e-8)


def test_dict_is_one_propagation():
    model = mlp(2, [8], "tanh")
    op = taylorc.compile(
        model, {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}, coords="x t"
    )
    op(torch.randn(5, 2, dtype=torch.float64))
    assert [r["pass"] for r in op._last.records].count("taylor") == 1
    assert op.plan.R == 2 and op.plan.K == 2 and op.plan.collapsible
    assert op.plan.directions[0] == (1, 0)  # the top-order direction first


@given(D=st.integers(1, 6), orders=st.sets(st.integers(1, 4), min_size=1))
def test_directions_never_exceed_the_derivative_tensor(D, orders):
    names = [f"c{i}" for i in range(D)]
    terms = []
    for k in orders:
        terms += ["u_" + "".join(names[(i * 7 + j) % D] for j in range(k)) for i in range(3)]
    plan = build_plan({"out": parse(" + ".join(terms), names)}, D, names)
    full = sum(math.comb(D + k - 1, k) for k in orders)
    assert plan.R <= full


def test_bad_specs_name_the_offending_term():
    model = mlp(2, [4])
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown coordinate in u_xz"):
        taylorc.compile(model, "u_xz", coords="x y")
    with pytest.raises(ValueError, match=r"coords names 3 coordinates .* input has 2"):
        taylorc.compile(model, "u_xx", coords="x y t")(x)
    with pytest.raises(ValueError, match=r"term u\*u_x of .* is not linear in u"):
        taylorc.compile(model, "u*u_x + u_yy", coords="x y")
    with pytest.raises(ValueError, match=r"not linear"):
        taylorc.compile(model, "sin(u_x)", coords="x y")
    with pytest.raises(ValueError, match=r"order 7 of term u_xxxxxxx is above the maximum 6"):
        taylorc.compile(model, "u_xxxxxxx", coords="x y")(x)
    with pytest.raises(ValueError, match=r"does not contain u"):
        taylorc.compile(model, "u_xx + 1", coords="x y")
    with pytest.raises(ValueError, match=r"unknown symbols \['nu'\]"):
        taylorc.compile(model, "nu*u_xx", coords="x y")
    out = taylorc.compile(model, "nu*u_xx", coords="x y", params={"nu": 0.5})(x)
    assert_close(out, 0.5 * taylorc.compile(model, "u_xx", coords="x y")(x), 1e-14)
    with pytest.raises(ValueError, match="give coords"):
        taylorc.compile(model, "u_xx")


def test_plan_is_shown_by_explain(tmp_path):
    op = taylorc.compile(
        nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double(),
        "u_t - 0.01*u_xx + 2*u_xt",
        coords="x t",
        debug_dir=tmp_path,
    )
    op(torch.randn(2, 2, dtype=torch.float64))
    text = op.explain()
    assert "jet plan" in text and "collapsed row" in text and "v0 =" in text
    assert "collapsed row" in (tmp_path / "plan.txt").read_text()


def test_sympy_spec_without_coords_uses_the_arguments_of_u():
    x, y = sympy.symbols("x y")
    u = sympy.Function("u")
    model = mlp(2, [6], "tanh")
    pts = torch.randn(3, 2, dtype=torch.float64)
    spec = sympy.sin(x) * sympy.Derivative(u(x, y), x, 2) + sympy.Derivative(u(x, y), y)
    out = taylorc.compile(model, spec)(pts)
    assert_close(
        out, taylorc.compile(model, "sin(x)*u_xx + u_y", coords="x y", method="nested")(pts), 1e-10
    )
