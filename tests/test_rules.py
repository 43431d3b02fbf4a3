"""Every rule against nested torch.func.jvp in float64, at orders 1..4, on random inputs."""

import math
import warnings

import pytest
import sympy
import torch
from helpers import Directional, assert_close, nested_directional
from op_cases import CASES, NONSMOOTH, REFERENCES, W

import taylorc
from taylorc.rules.jet import faa_di_bruno
from taylorc.rules.table import RULES

aten = torch.ops.aten


@pytest.mark.parametrize("name", sorted(CASES))
# order 4 (which runs every lower order of the rule) in the default tier, orders 1-3 in the slow one
@pytest.mark.parametrize("k", [pytest.param(k, marks=pytest.mark.slow) for k in (1, 2, 3)] + [4])
def test_rule_against_nested_jvp(name, k):
    f = CASES[name]
    x = 0.5 * torch.randn(4, 3, dtype=torch.float64)
    v = (1, -2, 1)
    ref = nested_directional(REFERENCES.get(name, f), x, v, k)
    for method in ("taylor", "collapsed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if name in NONSMOOTH else "error", UserWarning)
            out = taylorc.compile(f, Directional(v, k), method=method)(x)
        assert out.shape == ref.shape
        assert_close(out, ref, 1e-9)


@pytest.mark.parametrize("name", sorted(NONSMOOTH))
def test_nonsmooth_ops_warn_at_order_two(name):
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="not smooth"):
        taylorc.compile(NONSMOOTH[name], Directional((1, 0, 1), 2))(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        taylorc.compile(NONSMOOTH[name], "gradient")(x)


def test_every_elementwise_rule_is_exercised():
    names = {
        op._schema.name.split("::")[1]
        for op, info in RULES.items()
        if info.kind == "elementwise" and info.smooth
    }
    tested = {
        "tanh",
        "sigmoid",
        "exp",
        "sin",
        "cos",
        "log",
        "sqrt",
        "rsqrt",
        "reciprocal",
        "sinh",
        "cosh",
        "atan",
        "erf",
        "log1p",
        "expm1",
        "pow",
        "gelu",
        "tan",
        "asinh",
        "silu",
        "softplus",
        "erfc",
        "erfinv",
        "acosh",
        "atanh",
        "exp2",
        "lgamma",
        "digamma",
        "polygamma",
    }
    assert names <= tested, names - tested


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_faa_di_bruno_coefficients_match_sympy(k):
    t = sympy.Symbol("t")
    g = sympy.Function("g")
    xs = [sympy.Function(f"x{j}") for j in range(1)]
    x = xs[0](t)
    expr = sympy.diff(g(x), t, k)
    # substitute derivatives of x by symbols x_j and derivatives of g by g_m
    xj = sympy.symbols(f"x1:{k + 1}")
    gm = sympy.symbols(f"g1:{k + 1}")
    for j in range(k, 0, -1):
        expr = expr.subs(sympy.Derivative(x, (t, j)), xj[j - 1])
    for m in range(k, 0, -1):

        def is_gm(e, m=m):
            return (
                isinstance(e, sympy.Derivative)
                and e.expr.func == g
                and sum(c for _, c in e.variable_count) == m
            )

        expr = expr.replace(is_gm, lambda e, m=m: gm[m - 1])
    ours = sum(
        c * gm[m - 1] * math.prod(xj[j - 1] ** mult for j, mult in parts)
        for c, m, parts in faa_di_bruno(k)
    )
    assert sympy.expand(expr - ours) == 0


def test_relu_warns_at_order_two_and_is_exact_at_order_one():
    f = lambda x: torch.relu(x @ W)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="not smooth"):
        taylorc.compile(f, "laplacian")(x)
    out = taylorc.compile(f, "gradient")(x)
    ref = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)
    assert_close(out, ref, 1e-12)
