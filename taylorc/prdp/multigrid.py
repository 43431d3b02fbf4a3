"""Geometric multigrid V-cycles on vertex-centred grids (``2^k + 1`` nodes per Dirichlet
axis, an even number per periodic axis: ``2m -> m`` nodes, the transfers wrapping around).

Full-weighting restriction and bilinear (trilinear) prolongation as strided
convolutions; coarse operators are the same spec re-assembled on every other node
(:meth:`SparseSystem.coarsen`), not Galerkin products; the coarsest level is solved
densely. Trottenberg, Oosterlee, Schuller, "Multigrid" (2001), Sec. 2.2-2.4. Used as a
solver (one V-cycle per iteration) and as a CG preconditioner (symmetric when the
post-smoother is the adjoint of the pre-smoother). The PRDP paper's 3-d heat emulator
trains through a multigrid-type solve (Bhatia, Koehler, Thuerey, ICLR 2025).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sparse import SparseSystem
from .stationary import smoother

MAX_COARSEST = 4096  # unknowns of the densely solved coarsest level


def _kernel(weights, D, dtype, device):
    w = torch.tensor(weights, dtype=dtype, device=device)
    k = w
    for _ in range(D - 1):
        k = k[..., None] * w
    return k[None, None]


_CONV = {1: (F.conv1d, F.conv_transpose1d), 2: (F.conv2d, F.conv_transpose2d)}
_CONV[3] = (F.conv3d, F.conv_transpose3d)


class Transfer:
    """Restriction and prolongation between a grid of ``n_d`` nodes per axis and ``(n_d+1)/2``
    (``n_d / 2`` on a periodic axis).

    For an interior block (``interior=True``) vectors live on the interior nodes and the
    boundary is zero: they are padded to the full grid and stripped afterwards. For a
    full system the restricted residual is zeroed on the coarse boundary (its Dirichlet
    rows carry a zero correction). Periodic axes are padded circularly instead: the
    same stencils, wrapped.
    """

    def __init__(self, fine: SparseSystem, coarse: SparseSystem):
        self.D = len(fine.grid_shape)
        if self.D not in _CONV:
            raise ValueError(f"multigrid supports 1-3 grid axes, got {self.D}")
        self.interior = fine.interior
        self.fine_shape, self.coarse_shape = fine.grid_shape, coarse.grid_shape
        self.periodic = fine.periodic or (False,) * self.D
        dt, dev = fine.dtype, fine.device
        self.restrict_k = _kernel([0.25, 0.5, 0.25], self.D, dt, dev)
        self.prolong_k = _kernel([0.5, 1.0, 0.5], self.D, dt, dev)
        # F.pad lists the last axis first; a wrapped axis is padded here, not by the conv
        self.wrap = [int(p) for p in reversed(self.periodic) for _ in "lr"]
        self.wrap_right = [x for p in reversed(self.periodic) for x in (0, int(p))]
        self.dirichlet = tuple(0 if p else 1 for p in self.periodic)
        self.edge = tuple(slice(None) if p else slice(1, -1) for p in self.periodic)
        if not self.interior:
            mask = torch.zeros(coarse.grid_shape, dtype=dt, device=dev)
            mask[self.edge] = 1
            self.mask = mask.reshape(-1, 1)

    def _grid(self, v, shape):
        B = v.shape[1]
        g = v.T.reshape(B, 1, *shape)
        if self.interior:
            g = F.pad(g, [d for d in reversed(self.dirichlet) for _ in "lr"])
        return g

    def _wrap(self, g, pad):
        return F.pad(g, pad, mode="circular") if any(self.periodic) else g

    def _flat(self, g):
        if self.interior:
            g = g[(slice(None), slice(None)) + self.edge]
        return g.reshape(g.shape[0], -1).T

    def restrict(self, r):
        """``(N_fine, B) -> (N_coarse, B)``, full weighting."""
        conv = _CONV[self.D][0]
        g = self._wrap(self._grid(r, self.fine_shape), self.wrap)
        rc = self._flat(conv(g, self.restrict_k, stride=2, padding=self.dirichlet))
        return rc if self.interior else rc * self.mask

    def prolong(self, e):
        """``(N_coarse, B) -> (N_fine, B)``, (multi)linear interpolation."""
        convt = _CONV[self.D][1]
        # a wrapped axis: append coarse node 0 after node m-1, drop the output past 2m-1
        g = self._wrap(self._grid(e, self.coarse_shape), self.wrap_right)
        g = convt(g, self.prolong_k, stride=2, padding=1)
        keep = tuple(slice(0, -1) if p else slice(None) for p in self.periodic)
        return self._flat(g[(slice(None), slice(None)) + keep])


class VCycle:
    """A multigrid V(pre, post)-cycle for ``system`` with a zero initial guess.

    Args:
        system: the fine matrix; needs ``system.coarsen`` (grids of ``2^k + 1`` nodes per
            axis, ``m 2^k`` per periodic axis, from :func:`taylorc.prdp.assemble`).
        kind: the smoother, ``"jacobi"`` (weighted, ``2D/(2D+1)``) or ``"sor"`` (red-black
            Gauss-Seidel; the post-smoother sweeps black-red, so the cycle is symmetric).
        pre: smoothing sweeps before the coarse correction.
        post: smoothing sweeps after it.
        omega: smoother weight (None: the textbook default).

    Raises:
        ValueError: no coarse level (a grid that cannot be halved), a coarsest level
            above ``MAX_COARSEST`` unknowns, or a smoother that does not apply.
    """

    def __init__(
        self,
        system: SparseSystem,
        kind: str = "sor",
        pre: int = 2,
        post: int = 2,
        omega: float | None = None,
    ):
        if system.coarsen is None:
            raise ValueError(
                f"multigrid needs a grid that halves: 2^k + 1 nodes per axis (>= 9), an even "
                f"number (>= 10) per periodic axis, from taylorc.prdp.assemble; got unknowns "
                f"on a {system.grid_shape} grid "
                f"({'interior block' if system.interior else 'full grid'})"
            )
        self.levels = [system]
        while self.levels[-1].coarsen is not None:
            self.levels.append(self.levels[-1].coarsen())
        coarsest = self.levels[-1]
        if coarsest.n > MAX_COARSEST:
            raise ValueError(f"the coarsest multigrid level has {coarsest.n} unknowns")
        self.pre, self.post = pre, post
        self.pre_s = [smoother(s, kind, omega, False) for s in self.levels[:-1]]
        self.post_s = [smoother(s, kind, omega, True) for s in self.levels[:-1]]
        self.transfers = [Transfer(f, c) for f, c in zip(self.levels[:-1], self.levels[1:])]
        self.dense = coarsest.to_dense()

    def __call__(self, r: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Approximate ``A^-1 r`` for ``r (N, B)``."""
        if level == len(self.levels) - 1:
            return torch.linalg.solve(self.dense, r)
        A = self.levels[level]
        x = self.pre_s[level].run(r, torch.zeros_like(r), self.pre)
        t = self.transfers[level]
        rc = t.restrict(r - A.matmul_cols(x))
        x = x + t.prolong(self(rc, level + 1))
        return self.post_s[level].run(r, x, self.post)
