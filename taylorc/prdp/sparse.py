"""A sparse matrix with a fixed pattern and differentiable values, applied to batched vectors.

The solvers of :mod:`taylorc.prdp` keep vectors column-major, ``(N, B)`` (B right-hand
sides), so one CSR product serves the whole batch. The product is a
``torch.autograd.Function``: its backward is ``A^T g`` for the vector and
``sum_b g[row, b] x[col, b]`` for the values, on the pattern only (torch's own CSR
backward w.r.t. a CSR operand builds a dense ``N x N`` gradient).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch


def _csr(crow, col, values, n_rows, n_cols) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, col, values, size=(n_rows, n_cols), check_invariants=False
        )


@dataclass(frozen=True)
class Pattern:
    """The sparsity pattern of an ``(n_rows, n_cols)`` CSR matrix and of its transpose.

    ``row``/``col`` are ``(nnz,)`` int64; ``perm`` orders the entries of the
    transpose (``values[perm]`` are the transpose's CSR values).
    """

    crow: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    n_rows: int
    n_cols: int
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm: torch.Tensor

    @staticmethod
    def from_coo(row: np.ndarray, col: np.ndarray, n_rows: int, n_cols: int) -> Pattern:
        """A pattern from unique ``(row, col)`` pairs (any order; sorted here, row-major)."""
        order = np.lexsort((col, row))
        row, col = row[order], col[order]
        crow = np.zeros(n_rows + 1, dtype=np.int64)
        np.add.at(crow, row + 1, 1)
        perm = np.lexsort((row, col))
        crow_t = np.zeros(n_cols + 1, dtype=np.int64)
        np.add.at(crow_t, col + 1, 1)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return Pattern(
            t(np.cumsum(crow)),
            t(col),
            t(row),
            n_rows,
            n_cols,
            t(np.cumsum(crow_t)),
            t(row[perm]),
            t(perm),
        )

    def to(self, device) -> Pattern:
        """The pattern on ``device``."""
        return Pattern(
            *[getattr(self, f).to(device) for f in ("crow", "col", "row")],
            self.n_rows,
            self.n_cols,
            *[getattr(self, f).to(device) for f in ("crow_t", "col_t", "perm")],
        )

    def transpose(self) -> Pattern:
        """The pattern of the transpose (its values are ``values[self.perm]``)."""
        inv = torch.empty_like(self.perm)
        inv[self.perm] = torch.arange(len(self.perm), device=self.perm.device)
        return Pattern(
            self.crow_t,
            self.col_t,
            self.col[self.perm],
            self.n_cols,
            self.n_rows,
            self.crow,
            self.col,
            inv,
        )


class _SpMM(torch.autograd.Function):
    """``y = A x`` for ``x (n_cols, B)``; gradients to ``values`` on the pattern and to ``x``."""

    @staticmethod
    def forward(ctx, values, x, pattern: Pattern):
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return _csr(pattern.crow, pattern.col, values, pattern.n_rows, pattern.n_cols) @ x

    @staticmethod
    def backward(ctx, g):
        values, x = ctx.saved_tensors
        p = ctx.pattern
        gv = gx = None
        if ctx.needs_input_grad[0]:
            gv = (g[p.row] * x[p.col]).sum(-1)
        if ctx.needs_input_grad[1]:
            gx = _SpMM.apply(values[p.perm], g, p.transpose())
        return gv, gx, None


@dataclass
class SparseSystem:
    """A square sparse matrix ``A`` on a grid: fixed pattern, values differentiable.

    Attributes:
        pattern: the CSR pattern (:class:`Pattern`).
        values: ``(nnz,)`` float32/float64 tensor, may require grad.
        grid_shape: nodes per axis of the unknowns (``prod == N``).
        coarsen: ``() -> SparseSystem`` on the grid with every other node (the same
            spec re-assembled there; used by multigrid), or None.
        interior: True for the interior block of a Dirichlet problem (the boundary
            is implicit and zero in the multigrid transfers).
        lifting: ``(A_IB values, pattern, interior index, boundary index)`` of an
            interior block, for :meth:`lift`/:meth:`extend`; None otherwise.
        periodic: per axis, whether the grid wraps around there (``()``: no axis).
    """

    pattern: Pattern
    values: torch.Tensor
    grid_shape: tuple[int, ...]
    coarsen: Callable[[], SparseSystem] | None = None
    interior: bool = False
    lifting: tuple | None = None
    periodic: tuple[bool, ...] = ()

    @property
    def n(self) -> int:
        """Unknowns (rows)."""
        return self.pattern.n_rows

    @property
    def dtype(self):
        """The values' dtype."""
        return self.values.dtype

    @property
    def device(self):
        """The values' device."""
        return self.values.device

    def matmul_cols(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for column-major ``x (N, B)`` -> ``(N, B)``."""
        return _SpMM.apply(self.values, x, self.pattern)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x (N,)`` or batch-first ``(B, N)``, same shape out."""
        if x.dim() == 1:
            return self.matmul_cols(x[:, None])[:, 0]
        return self.matmul_cols(x.T).T

    def diagonal(self) -> torch.Tensor:
        """``(N,)`` diagonal (differentiable); raises ValueError when an entry is zero."""
        p = self.pattern
        on = p.row == p.col
        d = torch.zeros(self.n, dtype=self.dtype, device=self.device).index_add(
            0, p.row[on], self.values[on]
        )
        if bool((d == 0).any()):
            i = int(torch.nonzero(d == 0)[0])
            raise ValueError(
                f"row {i} of the matrix has a zero diagonal: Jacobi, SOR and multigrid smoothing "
                "divide by it (use CG on an SPD system or reorder the equations)"
            )
        return d

    def transpose(self) -> SparseSystem:
        """``A^T`` (values gathered differentiably); coarse levels transposed too."""
        coarsen = self.coarsen
        return replace(
            self,
            pattern=self.pattern.transpose(),
            values=self.values[self.pattern.perm],
            coarsen=None if coarsen is None else (lambda: coarsen().transpose()),
            lifting=None,
        )

    def detach(self) -> SparseSystem:
        """The system with its values (and coarse levels') detached from autograd."""
        coarsen = self.coarsen
        return replace(
            self,
            values=self.values.detach(),
            coarsen=None if coarsen is None else (lambda: coarsen().detach()),
        )

    def to_scipy(self) -> sp.csr_matrix:
        """A detached float64 scipy CSR copy (for reference solves)."""
        p = self.pattern
        return sp.csr_matrix(
            (
                self.values.detach().cpu().double().numpy(),
                p.col.cpu().numpy(),
                p.crow.cpu().numpy(),
            ),
            shape=(p.n_rows, p.n_cols),
        )

    def to_dense(self) -> torch.Tensor:
        """Dense ``(N, N)`` matrix, differentiable in the values."""
        p = self.pattern
        out = torch.zeros(p.n_rows, p.n_cols, dtype=self.dtype, device=self.device)
        return out.index_put((p.row, p.col), self.values, accumulate=True)

    def asymmetry(self) -> float:
        """``max |A - A^T| / max |A|`` (0 for a symmetric matrix)."""
        v = self.values.detach()
        return float((v - v[self.pattern.perm]).abs().max() / v.abs().max())

    def lift(self, f: torch.Tensor) -> torch.Tensor:
        """Interior right-hand side ``f_I - A_IB f_B`` of a full-grid ``f (B, N_full)`` or ``(N_full,)``.

        Raises:
            ValueError: the system is not an interior block.
        """
        vals, pat, inner, bnd = self._lifting()
        fb = f[..., bnd]
        batch = math.prod(f.shape[:-1])  # explicit: a fully periodic grid has no f_B
        coupled = _SpMM.apply(vals, fb.reshape(batch, -1).T, pat).T.reshape(*f.shape[:-1], -1)
        return f[..., inner] - coupled

    def extend(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The full-grid vector: ``x`` on the interior, the Dirichlet data ``f_B`` on the boundary."""
        _, _, inner, bnd = self._lifting()
        out = torch.zeros(*x.shape[:-1], f.shape[-1], dtype=x.dtype, device=x.device)
        out = out.index_copy(-1, inner, x)
        return out.index_copy(-1, bnd, f[..., bnd].to(x.dtype))

    def _lifting(self):
        if self.lifting is None:
            raise ValueError(
                "lift/extend need the interior block of a Dirichlet problem: "
                "assemble(..., form='interior')"
            )
        return self.lifting
