"""taylorc.prdp against independent oracles (float64): scipy spsolve, a plain numpy Jacobi loop,
dense torch.linalg.solve autograd, central finite differences, gradcheck, and a line-by-line
reading of the PRDP refinement rule (Bhatia, Koehler, Thuerey, ICLR 2025)."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from taylorc.operators import discretize, grid_nodes
from taylorc.prdp import Refiner, Solver, TimeStepper, assemble, estimate_k_eps

F64 = torch.float64
HEAT = "u - 0.01*u_xx - 0.01*u_yy"
SYM = "(1 + x)*u - 0.01*u_xx - 0.01*u_yy"  # self-adjoint: symmetric interior block


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Products this small gain nothing from threads; on a loaded 2-core machine two OpenMP
    threads made each sparse product ~400x slower (12 ms instead of 30 us)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grid(n, D=2, dtype=F64):
    return [torch.linspace(0, 1, n, dtype=dtype)] * D


def spsolve(system, b):
    A = system.to_scipy().tocsc()
    return torch.tensor(np.stack([sla.spsolve(A, v) for v in b.numpy()]))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- assembly -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [HEAT, "u_xx + 0.5*u_xy - 2*u_y + x*u", "biharmonic"])
def test_assembly_equals_discretize(spec):
    g = grid(11)
    A = assemble(spec, g, coords="x y")
    ref = discretize(spec, g, coords="x y").to_dense()
    assert torch.equal(A.to_dense(), ref)


def test_named_coefficients_tensor_network_and_float32():
    g = grid(9)
    nodes = grid_nodes(g)
    k = 1 + nodes[:, 0] * nodes[:, 1]
    A = assemble("u - 0.1*k*(u_xx + u_yy)", g, coords="x y", coefficients={"k": k})
    ref = discretize("u - 0.1*(1 + x*y)*(u_xx + u_yy)", g, coords="x y").to_dense()
    torch.testing.assert_close(A.to_dense(), ref, rtol=1e-14, atol=1e-12)
    net = lambda x: 1 + x[:, :1] * x[:, 1:]  # a callable (N, D) -> (N, 1)
    B = assemble("u - 0.1*k*(u_xx + u_yy)", g, coords="x y", coefficients={"k": net})
    torch.testing.assert_close(B.to_dense(), ref, rtol=1e-14, atol=1e-12)
    C = assemble(HEAT, grid(9, dtype=torch.float32), coords="x y", dtype=torch.float32)
    assert C.dtype == torch.float32
    with pytest.raises(ValueError, match="coefficient 'k' has 5 values"):
        assemble("u - k*u_xx", g, coords="x y", coefficients={"k": torch.ones(5)})
    with pytest.raises(ValueError, match="coefficient name"):
        assemble("u_k + u", g, coords="x y", coefficients={"k": 1.0})


def test_interior_block_is_symmetric_and_lifts_boundary_data():
    g = grid(9)
    full, inner = assemble(SYM, g, coords="x y"), assemble(SYM, g, coords="x y", form="interior")
    assert full.asymmetry() > 0.5 and inner.asymmetry() == 0.0 and inner.grid_shape == (7, 7)
    f = torch.rand(2, 81, dtype=F64)
    x = inner.extend(spsolve(inner, inner.lift(f)), f)
    torch.testing.assert_close(x, spsolve(full, f), rtol=1e-12, atol=1e-12)


# -- solvers at convergence -----------------------------------------------------------------


@pytest.mark.parametrize(
    "method, form, iters, kw",
    [
        ("jacobi", "full", 1500, {}),
        ("sor", "full", 400, {}),
        ("sor", "full", 300, {"omega": 1.5}),
        ("mg", "full", 30, {}),
        ("mg", "interior", 30, {"smoother": "jacobi"}),
        ("cg", "interior", 200, {}),
        ("cg", "interior", 25, {"preconditioner": "mg"}),
        ("cg", "interior", 25, {"preconditioner": "mg", "smoother": "jacobi"}),
    ],
)
def test_solvers_converge_to_spsolve(method, form, iters, kw):
    A = assemble(SYM, grid(17), coords="x y", form=form)
    b = torch.rand(3, A.n, dtype=F64)
    solver = Solver(A, method, **kw)
    x = solver(b, iters=iters)
    assert rel(x, spsolve(A, b)) <= 1e-10
    assert solver.residual.shape == (3,) and solver.residual.max() < 1e-10


def test_multigrid_3d_and_1d_converge():
    for D, n, spec, coords in [
        (3, 9, "u - 0.01*(u_xx + u_yy + u_zz)", "x y z"),
        (1, 33, "u - 0.01*u_xx", "x"),
    ]:
        A = assemble(spec, grid(n, D), coords=coords)
        b = torch.rand(2, A.n, dtype=F64)
        assert rel(Solver(A, "mg")(b, iters=30), spsolve(A, b)) <= 1e-10


def test_jacobi_iterates_match_numpy_loop():
    A = assemble("u - 0.02*u_xx - 0.02*u_yy + 0.3*u_x", grid(12), coords="x y")
    dense = A.to_dense().numpy()
    b = torch.rand(2, A.n, dtype=F64)
    for K in (1, 5, 50):
        x = np.zeros((2, A.n))
        d = np.diag(dense)
        for _ in range(
            K
        ):  # the textbook loop, row by row: x_i <- (b_i - sum_{j != i} a_ij x_j) / a_ii
            x = (b.numpy() - x @ (dense - np.diag(d)).T) / d
        got = Solver(A, "jacobi")(b, iters=K)
        np.testing.assert_allclose(got.numpy(), x, rtol=1e-13, atol=1e-13)


def test_multigrid_v22_reduces_poisson_residual_fivefold_per_cycle():
    A = assemble("-u_xx - u_yy", grid(65), coords="x y")
    nodes = grid_nodes(grid(65))
    inner = ((nodes > 0) & (nodes < 1)).all(1)
    b = torch.rand(2, A.n, dtype=F64) * inner  # zero Dirichlet data
    for smoother in ("sor", "jacobi"):
        solver = Solver(A, "mg", smoother=smoother, pre=2, post=2)
        solver(b, iters=6)
        h = torch.stack(solver.history)
        assert (h[1:] / h[:-1]).max() <= 0.2, (smoother, h[1:] / h[:-1])


def test_never_raises_on_non_convergence():
    A = assemble("u + 3*u_x - 0.001*u_xx", grid(20, 1), coords="x")  # not diagonally dominant
    solver = Solver(A, "jacobi")
    x = solver(torch.rand(A.n, dtype=F64), iters=30)
    assert x.shape == (20,) and solver.residual.item() > 1e-3


# -- gradients ------------------------------------------------------------------------------


def _leaf_system(spec, n, form="full"):
    A = assemble(spec, grid(n), coords="x y", form=form)
    return dataclasses.replace(A, values=A.values.detach().clone().requires_grad_())


@pytest.mark.parametrize(
    "method, form, iters, kw",
    [("jacobi", "full", 800, {}), ("mg", "full", 30, {}), ("cg", "interior", 80, {})],
)
def test_implicit_gradients_match_dense_solve(method, form, iters, kw):
    A = _leaf_system("u - 0.01*u_xx - 0.01*u_yy + 0.2*u_x" if form == "full" else SYM, 9, form)
    b = torch.rand(3, A.n, dtype=F64, requires_grad=True)
    w = torch.rand(3, A.n, dtype=F64)
    x = Solver(A, method, "implicit", **kw)(b, iters=iters)
    gb, gv = torch.autograd.grad((w * x).sum(), (b, A.values))
    values = A.values.detach().clone().requires_grad_()
    dense = dataclasses.replace(A, values=values).to_dense()
    b2 = b.detach().clone().requires_grad_()
    xd = torch.linalg.solve(dense, b2.T).T
    gb2, gv2 = torch.autograd.grad((w * xd).sum(), (b2, values))
    assert (gb - gb2).abs().max() <= 1e-10 and (gv - gv2).abs().max() <= 1e-10


def test_unrolled_equals_implicit_for_jacobi():
    A = assemble("u - 0.02*u_xx - 0.02*u_yy + 0.3*u_y", grid(10), coords="x y")
    w = torch.rand(2, A.n, dtype=F64)
    grads = []
    for mode in ("unrolled", "implicit"):
        b = torch.rand(2, A.n, dtype=F64, generator=torch.Generator().manual_seed(1))
        b.requires_grad_()
        (w * Solver(A, "jacobi", mode)(b, iters=7)).sum().backward()
        grads.append(b.grad)
    assert (grads[0] - grads[1]).abs().max() <= 1e-12


def test_coefficient_network_chain_rule_matches_finite_differences():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    net = net.double()
    kappa = lambda x: torch.nn.functional.softplus(net(x)) + 0.1
    b = torch.rand(2, 81, dtype=F64)
    w = torch.rand(2, 81, dtype=F64)

    def loss():
        A = assemble("u - 0.05*k*(u_xx + u_yy)", grid(9), coords="x y", coefficients={"k": kappa})
        return (w * Solver(A, "jacobi", "implicit")(b, iters=600)).sum()

    p = net[0].weight
    (g,) = torch.autograd.grad(loss(), p)
    eps = 1e-6
    for idx in [(0, 0), (3, 1), (5, 0)]:
        with torch.no_grad():
            p[idx] += eps
            up = loss().item()
            p[idx] -= 2 * eps
            down = loss().item()
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        assert abs(g[idx].item() - fd) <= 1e-6 * max(1.0, abs(fd)), (idx, g[idx].item(), fd)


@pytest.mark.parametrize("D", [1, 2])
def test_gradcheck_unrolled_cg_and_multigrid(D):
    """1-d: w.r.t. the right-hand side and a coefficient per node; 2-d: w.r.t. a scalar one."""
    g, coords = grid(9, D), "x y"[: 2 * D - 1]
    nodes = grid_nodes(g)
    k = (1 + nodes[:, 0]) if D == 1 else torch.tensor(1.3, dtype=F64)
    k.requires_grad_()
    b = torch.rand(1, 9**D, dtype=F64, requires_grad=D == 1)
    lap = " + ".join(f"u_{c}{c}" for c in coords.split())

    def mg(b, k):
        A = assemble(f"u - 0.05*k*({lap})", g, coords=coords, coefficients={"k": k})
        return Solver(A, "mg", pre=1, post=1)(b, iters=2)

    def cg(b, k):
        spec = f"k*u - 0.05*({lap})"
        A = assemble(spec, g, coords=coords, coefficients={"k": k}, form="interior")
        return Solver(A, "cg")(A.lift(b), iters=3)

    assert torch.autograd.gradcheck(mg, (b, k))
    assert torch.autograd.gradcheck(cg, (b, k))


# -- errors -----------------------------------------------------------------------------------


def test_clear_errors():
    A = assemble(HEAT, grid(9), coords="x y")
    with pytest.raises(ValueError, match="symmetric"):
        Solver(A, "cg")
    with pytest.raises(ValueError, match="negative definite"):
        Solver(assemble("u_xx + u_yy", grid(9), coords="x y", form="interior"), "cg")
    with pytest.raises(ValueError, match="2\\^k \\+ 1"):
        Solver(assemble(HEAT, grid(10), coords="x y"), "mg")
    with pytest.raises(ValueError, match="one colour"):
        Solver(assemble("u - 0.01*u_xy - 0.1*u_xx", grid(9), coords="x y"), "sor")
    with pytest.raises(ValueError, match="float32"):
        Solver(A, "jacobi")(torch.rand(81), iters=3)
    with pytest.raises(ValueError, match="expected \\(81,\\)"):
        Solver(A, "jacobi")(torch.rand(80, dtype=F64), iters=3)
    with pytest.raises(ValueError, match="method"):
        Solver(A, "gmres")


# -- time steppers ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["euler", "cn"])
def test_time_stepper_matches_scipy_step(scheme):
    g, dt, nu = grid(17), 0.01, 0.05
    st = TimeStepper(
        "u_t - nu*u_xx - nu*u_yy", g, dt, coords="x y", scheme=scheme, params={"nu": nu}
    )
    L = discretize("u_xx + u_yy", g, coords="x y").to_dense().numpy()
    u = torch.rand(2, 289, dtype=F64)
    theta = 1.0 if scheme == "euler" else 0.5
    inner = ~np.all(np.abs(L) == np.eye(289), 1)  # Dirichlet rows of L are identity rows
    S = -nu * L * inner[:, None]
    lhs = np.eye(289) + theta * dt * S
    rhs = (np.eye(289) - (1 - theta) * dt * S) @ u.numpy().T
    ref = np.linalg.solve(lhs, rhs).T
    got = st.step(u, Solver(st.system, "mg"), iters=30)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    inner_st = TimeStepper(
        "u_t - nu*u_xx - nu*u_yy",
        g,
        dt,
        coords="x y",
        scheme=scheme,
        params={"nu": nu},
        form="interior",
    )
    got_i = inner_st.step(u, Solver(inner_st.system, "cg"), iters=100)
    np.testing.assert_allclose(got_i.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_time_stepper_errors():
    with pytest.raises(ValueError, match="u_t"):
        TimeStepper("u - u_xx", grid(9), 0.1, coords="x y")
    with pytest.raises(ValueError, match="dt"):
        TimeStepper("u_t - u_xx", grid(9), 0.0, coords="x y")


# -- the refinement controller ----------------------------------------------------------------


def reference_rule(history, k, dk, c, tau_step=0.95, tau_stop=0.9, w=6, delta=3):
    """The rule written out for one epoch, independently of Refiner: returns (K, c)."""
    if len(history) <= delta:
        return k, c
    a = 2 / (w + 1)
    m = [history[0]]
    for e in history[1:]:
        m.append(a * e + (1 - a) * m[-1])
    if m[-1] / m[-delta] > tau_step:
        r = m[-1] / c
        if r < tau_stop or r > 1:
            return k + dk, m[-1]
    return k, c


def run(metrics, **kw):
    ref = Refiner(k0=5, dk=2, tau_step=0.95, **kw)
    ks, k, c = [], 5, math.inf
    for t in range(len(metrics)):
        got = ref.step(metrics[t])
        k, c = reference_rule(metrics[: t + 1], k, 2, c)
        assert got == k
        ks.append(got)
    return ks, ref


def test_refiner_flat_history_refines_once_then_holds():
    ks, ref = run([0.5] * 15)
    assert ks[:3] == [5, 5, 5] and ks[3] == 7 and set(ks[4:]) == {7}
    assert ref.refinements == [3]


def test_refiner_steady_decline_never_refines():
    ks, _ = run([0.05**0 * 0.95**t for t in range(30)])  # 5% per epoch: m[-1]/m[-3] ~ 0.9025
    assert set(ks) == {5}


def test_refiner_small_gain_holds_and_rise_refines():
    metrics = [0.5] * 6 + [0.48] * 10  # plateau, then < 10% below the checkpoint: hold
    ks, _ = run(metrics)
    assert ks[-1] == 7
    ks, ref = run([0.5] * 6 + [0.6] * 10)  # the metric rises above the checkpoint: refine
    assert ks[-1] > 7
    ks, _ = run([0.5] * 6 + [0.3] * 15)  # > 10% gain and a new plateau: refine again
    assert ks[-1] == 9


def test_refiner_state_dict_roundtrip_and_defaults():
    ref = Refiner()
    for e in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9]:
        ref.step(e)
    clone = Refiner()
    clone.load_state_dict(ref.state_dict())
    assert [clone.step(0.9) for _ in range(5)] == [ref.step(0.9) for _ in range(5)]
    assert clone.history == ref.history and (ref.k0, ref.dk) == (1, 1)
    paper = Refiner.paper()
    assert (paper.k0, paper.dk, paper.tau_step, paper.ema_window, paper.window) == (
        1,
        1,
        0.98,
        6,
        3,
    )
    scaled = Refiner.scaled(200)
    assert (scaled.k0, scaled.dk, scaled.ema_window, scaled.window) == (40, 20, 3, 2)
    with pytest.raises(ValueError, match="positive finite"):
        ref.step(float("nan"))


def test_estimate_k_eps_is_close_to_the_measured_count():
    A = assemble("u - 1e-3*u_xx - 1e-3*u_yy", grid(32), coords="x y")
    solver = Solver(A, "jacobi")
    k_eps = estimate_k_eps(solver, tol=1e-6)
    b = torch.rand(4, A.n, dtype=F64) + 1
    solver(b, iters=3 * k_eps)
    measured = next(i for i, h in enumerate(solver.history) if h.max() <= 1e-6)
    assert 0.7 * measured <= k_eps <= 1.5 * measured, (k_eps, measured)
