"""The randomized Nyström solve of the sample-space system (taylorc/optim/nystrom.py),
against the exact Woodbury step (itself checked against dense linear algebra on the
autograd Jacobian in tests/test_woodbury.py), float64, small tanh MLPs with the collapsed
Laplacian's residual."""

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import mlp

import taylorc
from taylorc.optim import ENGD, SPRING
from taylorc.optim.linearization import linearize
from taylorc.optim.nystrom import (
    NystromSolver,
    kernel_sketch,
    nystrom_approximation,
    nystrom_solve,
    sketch_matrix,
)
from taylorc.optim.woodbury import (
    kernel,
    sample_space_step,
    scaled_residual,
    transpose_product,
)

DT = torch.float64
LAM = 1e-3


def problem(widths, n_interior, n_boundary, seed=0):
    """A 3 -> widths -> 1 tanh net, Poisson-type residual terms and points."""
    torch.manual_seed(seed)
    model = mlp(3, widths)
    gen = torch.Generator().manual_seed(seed + 1)
    points = {
        "interior": torch.rand(n_interior, 3, dtype=DT, generator=gen),
        "boundary": torch.rand(n_boundary, 3, dtype=DT, generator=gen),
    }
    return model, terms_of(model), points


def terms_of(model):
    lap = taylorc.compile(model, operator="laplacian")
    return {
        "interior": lambda x: -lap(x) - x[:, :1] * x[:, 1:2],
        "boundary": lambda x: model(x) - torch.sin(x[:, :1]),
    }


def lins_of(model, terms, points):
    return [linearize(model, f, points[t]) for t, f in terms.items()]


def flat(blocks):
    return torch.cat([blocks[name].flatten() for name in sorted(blocks)])


def nystrom_step(lins, sketch_size, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    return sample_space_step(lins, LAM, solver=NystromSolver(sketch_size, gen), **kw)


def test_sketch_is_the_kernel_times_omega():
    model, terms, points = problem([5, 4], 6, 4)
    lins = lins_of(model, terms, points)
    K = kernel(lins).double()
    omega = sketch_matrix(len(K), 7, torch.Generator().manual_seed(3))
    assert omega.shape == (10, 7)
    torch.testing.assert_close(omega.T @ omega, torch.eye(7, dtype=DT), rtol=0, atol=1e-14)
    Y, core = kernel_sketch(lins, omega)
    scale = K.abs().max().item()
    torch.testing.assert_close(Y, K @ omega, rtol=1e-12, atol=1e-13 * scale)
    torch.testing.assert_close(core, omega.T @ K @ omega, rtol=1e-12, atol=1e-13 * scale)


def test_nystrom_approximation_of_a_rank_3_matrix():
    """ℓ = 8 > rank 3 (20 x 20): K̂ = A to rounding, U orthonormal, and the 5 extra
    eigenvalues are the shift ν removed again (below 2e-16 λ_max; left in, they would be
    ν ≈ 1.5e-14 to 2.7e-14 here, 1e-15 λ_max)."""
    gen = torch.Generator().manual_seed(0)
    for seed in range(3):
        F = torch.randn(20, 3, dtype=DT, generator=gen)
        A = F @ F.T
        omega = sketch_matrix(20, 8, torch.Generator().manual_seed(seed))
        U, lam = nystrom_approximation(A @ omega, omega)
        assert U.shape == (20, 8) and lam.shape == (8,) and (lam >= 0).all()
        torch.testing.assert_close(U.T @ U, torch.eye(8, dtype=DT), rtol=0, atol=1e-13)
        torch.testing.assert_close(U @ torch.diag(lam) @ U.T, A, rtol=0, atol=1e-13 * lam[0])
        assert lam[3:].max() < 2e-16 * lam[0], lam


def test_full_sketch_equals_the_exact_woodbury_step():
    """ℓ = R (P = 49 > R = 10: K has full rank) gives the exact step, with momentum too;
    ℓ > R is clamped to R: the same draws, the same step bit for bit."""
    model, terms, points = problem([5, 4], 6, 4)
    lins = lins_of(model, terms, points)
    R = sum(lin.r.numel() for lin in lins)
    exact = flat(sample_space_step(lins, LAM))
    got = flat(nystrom_step(lins, R))
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12 * exact.abs().max().item())
    assert torch.equal(flat(nystrom_step(lins, 10 * R)), got)
    prev = {n: 0.1 * torch.randn(L.d_out, L.d_in, dtype=DT) for n, L in lins[0].layers.items()}
    exact = flat(sample_space_step(lins, LAM, 0.7, prev))
    got = flat(nystrom_step(lins, R, momentum=0.7, previous=prev))
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12 * exact.abs().max().item())


def test_low_rank_kernel_is_exact_from_its_rank_on():
    """3 -> 2 -> 1 (P = 11) on R = 30 rows: rank K <= 11 < R; ℓ = rank K gives the exact
        step (max error 6e-12 of the largest entry for this draw; an unlucky draw at ℓ = rank K
    gave 4e-9, oversampling by 2 or more 1e-11 in 3 draws each), ℓ = rank K - 3 does not."""
    model, terms, points = problem([2], 20, 10)
    lins = lins_of(model, terms, points)
    K = kernel(lins).double()
    rank = int(torch.linalg.matrix_rank(K))
    assert rank <= 11 < len(K)
    exact = flat(sample_space_step(lins, LAM))
    scale = exact.abs().max().item()
    for ell in (rank, rank + 3):
        assert (flat(nystrom_step(lins, ell)) - exact).abs().max() < 1e-10 * scale, ell
    assert (flat(nystrom_step(lins, rank - 3)) - exact).abs().max() > 1e-4 * scale


def test_error_decreases_with_the_sketch_and_the_step_descends():
    """Nested sketches (the first ℓ columns of one orthonormal Ω, fixed generator) on a
    rank-60 kernel: ||K − K̂|| and the energy error bᵀ((K̂ + λI)⁻¹ − (K + λI)⁻¹)b shrink
    as ℓ grows (both monotone in theory), the step's error too (for this draw), and
    every approximate step descends: ⟨φ̂, ∇L⟩ > 0 (for this draw: not a theorem; the
    draw of seed 1 at ℓ = 4 gives cos(φ̂, ∇L) = −0.10, at ℓ >= 8 all of seeds 0-3
    descend)."""
    model, terms, points = problem([8, 8], 40, 20)
    lins = lins_of(model, terms, points)
    K = kernel(lins).double()
    b = scaled_residual(lins).double()
    assert int(torch.linalg.matrix_rank(K)) == len(K) == 60  # numerically: λ_min 7e-13
    v_exact = torch.linalg.solve(K + LAM * torch.eye(60, dtype=DT), b)
    phi_exact = flat(transpose_product(lins, v_exact))
    grad = flat(transpose_product(lins, b))
    omega = sketch_matrix(60, 32, torch.Generator().manual_seed(0))
    k_err, energy, step_err = [], [], []
    for ell in (4, 8, 16, 32):
        Y, core = kernel_sketch(lins, omega[:, :ell])
        U, lam = nystrom_approximation(Y, omega[:, :ell], core)
        v = nystrom_solve(U, lam, b, LAM)
        phi = flat(transpose_product(lins, v))
        k_err.append(torch.linalg.matrix_norm(K - U @ torch.diag(lam) @ U.T, 2).item())
        energy.append((b @ (v - v_exact)).item())
        step_err.append(((phi - phi_exact).norm() / phi_exact.norm()).item())
        assert phi @ grad > 0, ell
    assert all(a > b for a, b in zip(k_err, k_err[1:])), k_err
    assert all(a > b > 0 for a, b in zip(energy, energy[1:])), energy
    assert all(a > b for a, b in zip(step_err, step_err[1:])), step_err
    assert step_err[-1] > 1e-6, step_err  # still an approximation at ℓ = 32 < 60


def test_optimisers_with_a_full_sketch_take_the_exact_steps():
    steps = {}
    for name, make in {
        "engd": lambda m, t: ENGD(m, t, lr=0.5, damping=LAM, solve="woodbury"),
        "engd_nystrom": lambda m, t: ENGD(
            m, t, lr=0.5, damping=LAM, solve="nystrom", sketch_size=99
        ),
        "spring": lambda m, t: SPRING(m, t, lr=0.5, damping=LAM, momentum=0.5),
        "spring_nystrom": lambda m, t: SPRING(
            m, t, lr=0.5, damping=LAM, momentum=0.5, solve="nystrom", sketch_size=10
        ),
    }.items():
        model, terms, points = problem([5, 4], 6, 4)
        opt = make(model, terms)
        for _ in range(2):
            opt.step(points)
        steps[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for name in ("engd", "spring"):
        torch.testing.assert_close(steps[f"{name}_nystrom"], steps[name], rtol=1e-10, atol=1e-12)
    assert (steps["engd"] - steps["spring"]).abs().max() > 1e-6  # the momentum did something


def test_state_dict_resumes_the_sketches():
    """ℓ = 4 < R = 10: each step's sketch matters. A SPRING restored from the state_dict
    (its own generator seeded otherwise) takes the same next step; without the saved
    generator state, not. (λ = 1e-2, lr 0.2: with λ = 1e-3 and lr 0.5 the sketched steps
    overshoot, K̂ ⪯ K making (K̂ + λI)⁻¹ ⪰ (K + λI)⁻¹.)"""
    model, terms, points = problem([5, 4], 6, 4)
    kw = dict(lr=0.2, damping=1e-2, momentum=0.5, solve="nystrom", sketch_size=4)
    opt = SPRING(model, terms, **kw)
    for _ in range(2):
        opt.step(points)
    twins = []
    for load in (True, False):
        twin = copy.deepcopy(model)
        other = SPRING(twin, terms_of(twin), generator=torch.Generator().manual_seed(123), **kw)
        other.load_state_dict(opt.state_dict())
        if not load:
            other.state[other.param_groups[0]["params"][0]].pop("sketch_rng")
        other.step(points)
        twins.append(torch.cat([p.detach().flatten() for p in twin.parameters()]))
    opt.step(points)
    mine = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(twins[0], mine)
    assert (twins[1] - mine).abs().max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solve="nystrom", damping=LAM), "needs a sketch_size"),
        (dict(solve="nystrom", damping=LAM, sketch_size=0), "positive integer"),
        (dict(solve="nystrom", damping=LAM, sketch_size=-3), "positive integer"),
        (dict(solve="nystrom", damping=LAM, sketch_size=2.5), "positive integer"),
        (dict(solve="nystrom", damping=LAM, sketch_size=True), "positive integer"),
        (dict(solve="nystrom", damping=0.0, sketch_size=4), "damping > 0"),
        (dict(solve="woodbury", damping=LAM, sketch_size=4), "options of solve='nystrom'"),
        (dict(solve="nystrom", damping=LAM, sketch_size=4, ema=0.3), "ema must be 0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    model, terms, _ = problem([2], 4, 2)
    with pytest.raises(ValueError, match=match):
        ENGD(model, terms, **kwargs)
    spring_kwargs = {k: v for k, v in kwargs.items() if k != "ema"}
    if "ema" not in kwargs:
        with pytest.raises(ValueError, match=match):
            SPRING(model, terms, **spring_kwargs)


def test_bad_calls_raise():
    model, terms, points = problem([2], 4, 2)
    lins = lins_of(model, terms, points)
    with pytest.raises(ValueError, match="solve must be"):
        SPRING(model, terms, solve="dense")
    with pytest.raises(ValueError, match="damping λ > 0"):
        sample_space_step(lins, 0.0, solver=NystromSolver(3))
    with pytest.raises(ValueError, match="rows"):
        kernel_sketch(lins, torch.zeros(5, 2, dtype=DT))
    U = torch.linalg.qr(torch.randn(6, 2, dtype=DT))[0]
    with pytest.raises(ValueError, match="damping λ > 0"):
        nystrom_solve(U, torch.ones(2, dtype=DT), torch.ones(6, dtype=DT), 0.0)


class _Pair:
    """Two ranks as two threads: ``exchange`` is an all-gather of Python values."""

    def __init__(self):
        self.barrier, self.slots = threading.Barrier(2, timeout=60), [None, None]

    def exchange(self, rank, value):
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class _ThreadRank:
    """:class:`~taylorc.optim.distributed.Reducer`'s collectives between two threads."""

    world, device = 2, torch.device("cpu")

    def __init__(self, pair, rank):
        self.pair, self.rank = pair, rank

    def gather(self, flat, lengths):
        return self.pair.exchange(self.rank, flat.clone())

    @torch.no_grad()
    def sum_(self, tensors):
        both = self.pair.exchange(self.rank, [t.clone() for t in tensors])
        for t, a, b in zip(tensors, *both):
            t.copy_(a + b)

    @torch.no_grad()
    def broadcast_(self, tensors):
        tensors = list(tensors)
        both = self.pair.exchange(self.rank, [t.clone() for t in tensors])
        for t, a in zip(tensors, both[0]):
            t.copy_(a)


def test_two_uneven_shards_take_the_one_process_step():
    """What torch.distributed runs (rank 0's Ω broadcast, the Ĵ_lᵀ Ω all-reduced, each
    rank's rows of Y gathered), on two threads with uneven shards and different
    generators: both ranks equal the one-process step on the union (ℓ = 6 < R = 14,
    a boundary term with M = 2 outputs, momentum)."""
    model, terms, points = problem([5, 4], 8, 3)
    u = terms["boundary"]
    terms["boundary"] = lambda x: torch.cat([u(x), 2 * model(x)], 1)
    cut = {"interior": 5, "boundary": 1}
    shards = [
        {t: x[: cut[t]] for t, x in points.items()},
        {t: x[cut[t] :] for t, x in points.items()},
    ]
    union = lins_of(model, terms, points)
    local = [lins_of(model, terms, s) for s in shards]
    prev = {n: 0.1 * torch.randn(L.d_out, L.d_in, dtype=DT) for n, L in union[0].layers.items()}
    want = flat(nystrom_step(union, 6, momentum=0.5, previous=prev))
    pair = _Pair()

    def rank_step(r):
        solver = NystromSolver(6, torch.Generator().manual_seed(0 if r == 0 else 99))
        return sample_space_step(local[r], LAM, 0.5, prev, _ThreadRank(pair, r), solver)

    with ThreadPoolExecutor(2) as pool:
        got = [flat(f.result()) for f in [pool.submit(rank_step, r) for r in (0, 1)]]
    assert torch.equal(got[0], got[1])
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-12 * want.abs().max().item())
