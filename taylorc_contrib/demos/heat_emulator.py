"""A neural-hybrid heat emulator trained through an iterative solve: the PRDP experiment.

The reference dynamics are backward-Euler heat steps with an unknown forcing,
``(I - nu dt Delta) u^{n+1} = u^n + s(u^n)``, ``s(u) = 0.1 (u - u^3) - 0.02 h D_x u``
(reaction and advection), zero Dirichlet data, on ``[0, 1]^D`` with ``n`` nodes per
axis; trajectories come from exact sparse LU solves (scipy; 3-d: 40 V-cycles, residual < 1e-11). The hybrid model is
``u^{n+1} = Solve_K(A, u^n + net(u^n))`` with ``A = assemble("u - nu_dt*(u_xx + ...)")``
(a small conv net learns the forcing; the solver is taylorc.prdp's, K iterations from
a zero initial guess). Training minimises the 2-step rollout nMSE; validation is the
2-step rollout nMSE with the converged solver (K_eps). This mirrors the PRDP paper's
heat emulators (Bhatia, Koehler, Thuerey, ICLR 2025, Sec. 4; 2-step validation nMSE,
backward Euler, nu dt = 1e-3) with a conv net instead of an MLP.

A schedule is ``"prdp"`` (a :class:`taylorc.prdp.Refiner` with defaults scaled from
the estimated K_eps) or a fixed K.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg as sla
import torch
from torch import nn

from taylorc.prdp import Refiner, Solver, assemble, estimate_k_eps


@dataclass
class Config:
    """Problem and training sizes; defaults: the 2-d acceptance run (64^2, Jacobi)."""

    dim: int = 2
    n: int = 64
    nu_dt: float = 1e-3
    method: str = "jacobi"
    mode: str = "unrolled"
    train: int = 24
    val: int = 8
    steps: int = 4
    batch: int = 8
    epochs: int = 20
    lr: float = 3e-3
    channels: int = 8
    tol: float = 1e-6
    seed: int = 0
    dtype: torch.dtype = torch.float32
    refiner: dict = field(default_factory=dict)


def coords(dim: int) -> str:
    """The space coordinates' names of a ``dim``-dimensional grid: ``"x y"`` or ``"x y z"``."""
    return "x y z"[: 2 * dim - 1]


def heat_system(cfg: Config):
    """The implicit-Euler heat matrix ``I - nu dt Laplacian`` on the unit grid of ``cfg``.

    Returns:
        a :class:`taylorc.prdp.sparse.SparseSystem` of ``n^dim`` unknowns, ``cfg.dtype``,
        Dirichlet rows on the boundary (second-order stencils: LeVeque 2007, ch. 1;
        backward Euler as in Bhatia, Koehler, Thuerey, ICLR 2025, heat experiments).
    """
    g = [torch.linspace(0, 1, cfg.n, dtype=torch.float64)] * cfg.dim
    lap = " + ".join(f"u_{c}{c}" for c in coords(cfg.dim).split())
    return assemble(f"u - {cfg.nu_dt!r}*({lap})", g, coords=coords(cfg.dim), dtype=cfg.dtype)


def forcing(u: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``s(u)`` on grid-shaped ``u (B, *n)``: reaction plus a centred x-advection, zero on the boundary."""
    dx = torch.zeros_like(u)
    dx[:, 1:-1] = (u[:, 2:] - u[:, :-2]) / 2
    return (0.1 * (u - u**3) - 0.02 * dx) * interior_mask(cfg, u.dtype)


def interior_mask(cfg: Config, dtype) -> torch.Tensor:
    """``(n,) * dim`` tensor of ``dtype``: 1 at interior nodes, 0 on the boundary."""
    m = torch.zeros([cfg.n] * cfg.dim, dtype=dtype)
    m[(slice(1, -1),) * cfg.dim] = 1
    return m


def initial_conditions(count: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """Smooth random fields: sums of sine modes (wave numbers 1-4 per axis), amplitude ~ 1/|k|^2."""
    s = torch.linspace(0, 1, cfg.n, dtype=torch.float64)
    u = torch.zeros(count, *[cfg.n] * cfg.dim, dtype=torch.float64)
    for ks in np.ndindex(*[4] * cfg.dim):
        ks = [k + 1 for k in ks]
        amp = torch.randn(count, generator=gen, dtype=torch.float64) / sum(k * k for k in ks)
        mode = torch.ones(())
        for k in ks:
            mode = mode[..., None] * torch.sin(math.pi * k * s)
        u = u + amp.reshape(-1, *[1] * cfg.dim) * mode
    return 2 * u / u.flatten(1).abs().amax(1).reshape(-1, *[1] * cfg.dim)


def reference_solve(cfg: Config):
    """``rhs (B, N) -> x`` in float64: sparse LU (scipy) in 1-2 d; in 3-d (LU fill-in is slow)
    40 multigrid V-cycles, checked to a relative residual below 1e-11."""
    A = heat_system(Config(**{**cfg.__dict__, "dtype": torch.float64}))
    if cfg.dim < 3:
        lu = sla.splu(A.to_scipy().tocsc())
        return lambda rhs: torch.from_numpy(lu.solve(rhs.numpy().T).T.copy())
    mg = Solver(A, "mg")

    def solve(rhs):
        x = mg(rhs, iters=40)
        if float(mg.residual.max()) > 1e-11:
            raise RuntimeError(
                f"reference multigrid solve stalled at {float(mg.residual.max()):.1e}"
            )
        return x

    return solve


def trajectories(count: int, cfg: Config, gen) -> torch.Tensor:
    """``(count, steps + 1, N)`` reference trajectories (float64, converged solves)."""
    solve = reference_solve(cfg)
    u = initial_conditions(count, cfg, gen)
    out = [u.reshape(count, -1)]
    for _ in range(cfg.steps):
        u = solve((u + forcing(u, cfg)).reshape(count, -1)).reshape(u.shape)
        out.append(u.reshape(count, -1))
    return torch.stack(out, 1)


def windows(traj: torch.Tensor) -> torch.Tensor:
    """All 2-step windows ``(M, 3, N)`` of ``(count, steps + 1, N)`` trajectories."""
    return torch.cat([traj[:, i : i + 3] for i in range(traj.shape[1] - 2)])


class Corrector(nn.Module):
    """Conv net ``(B, N) -> (B, N)``: three 3^D convolutions, ``channels`` wide, tanh; zero on the boundary."""

    def __init__(self, cfg: Config):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[cfg.dim]
        c = cfg.channels
        self.net = nn.Sequential(
            conv(1, c, 3, padding=1),
            nn.Tanh(),
            conv(c, c, 3, padding=1),
            nn.Tanh(),
            conv(c, 1, 3, padding=1),
        ).to(cfg.dtype)
        self.shape = [cfg.n] * cfg.dim
        self.register_buffer("mask", interior_mask(cfg, cfg.dtype).reshape(-1))

    def forward(self, u):
        return self.net(u.reshape(-1, 1, *self.shape)).reshape(u.shape) * self.mask


def rollout(model, solver, u0, iters: int, steps: int = 2):
    """``steps`` hybrid steps ``u <- Solve_K(A, u + net(u))`` -> ``(B, steps, N)``."""
    out, u = [], u0
    for _ in range(steps):
        u = solver(u + model(u), iters=iters)
        out.append(u)
    return torch.stack(out, 1)


def nmse(pred, ref) -> torch.Tensor:
    """Mean over samples and steps of ``||pred - ref||^2 / ||ref||^2``."""
    return ((pred - ref).pow(2).sum(-1) / ref.pow(2).sum(-1)).mean()


def make_schedule(schedule, k_eps: int, cfg: Config):
    """``(K for epoch 0, Refiner or None)`` for ``"prdp"``, ``"k_eps"``, ``"k_eps/2"`` or an int."""
    if schedule == "prdp":
        refiner = Refiner.scaled(k_eps, **{"k_max": k_eps, **cfg.refiner})
        return refiner.k, refiner
    if schedule == "k_eps":
        return k_eps, None
    if schedule == "k_eps/2":
        return max(1, k_eps // 2), None
    return int(schedule), None


def train(cfg: Config, schedule="prdp", quiet: bool = True, data=None) -> dict:
    """Train one emulator; returns the per-epoch record, cumulative iterations, wall time, final metric.

    ``iterations`` counts the forward solver iterations of the training solves (K per
    batched solve; implicit mode runs as many again in its adjoint solves).
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(1000 + cfg.seed)
    train_w, val_w = data if data is not None else make_data(cfg, gen)
    A = heat_system(cfg)
    solver = Solver(A, cfg.method, cfg.mode)
    val_solver = Solver(A, cfg.method, "unrolled")
    k_eps = estimate_k_eps(val_solver, cfg.tol)
    K, refiner = make_schedule(schedule, k_eps, cfg)
    model = Corrector(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # cosine decay: the last epochs fine-tune, so final metrics compare models more than noise
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs, eta_min=cfg.lr / 30)
    record, iterations = [], 0
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"{schedule} {cfg.mode}", disable=quiet)
    for epoch in bar:
        perm = torch.randperm(len(train_w))
        for i in range(0, len(train_w), cfg.batch):
            w = train_w[perm[i : i + cfg.batch]]
            loss = nmse(rollout(model, solver, w[:, 0], K), w[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            iterations += 2 * K
        decay.step()
        with torch.no_grad():
            val = nmse(rollout(model, val_solver, val_w[:, 0], k_eps), val_w[:, 1:]).item()
        record.append({"epoch": epoch, "K": K, "val": val, "iterations": iterations})
        bar.set_postfix(K=K, val=f"{val:.2e}")
        if refiner is not None and math.isfinite(val) and val > 0:
            K = refiner.step(val)
    return {
        "schedule": str(schedule),
        "mode": cfg.mode,
        "seed": cfg.seed,
        "k_eps": k_eps,
        "iterations": iterations,
        "wall_s": time.perf_counter() - t0,
        "final_val": record[-1]["val"],
        "epochs": record,
    }


def make_data(cfg: Config, gen):
    """``(train windows, val windows)`` in ``cfg.dtype``."""
    tr = windows(trajectories(cfg.train, cfg, gen)).to(cfg.dtype)
    va = trajectories(cfg.val, Config(**{**cfg.__dict__, "steps": 2}), gen)
    return tr, va.to(cfg.dtype)
