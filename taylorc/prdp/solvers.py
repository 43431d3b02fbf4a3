"""Differentiable iterative solvers with a fixed iteration count K, unrolled or implicit.

PRDP (Bhatia, Koehler, Thuerey, "Progressively Refined Differentiable Physics", ICLR 2025)
trains through linear solves ``A x = b`` run for K iterations only, K raised by a
controller (:class:`taylorc.prdp.Refiner`). Two ways to differentiate (paper Sec. 3):

- ``mode="unrolled"``: autograd through the K iterations (memory grows with K).
- ``mode="implicit"``: the forward runs without a graph; the backward solves the adjoint
  system ``A^T y = dL/dx`` with the same method and K (the anchor's choice;
  ``adjoint_iters`` may differ), then ``dL/db = y`` and
  ``dL/dA_ij = -sum_batch y_i x_j`` on the sparsity pattern (implicit function theorem).

Solvers never raise on non-convergence: truncated solves are the point. The relative
residual norms ``||b - A x_k|| / ||b||`` are recorded in ``Solver.history``.
"""

from __future__ import annotations

import torch

from .multigrid import VCycle
from .sparse import SparseSystem
from .stationary import Jacobi, RedBlackSOR
from .stationary import record as _record

METHODS = ("jacobi", "sor", "cg", "mg")
MODES = ("unrolled", "implicit")


class ConjugateGradient:
    """(Preconditioned) conjugate gradients, batched: one step size per column (Hestenes and
    Stiefel 1952; Saad 2003, Alg. 9.1). A converged column (``r^T z = 0``) stays put.

    Raises:
        ValueError: a non-symmetric matrix or a non-positive diagonal at construction; a
            direction with ``p^T A p <= 0`` during the iterations (not positive definite).
    """

    def __init__(self, system: SparseSystem, preconditioner=None):
        tol = 1e-5 if system.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
        asym = system.asymmetry()
        if asym > tol:
            raise ValueError(
                f"CG needs a symmetric positive definite matrix; this one has "
                f"max|A - A^T| / max|A| = {asym:.2e}. A Dirichlet problem's full matrix is not "
                "symmetric: assemble(..., form='interior') gives the symmetric interior block "
                "(and .lift() its right-hand side); otherwise use jacobi, sor or mg"
            )
        if bool((system.diagonal() <= 0).any()):
            raise ValueError(
                "CG needs a positive definite matrix, but a diagonal entry is <= 0 (a Laplacian "
                "is negative definite: solve with -A and -b, e.g. the spec '-u_xx - u_yy')"
            )
        self.system, self.precond = system, preconditioner

    def _m(self, r):
        return r if self.precond is None else self.precond(r)

    def run(self, b, x, iters: int, history=None, bnorm=None):
        """``iters`` CG steps from ``x``; ``b, x (N, B)``; appends residual norms to ``history``."""
        A = self.system
        r = b - A.matmul_cols(x)
        z = self._m(r)
        p, rz = z, (r * z).sum(0)
        for k in range(iters):
            _record(history, r, bnorm)
            Ap = A.matmul_cols(p)
            pAp = (p * Ap).sum(0)
            active = rz != 0
            if bool(((pAp <= 0) & active).any()):
                raise ValueError(
                    f"CG: p^T A p <= 0 at iteration {k}: the matrix (or the preconditioner) is "
                    "not positive definite; use jacobi, sor or mg"
                )
            alpha = torch.where(active, rz / torch.where(active, pAp, 1), 0)
            x, r = x + alpha * p, r - alpha * Ap
            z = self._m(r)
            rz_new = (r * z).sum(0)
            p = z + torch.where(active, rz_new / torch.where(active, rz, 1), 0) * p
            rz = rz_new
        return x


class MultigridIteration:
    """``x <- x + V(b - A x)``: one multigrid V-cycle per iteration (see :class:`VCycle`)."""

    def __init__(self, system: SparseSystem, **cycle):
        self.system, self.cycle = system, VCycle(system, **cycle)

    def run(self, b, x, iters: int, history=None, bnorm=None):
        """``iters`` V-cycles from ``x``; ``b, x (N, B)``; appends residual norms to ``history``."""
        for _ in range(iters):
            r = b - self.system.matmul_cols(x)
            _record(history, r, bnorm)
            x = x + self.cycle(r)
        return x


class _ImplicitSolve(torch.autograd.Function):
    """Forward: K iterations without a graph. Backward: the adjoint solve (module docstring)."""

    @staticmethod
    def forward(ctx, values, b, x0, solver, iters):
        x = solver._engine(adjoint=False).run(b, x0, iters, solver.history, solver._bnorm)
        ctx.solver, ctx.iters = solver, iters
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = ctx.solver
        K = ctx.iters if s.adjoint_iters is None else s.adjoint_iters
        y = s._engine(adjoint=True).run(g, torch.zeros_like(g), K)
        gv = None
        if ctx.needs_input_grad[0]:
            p = s.system.pattern
            gv = -(y[p.row] * x[p.col]).sum(-1)
        return gv, y, None, None, None


class Solver:
    """``x = Solver(A, method, mode)(b, iters=K)``: K iterations of an iterative method.

    Args:
        system: a :class:`SparseSystem` from :func:`taylorc.prdp.assemble`; its values may
            require grad (gradients reach the coefficients they were built from).
        method: ``"jacobi"`` (weighted, ``omega`` default 1), ``"sor"`` (red-black,
            ``omega`` default 1 = Gauss-Seidel), ``"cg"`` (symmetric positive definite
            systems; ``preconditioner="mg"`` for multigrid-preconditioned CG), ``"mg"``
            (one V(pre, post)-cycle per iteration; ``smoother`` ``"sor"`` or ``"jacobi"``).
        mode: ``"unrolled"`` or ``"implicit"`` (see the module docstring).
        adjoint_iters: iterations of the implicit backward solve (default: the forward K).

    Calling: ``b`` is ``(N,)`` or batch-first ``(B, N)`` with the system's dtype and
    device; ``x0`` the same shape (default zeros; in implicit mode it gets no gradient,
    as the solution it approximates does not depend on it); returns ``x`` shaped like ``b``.
    After a call, ``history`` holds the relative residual norms (``(B,)`` tensors) the
    method computed (every iteration for Jacobi, CG and multigrid; the initial and
    final ones for SOR) and ``residual`` the final one. Nothing raises on
    non-convergence.

    Raises:
        ValueError: an unknown method, mode or preconditioner; a matrix the method cannot
            take (zero diagonal, non-symmetric or indefinite for CG, a grid multigrid
            cannot halve); ``b`` of the wrong size, dtype or device; negative ``iters``.

    Source: Bhatia, Koehler, Thuerey, ICLR 2025 (unrolled and implicit differentiation
    of truncated solves, Sec. 3 and App. B).
    """

    def __init__(
        self,
        system: SparseSystem,
        method: str = "jacobi",
        mode: str = "unrolled",
        *,
        omega: float | None = None,
        preconditioner: str | None = None,
        smoother: str = "sor",
        pre: int = 2,
        post: int = 2,
        adjoint_iters: int | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if preconditioner not in (None, "mg"):
            raise ValueError(f"preconditioner must be None or 'mg', got {preconditioner!r}")
        self.system, self.method, self.mode = system, method, mode
        self.options = dict(
            omega=omega, preconditioner=preconditioner, smoother=smoother, pre=pre, post=post
        )
        self.adjoint_iters = adjoint_iters
        self.history: list[torch.Tensor] = []
        self._engines: dict[str, object] = {}
        self._bnorm = None
        self._engine(adjoint=False)  # build now: errors about the matrix surface here

    def _build(self, system: SparseSystem):
        o = self.options
        cycle = dict(kind=o["smoother"], pre=o["pre"], post=o["post"], omega=o["omega"])
        if self.method == "jacobi":
            return Jacobi(system, 1.0 if o["omega"] is None else o["omega"])
        if self.method == "sor":
            return RedBlackSOR(system, 1.0 if o["omega"] is None else o["omega"])
        if self.method == "mg":
            return MultigridIteration(system, **cycle)
        if o["preconditioner"] == "mg":
            return ConjugateGradient(system, VCycle(system, **cycle))
        return ConjugateGradient(system)

    def _engine(self, adjoint: bool):
        key = ("adjoint" if adjoint else "forward") + (
            "" if self.mode == "implicit" or adjoint else "-live"
        )
        if key not in self._engines:
            s = self.system if key == "forward-live" else self.system.detach()
            if adjoint and self.method != "cg":  # CG checked A = A^T
                s = s.transpose()
            self._engines[key] = self._build(s)
        return self._engines[key]

    def __call__(self, b: torch.Tensor, iters: int, x0: torch.Tensor | None = None):
        cols = self._check(b, iters)
        x = x0_cols = torch.zeros_like(cols) if x0 is None else self._check(x0, 0)
        self.history = []
        self._bnorm = cols.detach().norm(dim=0).clamp_min(torch.finfo(cols.dtype).tiny)
        if self.mode == "unrolled":
            x = self._engine(adjoint=False).run(cols, x, iters, self.history, self._bnorm)
        else:
            x = _ImplicitSolve.apply(self.system.values, cols, x, self, iters)
        with torch.no_grad():
            r = cols - self.system.matmul_cols(x.detach())
            if not self.history:  # SOR computes no full residual: record the initial one
                _record(self.history, cols - self.system.matmul_cols(x0_cols), self._bnorm)
            _record(self.history, r, self._bnorm)
        self.residual = self.history[-1]
        return x[:, 0] if b.dim() == 1 else x.T

    def _check(self, b, iters):
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(f"iters must be an int >= 0, got {iters!r}")
        s = self.system
        if b.shape[-1] != s.n or b.dim() not in (1, 2):
            raise ValueError(
                f"right-hand side of shape {tuple(b.shape)}: expected ({s.n},) or (B, {s.n})"
            )
        if b.dtype != s.dtype or b.device != s.device:
            raise ValueError(
                f"right-hand side is {b.dtype} on {b.device}, the matrix {s.dtype} on "
                f"{s.device}: convert one (assemble(..., dtype=, device=) or b.to(...))"
            )
        return b[:, None] if b.dim() == 1 else b.T
