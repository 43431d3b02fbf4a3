"""Finite-difference discretization of the same operator specs on uniform tensor-product grids.

Each partial derivative ``d^alpha`` is the Kronecker product of 1-d central
difference matrices (second-order accurate for orders 1-4: LeVeque, "Finite
Difference Methods for Ordinary and Partial Differential Equations", 2007,
ch. 1), each term is scaled by its coefficient at the nodes, and the rows of
the nodes within a stencil half-width of the boundary are Dirichlet rows
(identity): ``A u = f`` there reads ``u = f``. On a periodic axis (a
:class:`Grid` with ``periodic``) the 1-d matrices wrap around (circulant;
LeVeque 2007, Sec. 2.16) and that axis has no Dirichlet rows. Consumers
(iterative solvers, PRDP) use the matrix; the nodes are ordered like
``torch.meshgrid(..., indexing="ij")`` flattened (the last coordinate fastest).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .parse import parse, split_coords
from .spec import Operator, coefficient_values, resolve_dim

# Central stencils (offsets -2..2) for derivative orders 0..4, second-order accurate.
_STENCILS = {
    0: [0, 0, 1, 0, 0],
    1: [0, -0.5, 0, 0.5, 0],
    2: [0, 1, -2, 1, 0],
    3: [-0.5, 1, 0, -1, 0.5],
    4: [1, -4, 6, -4, 1],
}


def difference_matrix(n: int, order: int, h: float, periodic: bool = False) -> sp.csr_matrix:
    """``(n, n)`` float64 central difference matrix of a derivative order 0-4 with spacing h.

    Non-periodic: rows whose stencil leaves the grid are zero (they become Dirichlet
    rows). Periodic: the circulant matrix, node ``i`` coupled to ``(i + offset) mod n``
    (the ``n`` nodes of one period, spacing ``h = L / n``; LeVeque 2007, Sec. 2.16).

    Raises:
        ValueError: order above 4; a periodic axis with fewer than 5 nodes (the
            stencil would wrap onto itself).
    """
    if order not in _STENCILS:
        raise ValueError(
            f"finite differences are implemented for derivative orders 0-4 per coordinate, got {order}"
        )
    if periodic and n < 5:
        raise ValueError(f"a periodic axis needs at least 5 nodes, got {n}")
    width = 0 if periodic else 1 if order <= 2 else 2
    stencil = _STENCILS[order]
    rows, cols, vals = [], [], []
    for i in range(width, n - width):
        for off in range(-2, 3):
            if stencil[off + 2] != 0:
                rows.append(i)
                cols.append((i + off) % n)
                vals.append(stencil[off + 2] / h**order)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def _uniform_spacing(g: torch.Tensor, d: int) -> float:
    g = torch.as_tensor(g, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 5:
        raise ValueError(
            f"grid axis {d} must be a 1-d tensor with at least 5 nodes, got shape {tuple(g.shape)}"
        )
    steps = g.diff()
    h = steps.mean().item()
    if h <= 0 or (steps - h).abs().max().item() > 1e-9 * abs(h) + 1e-12:
        raise ValueError(f"grid axis {d} must be uniform and increasing")
    return h


class Grid(tuple):
    """A tensor-product grid: a tuple of 1-d coordinate tensors, and which axes are periodic.

    ``Grid([x, y], periodic=(True, False))`` is periodic in x and Dirichlet in y; a plain
    sequence of axes (or ``periodic=False``) has no periodic axis. Convention: a
    periodic axis lists the ``n`` nodes of one period without the duplicate endpoint,
    spacing ``L / n`` (e.g. ``torch.linspace(0, L, n + 1)[:-1]``): node ``n - 1``
    neighbours node 0.

    Raises:
        ValueError: ``periodic`` not a bool or one flag per axis.
    """

    periodic: tuple[bool, ...]

    def __new__(cls, axes: Sequence[torch.Tensor], periodic: bool | Sequence[bool] = False):
        self = super().__new__(cls, axes)
        flags = (periodic,) * len(self) if isinstance(periodic, bool) else tuple(periodic)
        if len(flags) != len(self) or not all(isinstance(p, (bool, np.bool_)) for p in flags):
            raise ValueError(
                f"periodic must be a bool or one bool per axis ({len(self)}), got {periodic!r}"
            )
        self.periodic = tuple(bool(p) for p in flags)
        return self

    def __repr__(self) -> str:
        return f"Grid({list(self)!r}, periodic={self.periodic})"


def periodic_axes(grid: Sequence[torch.Tensor]) -> tuple[bool, ...]:
    """Per axis, whether ``grid`` (a :class:`Grid` or a plain sequence: none) is periodic there."""
    return getattr(grid, "periodic", (False,) * len(grid))


def boundary_mask(
    shape: Sequence[int], width: int, periodic: Sequence[bool] | None = None
) -> np.ndarray:
    """Boolean ``(N,)`` mask of the nodes within ``width`` of a non-periodic boundary (C order)."""
    mask = np.zeros(shape, dtype=bool)
    for d, n in enumerate(shape):
        if periodic is not None and periodic[d]:
            continue
        idx = [slice(None)] * len(shape)
        idx[d] = np.r_[0:width, n - width : n]
        mask[tuple(idx)] = True
    return mask.reshape(-1)


@dataclass
class Stencils:
    """The pieces of a discretized operator before the coefficients are applied.

    ``terms`` holds one ``(coefficient, K)`` pair per term of the spec: ``K`` the
    ``(N, N)`` scipy CSR Kronecker product of 1-d difference matrices, the
    coefficient as the spec gives it (number, sympy expression, Coefficient).
    The matrix is ``sum_t diag(c_t(nodes)) K_t`` with identity rows on
    ``boundary`` (``(N,)`` bool: the nodes within ``width`` (1 or 2) of a
    non-periodic edge; ``periodic`` one flag per axis). Shared by
    :func:`discretize` (scipy values) and :func:`taylorc.prdp.assemble` (torch
    values, differentiable in the coefficients): one discretization code path.
    """

    shape: list[int]
    spacing: list[float]
    nodes: torch.Tensor
    names: list[str] | None
    terms: list[tuple[object, sp.csr_matrix]]
    boundary: np.ndarray
    width: int
    periodic: tuple[bool, ...]

    def interior_shape(self) -> tuple[int, ...]:
        """Nodes per axis of the unknowns once the Dirichlet layers are removed."""
        return tuple(n if p else n - 2 * self.width for n, p in zip(self.shape, self.periodic))


def stencils(
    spec,
    grid: Sequence[torch.Tensor],
    coords=None,
    params: dict | None = None,
    symbols: Sequence[str] = (),
) -> Stencils:
    """Parse ``spec`` and build its per-term difference matrices on ``grid`` (see :func:`discretize`;
    a :class:`Grid` says which axes are periodic).

    ``symbols`` are extra names allowed in coefficients (left symbolic in the
    terms, for a caller that supplies their values, like ``taylorc.prdp.assemble``).

    Raises:
        ValueError: as :func:`discretize`; a derivative w.r.t. one of ``symbols``.
    """
    names = split_coords(coords)
    extra = list(symbols)
    op: Operator = parse(spec, None if names is None else names + extra, params)
    if op.kind == "gradient":
        raise ValueError(
            "discretize takes scalar operators; the gradient is a vector of first derivatives"
        )
    D = len(grid)
    if names is not None and len(names) != D:
        raise ValueError(f"coords names {len(names)} coordinates but the grid has {D} axes")
    shape = [len(g) for g in grid]
    hs = [_uniform_spacing(g, d) for d, g in enumerate(grid)]
    nodes = grid_nodes([torch.as_tensor(g, dtype=torch.float64) for g in grid])
    periodic = periodic_axes(grid)
    terms = []
    width = 1
    for variables, c in op.terms(D, names).items():
        alpha = [0] * D
        for v in variables:
            if v in extra:
                raise ValueError(
                    f"{spec!r} differentiates u w.r.t. {v!r}, a coefficient name, not a coordinate"
                )
            alpha[resolve_dim(v, D, names, "discretize")] += 1
        width = max([width] + [2 for a, p in zip(alpha, periodic) if a > 2 and not p])
        K = sp.csr_matrix(np.ones((1, 1)))
        for d in range(D):
            K = sp.kron(K, difference_matrix(shape[d], alpha[d], hs[d], periodic[d]), format="csr")
        terms.append((c, K))
    mask = boundary_mask(shape, width, periodic)
    return Stencils(shape, hs, nodes, names, terms, mask, width, periodic)


def discretize(
    spec, grid: Sequence[torch.Tensor], coords=None, params: dict | None = None
) -> torch.Tensor:
    """The finite-difference matrix of a linear operator on a uniform tensor-product grid.

    Args:
        spec: any operator spec :func:`taylorc.compile` accepts (name,
            expression with ``coords``, sympy, Operator), except ``"gradient"``.
        grid: one 1-d uniform coordinate tensor per dimension (at least 5 nodes);
            a :class:`Grid` to make axes periodic (its convention: ``n`` nodes per
            period, spacing ``L / n``, no duplicate endpoint).
        coords: coordinate names, as for :func:`taylorc.compile`.
        params: names usable in expression coefficients.

    Returns:
        ``(N, N)`` float64 sparse CSR tensor, ``N = prod(len(g))``; nodes in
        ``meshgrid(indexing="ij")`` order. Rows of nodes within 1 (orders <= 2)
        or 2 (orders 3-4 in some non-periodic coordinate) nodes of a non-periodic
        boundary are identity rows (Dirichlet data); the others are second-order
        accurate, wrapping around periodic axes (no identity rows there).

    Raises:
        ValueError: non-uniform grid, a per-coordinate order above 4, a gradient
            spec, coords not matching the grid's dimension, or bad periodic flags.
    """
    st = stencils(spec, grid, coords, params)
    N = math.prod(st.shape)
    A = sp.csr_matrix((N, N))
    for c, K in st.terms:
        A = A + sp.diags(coefficient_values(c, st.nodes, st.names).numpy()) @ K
    A = A.tolil()
    for i in np.flatnonzero(st.boundary):
        A.rows[i], A.data[i] = [int(i)], [1.0]
    A = A.tocsr()
    A.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(np.int64)),
            torch.from_numpy(A.indices.astype(np.int64)),
            torch.from_numpy(A.data.astype(np.float64)),
            size=(N, N),
            check_invariants=True,
        )


def grid_nodes(grid: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ``(N, D)`` nodes of a tensor-product grid in the order :func:`discretize` uses."""
    axes = torch.meshgrid(*[torch.as_tensor(g) for g in grid], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], 1)
