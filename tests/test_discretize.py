"""Finite-difference discretization: second-order convergence on manufactured solutions, Dirichlet rows."""

import math

import pytest
import sympy
import torch

from taylorc.operators import discretize, grid_nodes

X, Y = sympy.symbols("x y")
U = sympy.sin(math.pi * X) * sympy.exp(Y) + X**2 * sympy.cos(2 * Y)


def _apply(expr_op, spec, n, coords="x y", **kw):
    grid = [torch.linspace(0, 1, n, dtype=torch.float64)] * 2
    A = discretize(spec, grid, coords=coords, **kw)
    nodes = grid_nodes(grid)
    u = sympy.lambdify([X, Y], U, "numpy")(nodes[:, 0].numpy(), nodes[:, 1].numpy())
    Lu = sympy.lambdify([X, Y], expr_op, "numpy")(nodes[:, 0].numpy(), nodes[:, 1].numpy())
    out = A @ torch.as_tensor(u)
    interior = torch.as_tensor(((nodes > 0.2) & (nodes < 0.8)).all(1).numpy())
    return A, u, out, torch.as_tensor(Lu), interior


@pytest.mark.parametrize(
    "spec, exact",
    [
        ("laplacian", sympy.diff(U, X, 2) + sympy.diff(U, Y, 2)),
        (
            "u_xx + 0.5*u_xy - 2*u_y + x*u",
            sympy.diff(U, X, 2) + sympy.diff(U, X, Y) / 2 - 2 * sympy.diff(U, Y) + X * U,
        ),
        ("biharmonic", sympy.diff(U, X, 4) + 2 * sympy.diff(U, X, 2, Y, 2) + sympy.diff(U, Y, 4)),
        ("u_xxy + sin(y)*u_x", sympy.diff(U, X, 2, Y) + sympy.sin(Y) * sympy.diff(U, X)),
    ],
)
def test_second_order_convergence(spec, exact):
    errors = []
    for n in (21, 41, 81):
        _, _, out, Lu, interior = _apply(exact, spec, n)
        errors.append((out - Lu)[interior].abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(r > 1.8 for r in rates), (errors, rates)


def test_dirichlet_rows_and_format():
    A, u, out, _, _ = _apply(U, "biharmonic", 11)
    assert A.layout == torch.sparse_csr and A.shape == (121, 121) and A.dtype == torch.float64
    nodes = grid_nodes([torch.linspace(0, 1, 11, dtype=torch.float64)] * 2)
    h = 0.1
    near = ((nodes < 2 * h - 1e-9) | (nodes > 1 - 2 * h + 1e-9)).any(
        1
    )  # biharmonic: two boundary layers
    torch.testing.assert_close(out[near], torch.as_tensor(u)[near])
    A2 = discretize("laplacian", [torch.linspace(0, 1, 11, dtype=torch.float64)] * 2)
    dense = A2.to_dense()
    edge = ((nodes < h / 2) | (nodes > 1 - h / 2)).any(1)
    assert torch.equal(dense[edge][:, edge], torch.eye(int(edge.sum()), dtype=torch.float64))


def test_discretize_errors():
    g = torch.linspace(0, 1, 9)
    with pytest.raises(ValueError, match="uniform"):
        discretize("laplacian", [torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0, 1.5]), g])
    with pytest.raises(ValueError, match="coords names 3"):
        discretize("u_xx", [g, g], coords="x y t")
    with pytest.raises(ValueError, match="gradient"):
        discretize("gradient", [g, g])
