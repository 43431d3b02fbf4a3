"""The PRDP refinement controller and the estimate of K_eps that scales its defaults.

Bhatia, Koehler, Thuerey, "Progressively Refined Differentiable Physics" (ICLR 2025),
the refinement algorithm (``should_refine`` in the anchor repository tum-pbs/PRDP,
``experiments/src/prdp.py``): once per epoch, given the history e_0..e_t of a
validation metric,

1. no refinement while ``len(history) <= window`` (delta, default 3);
2. ``m = EMA(history)`` with ``alpha = 2 / (ema_window + 1)`` (w, default 6), seeded with e_0;
3. a plateau when ``m[-1] / m[-window] > tau_step`` (default 0.98);
4. on a plateau, ``r = m[-1] / c`` with the checkpoint c: if ``r < tau_stop`` (default 0.9)
   or ``r > 1``, set ``c = m[-1]`` and refine ``K += dk``; otherwise hold K ("stopping":
   no refinement until the plateaued average is 10% below its value at the last
   refinement; a rise above the checkpoint refines).
"""

from __future__ import annotations

import math

import torch

from .solvers import Solver
from .sparse import SparseSystem

PAPER = dict(k0=1, dk=1, tau_step=0.98, tau_stop=0.9, ema_window=6, window=3)


class Refiner:
    """``K = refiner.step(val_metric)`` once per epoch: the PRDP controller (module docstring).

    Args:
        k0: initial iteration count K_0. dk: the refinement increment Delta K.
        tau_step: plateau threshold on ``m[-1] / m[-window]``. tau_stop: the stopping
            threshold on ``m[-1] / checkpoint``.
        ema_window: w of the EMA weight ``2 / (w + 1)``. window: delta.
        checkpoint: the initial c. None (default) means +inf: the first plateau always
            refines (the anchor's heat-1d/NS/Poisson notebooks start at c = 100, which
            acts the same for metrics below 90). ``"first"``: c = e_0 (the anchor's
            heat-2d notebook; a flat history then never refines).
        k_max: optional cap on K (the anchor's Poisson notebook caps at 600).

    ``Refiner()`` has the paper's defaults (K_0 = dK = 1, tau_step = 0.98, tau_stop = 0.9,
    w = 6, delta = 3; also :meth:`paper`). They need far more epochs when K_eps is large
    (on a 64^2 heat emulator with K_eps = 200 they reached K = 7 in 40 epochs and the
    rollouts diverged): use :meth:`scaled` (from K_eps) or :meth:`for_solver` (K_eps
    estimated from the solver's contraction). ``history`` is a list of ``(epoch, K, ema)``.

    Raises:
        ValueError: a non-finite or non-positive metric (the rule compares ratios).
    """

    def __init__(
        self,
        k0: int = 1,
        dk: int = 1,
        tau_step: float = 0.98,
        tau_stop: float = 0.9,
        ema_window: int = 6,
        window: int = 3,
        checkpoint: float | str | None = None,
        k_max: int | None = None,
    ):
        if k0 < 1 or dk < 0 or window < 1 or ema_window < 1:
            raise ValueError("Refiner needs k0 >= 1, dk >= 0, window >= 1, ema_window >= 1")
        self.k0, self.dk, self.tau_step, self.tau_stop = k0, dk, tau_step, tau_stop
        self.ema_window, self.window, self.k_max = ema_window, window, k_max
        self.initial_checkpoint = checkpoint
        self.reset()

    @classmethod
    def paper(cls, **kw) -> Refiner:
        """The paper's heat-1d defaults: K_0 = 1, dK = 1, tau_step = 0.98, tau_stop = 0.9, w = 6, delta = 3."""
        return cls(**{**PAPER, **kw})

    @classmethod
    def scaled(cls, k_eps: int, **kw) -> Refiner:
        """Defaults scaled to K_eps: ``K_0 = ceil(K_eps / 5)``, ``dK = ceil(K_eps / 10)``,
        ``tau_step = 0.95``, ``ema_window = 3``, ``window = 2``; keyword arguments override.

        Why: K_0 and dK in units of K_eps make the schedule independent of the solver's
        contraction (Jacobi's or multigrid's); K_0 = K_eps/5 keeps the first truncated
        solves accurate enough that the network does not learn to compensate them, and
        the short EMA/window react within a few epochs (measurements: docs/prdp.md,
        bench/notes.md).
        """
        k_eps = max(int(k_eps), 1)
        base = dict(k0=max(1, math.ceil(k_eps / 5)), dk=max(1, math.ceil(k_eps / 10)))
        return cls(**{**base, "tau_step": 0.95, "ema_window": 3, "window": 2, **kw})

    @classmethod
    def for_solver(cls, solver: Solver, tol: float = 1e-6, **kw) -> Refiner:
        """:meth:`scaled` with K_eps from :func:`estimate_k_eps` (``solver`` runs ~60 iterations)."""
        return cls.scaled(estimate_k_eps(solver, tol), **kw)

    def reset(self) -> None:
        """Back to the initial refinement level, history and checkpoint."""
        self.k = self.k0
        self.metrics: list[float] = []
        self.ema: list[float] = []
        c = self.initial_checkpoint
        self.checkpoint = math.inf if c is None else (None if c == "first" else float(c))
        self.history: list[tuple[int, int, float]] = []
        self.refinements: list[int] = []

    def step(self, metric: float) -> int:
        """Record this epoch's validation metric; return K for the next epoch."""
        e = float(metric)
        if not math.isfinite(e) or e <= 0:
            raise ValueError(
                f"Refiner.step needs a positive finite validation metric, got {metric!r} "
                "(the rule compares ratios of its moving average)"
            )
        alpha = 2 / (self.ema_window + 1)
        self.metrics.append(e)
        self.ema.append(e if not self.ema else alpha * e + (1 - alpha) * self.ema[-1])
        if self.checkpoint is None:
            self.checkpoint = e
        if len(self.metrics) > self.window and self._plateau():
            r = self.ema[-1] / self.checkpoint
            if r < self.tau_stop or r > 1:
                self.checkpoint = self.ema[-1]
                self._refine()
        self.history.append((len(self.metrics) - 1, self.k, self.ema[-1]))
        return self.k

    def _plateau(self) -> bool:
        return self.ema[-1] / self.ema[-self.window] > self.tau_step

    def _refine(self) -> None:
        k = self.k + self.dk
        self.k = k if self.k_max is None else min(k, self.k_max)
        self.refinements.append(len(self.metrics) - 1)

    def state_dict(self) -> dict:
        """Everything :meth:`load_state_dict` needs to resume (plain Python values)."""
        keys = ("k0", "dk", "tau_step", "tau_stop", "ema_window", "window", "k_max")
        state = {k: getattr(self, k) for k in keys}
        state.update(
            k=self.k,
            metrics=list(self.metrics),
            ema=list(self.ema),
            checkpoint=self.checkpoint,
            initial_checkpoint=self.initial_checkpoint,
            history=list(self.history),
            refinements=list(self.refinements),
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        for k, v in state.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)


def contraction_factor(solver: Solver, iters: int = 60, seed: int = 0) -> float:
    """Estimate the asymptotic residual reduction per iteration of ``solver`` (in (0, 1)).

    Runs ``iters`` iterations on a smooth-plus-random right-hand side (smooth modes are
    the slow ones of stationary methods) and returns the geometric mean of the residual
    ratio over the last third of the iterations above the rounding floor (100 eps): a power-iteration estimate of the iteration matrix's
    spectral radius (Saad 2003, Sec. 4.2) that also serves CG and multigrid.
    """
    s = solver.system
    gen = torch.Generator().manual_seed(seed)
    b = torch.rand(s.n, generator=gen, dtype=torch.float64).to(s.dtype).to(s.device)
    b = b + _smooth_mode(s).to(b)
    with torch.no_grad():
        solver(b, iters=iters)
    floor = 100 * torch.finfo(s.dtype).eps  # below it the ratios measure rounding, not rho
    h = [float(v.max()) for v in solver.history]
    h = h[: next((i for i, v in enumerate(h) if v <= floor), len(h))]
    tail = h[-(max(len(h) // 3, 1) + 1) :]
    if len(tail) < 2:
        return 0.0
    return min((tail[-1] / tail[0]) ** (1 / (len(tail) - 1)), 1.0)


def _smooth_mode(s: SparseSystem) -> torch.Tensor:
    mode = torch.ones(())
    for n in s.grid_shape:
        mode = mode[..., None] * torch.sin(torch.pi * torch.arange(1, n + 1) / (n + 1))
    return mode.reshape(-1).to(torch.float64)


def estimate_k_eps(solver: Solver, tol: float = 1e-6, iters: int = 60) -> int:
    """Iterations to reduce the relative residual to ``tol``: ``ceil(log tol / log rho)``
    with rho from :func:`contraction_factor` (capped at 100,000 when rho is ~1)."""
    rho = contraction_factor(solver, iters)
    if rho <= 0:
        return 1
    if rho >= 1 - 1e-5:
        return 100_000
    return max(1, min(100_000, math.ceil(math.log(tol) / math.log(rho))))
