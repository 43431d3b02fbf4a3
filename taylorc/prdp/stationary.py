"""Stationary iterations on column-major batches ``(N, B)``: weighted Jacobi and red-black SOR.

Both are plain torch code (differentiable when unrolled) and serve as solvers and as
multigrid smoothers. Red-black SOR colours the grid nodes by the parity of the sum of
their indices: a valid Gauss-Seidel ordering only when no matrix entry couples two
nodes of one colour (5-/7-point stencils; not mixed derivatives or fourth order; an
even number of nodes on each periodic axis, where node n-1 neighbours node 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .sparse import Pattern, SparseSystem, _SpMM


def record(history: list | None, r: torch.Tensor, bnorm: torch.Tensor) -> None:
    """Append the relative residual norms ``||r_b|| / ||b_b||`` (``(B,)``, detached) to ``history``."""
    if history is not None:
        history.append((r.detach().norm(dim=0) / bnorm).cpu())


class Jacobi:
    """Weighted Jacobi ``x <- x + omega D^-1 (b - A x)`` (Saad, "Iterative Methods for Sparse
    Linear Systems", 2003, Sec. 4.1); the PRDP paper's heat solver (Bhatia et al., ICLR 2025).

    Args:
        system: the matrix (nonzero diagonal; ValueError otherwise).
        omega: relaxation weight (1 = plain Jacobi).
    """

    def __init__(self, system: SparseSystem, omega: float = 1.0):
        self.system = system
        self.omega = omega
        self.scale = (omega / system.diagonal())[:, None]

    def run(self, b, x, iters: int, history: list | None = None, bnorm=None):
        """``iters`` sweeps from ``x``; ``b, x (N, B)``; appends residual norms to ``history``."""
        for _ in range(iters):
            r = b - self.system.matmul_cols(x)
            record(history, r, bnorm)
            x = x + self.scale * r
        return x


def grid_colors(shape) -> np.ndarray:
    """``(N,)`` 0/1 colour of each node: the parity of the sum of its grid indices."""
    idx = np.indices(shape).reshape(len(shape), -1)
    return idx.sum(0) % 2


class RedBlackSOR:
    """Red-black successive over-relaxation (Gauss-Seidel for omega = 1) on a grid.

    One iteration updates the red nodes, then the black ones (``reverse=True``:
    black first, the adjoint order, for a symmetric multigrid preconditioner).
    Each half-sweep is ``x_c <- x_c + omega (b - A x)_c / d_c`` on the colour's rows
    (Saad 2003, Sec. 4.1 and 12.4).

    Raises:
        ValueError: a zero diagonal, an odd number of nodes on a periodic axis, or an
            entry coupling two nodes of one colour.
    """

    def __init__(self, system: SparseSystem, omega: float = 1.0, reverse: bool = False):
        if math.prod(system.grid_shape) != system.n:
            raise ValueError(
                f"red-black SOR needs a grid system; grid_shape {system.grid_shape} "
                f"does not match N = {system.n}"
            )
        odd = [n for n, p in zip(system.grid_shape, system.periodic) if p and n % 2]
        if odd:
            raise ValueError(
                f"red-black SOR needs an even number of nodes on each periodic axis (the "
                f"colouring must alternate across the wrap); got {system.grid_shape} with "
                f"periodic {system.periodic}: use an even count or method='jacobi'"
            )
        p = system.pattern
        colors = torch.from_numpy(grid_colors(system.grid_shape)).to(p.row.device)
        same = (colors[p.row] == colors[p.col]) & (p.row != p.col)
        if bool(same.any()):
            raise ValueError(
                "red-black SOR: the stencil couples nodes of one colour (mixed derivatives or "
                "fourth order); use method='jacobi' or 'mg' with smoother='jacobi'"
            )
        self.system, self.omega = system, omega
        d = system.diagonal()
        self.halves = []
        for c in (1, 0) if reverse else (0, 1):
            rows = torch.nonzero(colors == c)[:, 0]
            entries = torch.nonzero(colors[p.row] == c)[:, 0]
            new = torch.full((system.n,), -1, dtype=torch.int64, device=p.row.device)
            new[rows] = torch.arange(len(rows), device=p.row.device)
            sub = Pattern.from_coo(
                new[p.row[entries]].cpu().numpy(), p.col[entries].cpu().numpy(), len(rows), system.n
            ).to(p.row.device)
            self.halves.append((rows, entries, sub, (omega / d[rows])[:, None]))

    def run(self, b, x, iters: int, history: list | None = None, bnorm=None):
        """``iters`` red-black sweeps from ``x``; ``b, x (N, B)``; residuals are not recorded."""
        vals = self.system.values
        for _ in range(iters):
            for rows, entries, sub, scale in self.halves:
                r = b[rows] - _SpMM.apply(vals[entries], x, sub)
                x = x.index_add(0, rows, scale * r)
        return x


def smoother(system: SparseSystem, kind: str, omega: float | None = None, reverse: bool = False):
    """A Jacobi or red-black SOR smoother with the textbook weights.

    Jacobi's weight defaults to ``2D / (2D + 1)`` (4/5 in 2-d, 6/7 in 3-d: the best
    smoothing factor for the Laplacian; Trottenberg, Oosterlee, Schuller, "Multigrid",
    2001, Sec. 2.1); Gauss-Seidel (omega = 1) for SOR.
    """
    D = len(system.grid_shape)
    if kind == "jacobi":
        return Jacobi(system, omega if omega is not None else 2 * D / (2 * D + 1))
    if kind == "sor":
        return RedBlackSOR(system, omega if omega is not None else 1.0, reverse)
    raise ValueError(f"smoother must be 'jacobi' or 'sor', got {kind!r}")
