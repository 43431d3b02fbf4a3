"""Periodic boundaries (``Grid(axes, periodic=...)``) against independent oracles (float64):
dense numpy circulants, a manufactured solution, scipy spsolve, the FFT solution of the
constant-coefficient periodic operator, and dense torch.linalg.solve autograd."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from taylorc.operators import Grid, discretize, grid_nodes
from taylorc.operators.discretize import difference_matrix
from taylorc.prdp import Solver, TimeStepper, assemble

F64 = torch.float64
SPEC = "u - 0.1*u_xx - 0.1*u_yy"
# textbook central stencils (offset: weight), LeVeque 2007 ch. 1, times h^-order
STENCILS = {
    0: {0: 1},
    1: {-1: -0.5, 1: 0.5},
    2: {-1: 1, 0: -2, 1: 1},
    3: {-2: -0.5, -1: 1, 1: -1, 2: 0.5},
    4: {-2: 1, -1: -4, 0: 6, 1: -4, 2: 1},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def period(n, length=2 * math.pi):
    """The ``n`` nodes of one period, no duplicate endpoint (spacing ``length / n``)."""
    return torch.linspace(0, length, n + 1, dtype=F64)[:-1]


def circulant(n, order, h):
    """Dense circulant: row i couples node (i + off) mod n (np.roll of the identity)."""
    return sum(w * np.roll(np.eye(n), off, axis=1) for off, w in STENCILS[order].items()) / h**order


def spsolve(system, b):
    A = system.to_scipy().tocsc()
    return torch.tensor(np.stack([sla.spsolve(A, v) for v in b.numpy()]))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_periodic_difference_matrices_are_circulant(order):
    got = difference_matrix(7, order, 0.3, periodic=True).toarray()
    np.testing.assert_allclose(got, circulant(7, order, 0.3), rtol=1e-14, atol=1e-12)


def test_mixed_discretize_equals_kronecker_of_dense_oracles():
    """Periodic in x (circulant), Dirichlet in y (identity rows on the y edges only)."""
    nx, ny = 6, 7
    x, y = period(nx), torch.linspace(0, 1, ny, dtype=F64)
    hx, hy = 2 * math.pi / nx, 1 / (ny - 1)
    A = discretize("u_xx + 2*u_y", Grid([x, y], periodic=(True, False)), coords="x y")
    dy = np.zeros((ny, ny))
    for i in range(1, ny - 1):
        dy[i, i - 1], dy[i, i + 1] = -1 / hy, 1 / hy  # 2 * (u_{i+1} - u_{i-1}) / (2 hy)
    ref = np.kron(circulant(nx, 2, hx), np.eye(ny)) + np.kron(np.eye(nx), dy)
    edge = np.zeros((nx, ny), bool)
    edge[:, [0, -1]] = True
    edge = edge.reshape(-1)
    ref[edge] = np.eye(nx * ny)[edge]
    np.testing.assert_allclose(A.to_dense().numpy(), ref, rtol=1e-14, atol=1e-12)
    plain = discretize("u_xx + 2*u_y", [x, y], coords="x y").to_dense()
    assert not torch.equal(plain, A.to_dense())  # the flag reaches the matrix


def test_periodic_laplacian_second_order_everywhere():
    errors = []
    for n in (16, 32, 64):
        g = Grid([period(n), period(n)], periodic=True)
        nodes = grid_nodes(g)
        u = torch.sin(nodes[:, 0]) * torch.cos(2 * nodes[:, 1])
        errors.append((discretize("laplacian", g) @ u + 5 * u).abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(r > 1.9 for r in rates), (errors, rates)


def fft_solve(b, nx, ny, nu=0.1):
    """``(I - nu D_xx - nu D_yy)^-1 b`` by the 2-d DFT: the circulant's eigenvalues in closed form."""
    hx, hy = 2 * math.pi / nx, 2 * math.pi / ny
    kx = 4 / hx**2 * np.sin(np.pi * np.arange(nx) / nx) ** 2
    ky = 4 / hy**2 * np.sin(np.pi * np.arange(ny) / ny) ** 2
    lam = 1 + nu * (kx[:, None] + ky[None, :])
    B = b.numpy().reshape(-1, nx, ny)
    return torch.tensor(np.fft.ifft2(np.fft.fft2(B) / lam).real.reshape(len(B), -1))


@pytest.mark.parametrize(
    "method, iters, kw",
    [
        ("jacobi", 120, {}),
        ("sor", 60, {}),
        ("cg", 60, {}),
        ("mg", 20, {}),
        ("mg", 20, {"smoother": "jacobi"}),
        ("cg", 15, {"preconditioner": "mg"}),
    ],
)
def test_periodic_solve_matches_spsolve_and_fft(method, iters, kw):
    nx, ny = 16, 12
    g = Grid([period(nx), period(ny)], periodic=True)
    A = assemble(SPEC, g, coords="x y")
    assert A.asymmetry() == 0.0 and A.grid_shape == (nx, ny)  # no Dirichlet rows: symmetric
    b = torch.rand(3, A.n, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = Solver(A, method, **kw)(b, iters=iters)
    assert rel(x, spsolve(A, b)) <= 1e-10
    assert rel(x, fft_solve(b, nx, ny)) <= 1e-10


def test_periodic_time_stepper_is_the_same_operator():
    g = Grid([period(16), period(12)], periodic=True)
    step = TimeStepper("u_t - nu*u_xx - nu*u_yy", g, 0.5, coords="x y", params={"nu": 0.2})
    ref = assemble(SPEC, g, coords="x y").to_dense()
    torch.testing.assert_close(step.system.to_dense(), ref, rtol=1e-14, atol=1e-14)


def test_fully_periodic_interior_form_is_the_full_system():
    g = Grid([period(10), period(12)], periodic=True)
    full, inner = assemble(SPEC, g, coords="x y"), assemble(SPEC, g, coords="x y", form="interior")
    assert inner.grid_shape == (10, 12) and torch.equal(inner.to_dense(), full.to_dense())
    f = torch.rand(2, 120, dtype=F64)
    assert torch.equal(inner.lift(f), f) and torch.equal(inner.lift(f[0]), f[0])
    assert torch.equal(inner.extend(f, f), f)


@pytest.mark.parametrize("method, iters", [("jacobi", 150), ("cg", 80)])
def test_periodic_implicit_gradients_match_dense_solve(method, iters):
    A = assemble(SPEC, Grid([period(10), period(8)], periodic=True), coords="x y")
    A = dataclasses.replace(A, values=A.values.detach().clone().requires_grad_())
    b = torch.rand(2, A.n, dtype=F64, requires_grad=True)
    w = torch.rand(2, A.n, dtype=F64)
    x = Solver(A, method, "implicit")(b, iters=iters)
    gb, gv = torch.autograd.grad((w * x).sum(), (b, A.values))
    values = A.values.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    xd = torch.linalg.solve(dataclasses.replace(A, values=values).to_dense(), b2.T).T
    gb2, gv2 = torch.autograd.grad((w * xd).sum(), (b2, values))
    assert (gb - gb2).abs().max() <= 1e-10 and (gv - gv2).abs().max() <= 1e-10


@pytest.mark.parametrize(
    "method, form, iters, kw",
    [
        ("jacobi", "full", 400, {}),
        ("sor", "full", 200, {}),
        ("mg", "full", 25, {}),
        ("cg", "interior", 150, {}),
        ("cg", "interior", 20, {"preconditioner": "mg"}),
    ],
)
def test_periodic_x_dirichlet_y(method, form, iters, kw):
    g = Grid([period(16), torch.linspace(0, 1, 17, dtype=F64)], periodic=(True, False))
    spec = "(2 + cos(x))*u - 0.05*u_xx - 0.01*u_yy"  # self-adjoint: symmetric interior block
    full = assemble(spec, g, coords="x y")
    A = full if form == "full" else assemble(spec, g, coords="x y", form=form)
    assert A.grid_shape == ((16, 17) if form == "full" else (16, 15))
    f = torch.rand(2, full.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    rhs = f if form == "full" else A.lift(f)
    x = Solver(A, method, **kw)(rhs, iters=iters)
    assert rel(x, spsolve(A, rhs)) <= 1e-10
    u = x if form == "full" else A.extend(x, f)
    assert rel(u, spsolve(full, f)) <= 1e-10
    edge = grid_nodes(g)[:, 1].numpy()
    edge = (edge == 0) | (edge == 1)
    assert torch.equal(u[:, edge], f[:, edge])  # Dirichlet data on the y edges only


@pytest.mark.parametrize("periodic", [True, (True, False)])
def test_periodic_multigrid_reduces_residual_fivefold_per_cycle(periodic):
    """Four levels (64 -> 32 -> 16 -> 8 nodes on a periodic axis): the wrapped transfers."""
    y = period(64) if periodic is True else torch.linspace(0, 2 * math.pi, 65, dtype=F64)
    g = Grid([period(64), y], periodic=periodic)
    A = assemble("0.01*u - u_xx - u_yy", g, coords="x y")
    b = torch.rand(2, A.n, dtype=F64)
    if periodic is not True:  # zero Dirichlet data on the y edges
        b[:, (grid_nodes(g)[:, 1] == 0) | (grid_nodes(g)[:, 1] == y[-1])] = 0
    for smoother in ("sor", "jacobi"):
        solver = Solver(A, "mg", smoother=smoother)
        solver(b, iters=4)
        h = torch.stack(solver.history)
        assert (h[1:] / h[:-1]).max() <= 0.2, (smoother, h[1:] / h[:-1])


def test_periodic_errors():
    x = period(9)
    with pytest.raises(ValueError, match="one bool per axis"):
        Grid([x, x], periodic=(True,))
    odd = assemble(SPEC, Grid([x, period(8)], periodic=True), coords="x y")
    with pytest.raises(ValueError, match="even number of nodes on each periodic axis"):
        Solver(odd, "sor")
    with pytest.raises(ValueError, match="periodic axis"):
        Solver(odd, "mg")
    assert rel(Solver(odd, "jacobi")(torch.ones(72, dtype=F64), iters=80), torch.ones(72)) < 1e-10
