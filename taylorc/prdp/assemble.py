"""Differentiable assembly: a spec string on a grid -> a :class:`SparseSystem` whose values are
torch functions of named coefficients (numbers, tensors on the grid, or networks kappa(x)).

The stencils are :func:`taylorc.operators.discretize.stencils` (the same second-order
central differences as :func:`taylorc.operators.discretize`); only the values are built
here, with torch, so that gradients reach the coefficients. This is what training
through a physics solver needs (Bhatia, Koehler, Thuerey, "Progressively Refined
Differentiable Physics", ICLR 2025, Sec. 3: the solver's matrix depends on the
parameters being learned).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import sympy
import torch

from ..operators.discretize import Grid, periodic_axes, stencils
from ..operators.parse import split_coords
from ..operators.spec import Coefficient
from .sparse import Pattern, SparseSystem

FORMS = ("full", "interior")


def _grid_key(grid) -> tuple:
    """Hashable float64 axes; a float32 ``linspace`` becomes the float64 one it rounds
    (its steps differ by rounding, which the uniformity check would reject)."""
    out = []
    for g in grid:
        g = torch.as_tensor(g)
        g64 = g.to(torch.float64)
        if g.dtype != torch.float64 and g.numel() > 1 and g.is_floating_point():
            even = torch.linspace(g64[0].item(), g64[-1].item(), len(g64), dtype=torch.float64)
            tol = 8 * torch.finfo(g.dtype).eps * g64.abs().max().item()
            g64 = even if (even - g64).abs().max().item() <= tol else g64
        out.append(tuple(g64.tolist()))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _structure(spec, grid_key, periodic: tuple, coords: tuple | None, names: tuple, params_key):
    """Pattern and per-term entry maps, cached: parsing and scipy work happen once per spec and grid."""
    grid = Grid([torch.tensor(g, dtype=torch.float64) for g in grid_key], periodic)
    st = stencils(spec, grid, None if coords is None else list(coords), dict(params_key), names)
    N = math.prod(st.shape)
    inner = ~st.boundary
    coo = []
    for c, K in st.terms:
        K = K.tocoo()
        keep = inner[K.row]
        coo.append((c, K.row[keep], K.col[keep], K.data[keep]))
    rows = np.concatenate([t[1] for t in coo] + [np.arange(N)])
    cols = np.concatenate([t[2] for t in coo] + [np.arange(N)])
    keys = np.unique(rows * N + cols)
    pattern = Pattern.from_coo(keys // N, keys % N, N, N)
    sorted_keys = pattern.row.numpy() * N + pattern.col.numpy()
    terms = [
        (c, torch.from_numpy(np.searchsorted(sorted_keys, r * N + cc)), torch.from_numpy(r), v)
        for c, r, cc, v in coo
    ]
    bnd = np.flatnonzero(st.boundary)
    bnd_pos = torch.from_numpy(np.searchsorted(sorted_keys, bnd * N + bnd))
    return st, pattern, terms, bnd_pos


def _coefficient(c, nodes, coords, values: Mapping[str, torch.Tensor], dtype) -> torch.Tensor:
    """A term's coefficient at the ``(N, D)`` nodes, ``(N,)`` or a scalar tensor, differentiable."""
    if isinstance(c, Coefficient) and c.fn is not None:
        v = c.fn(nodes)
        for i in c.index:
            v = v.select(1, i)
        return v.reshape(-1).to(dtype)
    expr = c.expr if isinstance(c, Coefficient) else sympy.sympify(c, rational=True)
    if not expr.free_symbols:
        return torch.tensor(float(expr), dtype=dtype, device=nodes.device)
    symbols = [sympy.Symbol(n) for n in list(coords) + list(values)]
    fn = sympy.lambdify(symbols, expr, modules="torch")
    v = fn(*nodes.unbind(1), *values.values())
    return torch.as_tensor(v, dtype=dtype, device=nodes.device)


def _coefficient_values(coefficients, nodes, shape, dtype) -> dict[str, torch.Tensor]:
    """Each named coefficient as an ``(N,)`` tensor (numbers broadcast later)."""
    out = {}
    N = nodes.shape[0]
    for name, v in coefficients.items():
        if callable(v) and not isinstance(v, torch.Tensor):
            v = v(nodes)
        v = torch.as_tensor(v, dtype=dtype, device=nodes.device)
        if v.dim() > 0:
            if v.numel() != N:
                raise ValueError(
                    f"coefficient {name!r} has {v.numel()} values ({tuple(v.shape)}) but the grid "
                    f"has {N} nodes {tuple(shape)}: give a number, a tensor of one value per node "
                    "(grid-shaped or flat), or a callable (N, D) -> (N,) or (N, 1)"
                )
            v = v.reshape(N)
        out[name] = v
    return out


def _infer_dtype(coefficients, dtype, device):
    for v in coefficients.values():
        if isinstance(v, torch.Tensor):
            return dtype or v.dtype, device or v.device
        if isinstance(v, torch.nn.Module):
            p = next(v.parameters(), None)
            if p is not None:
                return dtype or p.dtype, device or p.device
    return dtype or torch.float64, device or torch.device("cpu")


def assemble(
    spec,
    grid: Sequence[torch.Tensor],
    coords=None,
    coefficients: Mapping[str, object] | None = None,
    params: dict | None = None,
    form: str = "full",
    dtype: torch.dtype | None = None,
    device=None,
) -> SparseSystem:
    """The finite-difference matrix of ``spec`` on ``grid`` with differentiable values.

    Args:
        spec: an operator spec as for :func:`taylorc.operators.discretize`, e.g.
            ``"u - dt*k*(u_xx + u_yy)"``; names in ``coefficients`` may appear in
            coefficients of terms (never as derivative subscripts).
        grid: one uniform 1-d coordinate tensor per axis (>= 5 nodes each); a
            :class:`taylorc.operators.Grid` makes axes periodic (no Dirichlet rows
            there, wrapped stencils; ``n`` nodes per period, spacing ``L / n``).
        coords: the coordinate names (needed for expression specs), e.g. ``"x y"``.
        coefficients: ``{name: value}``; a value is a number, a tensor with one
            value per node (grid-shaped or ``(N,)``; may require grad), or a callable
            (e.g. an ``nn.Module`` kappa) mapping the ``(N, D)`` nodes to ``(N,)``
            or ``(N, 1)``, evaluated here (gradients reach its parameters).
        params: constant names for the spec (as for ``taylorc.compile``).
        form: ``"full"``: all ``N`` nodes, identity (Dirichlet) rows at the
            non-periodic boundary (``A u = f`` means ``u = f`` there; not symmetric
            unless every axis is periodic).
            ``"interior"``: the block ``A_II`` of the interior nodes (symmetric for
            a self-adjoint spec with constant or node-wise zeroth-order
            coefficients: what CG needs); use :meth:`SparseSystem.lift` for the
            right-hand side ``f_I - A_IB g_B`` and :meth:`SparseSystem.extend`.
        dtype: of the values; default from the tensor/network coefficients,
            else float64.
        device: of the values; default from the coefficients, else the CPU.

    Returns:
        :class:`SparseSystem` (``grid_shape`` the nodes of the unknowns, ``periodic``
        the grid's flags; ``coarsen`` re-assembles the same spec on every other node,
        for multigrid, where the grid and the orders allow it: :func:`_coarsener`).

    Raises:
        ValueError: a bad spec or grid (see ``discretize``), an unknown form, a
            coefficient with the wrong number of values, or a coefficient name used
            as a derivative subscript.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    coefficients = dict(coefficients or {})
    dtype, device = _infer_dtype(coefficients, dtype, device)
    rebuild = functools.partial(
        assemble, spec, coords=coords, params=params, form=form, dtype=dtype, device=device
    )
    full, st = _full_system(spec, grid, coords, coefficients, params, dtype, device, rebuild)
    return full if form == "full" else interior_block(full, st.boundary, st.interior_shape())


def _full_system(spec, grid, coords, coefficients: dict, params, dtype, device, rebuild):
    """The full-form system of :func:`assemble` (every node, identity rows at the Dirichlet
    boundary) and the stencils it is built from; ``rebuild(grid, coefficients=...)``
    assembles the same spec on another grid (multigrid's coarsening)."""
    names = split_coords(coords)
    st, pattern, terms, bnd_pos = _structure(
        spec,
        _grid_key(grid),
        periodic_axes(grid),
        None if names is None else tuple(names),
        tuple(coefficients),
        tuple(sorted((params or {}).items())),
    )
    nodes = st.nodes.to(device=device, dtype=dtype)
    named = _coefficient_values(coefficients, nodes, st.shape, dtype)
    coord_names = names or [f"x{i}" for i in range(len(st.shape))]
    values = torch.zeros(pattern.col.numel(), dtype=dtype, device=device)
    for c, pos, rows, data in terms:
        coef = _coefficient(c, nodes, coord_names, named, dtype)
        rows = rows.to(device)
        scale = coef[rows] if coef.dim() > 0 else coef
        values = values.index_add(0, pos.to(device), scale * torch.as_tensor(data).to(values))
    values = values.index_add(
        0, bnd_pos.to(device), torch.ones(len(bnd_pos), dtype=dtype, device=device)
    )
    # multigrid's transfers assume one Dirichlet layer (orders <= 2)
    coarsen = None if st.width > 1 else _coarsener(rebuild, grid, coefficients, st)
    full = SparseSystem(pattern.to(device), values, tuple(st.shape), coarsen, periodic=st.periodic)
    return full, st


def _coarsener(rebuild: Callable, grid, coefficients, st) -> Callable | None:
    """``() -> SparseSystem`` on every other node, or None when an axis cannot be halved
    (``2m + 1 -> m + 1`` nodes on a Dirichlet axis, ``2m -> m`` on a periodic one, m >= 5:
    an odd number >= 9 of nodes on every non-periodic axis, an even number >= 10 on every
    periodic one). Derivatives of order > 2 on a non-periodic axis have no coarsening
    (:func:`assemble` passes none: multigrid's transfers assume one Dirichlet layer)."""
    shape = st.shape
    if any(n % 2 != (0 if p else 1) or (n + 1) // 2 < 5 for n, p in zip(shape, st.periodic)):
        return None

    def coarse_value(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            g = v.reshape(shape)
            return g[tuple(slice(None, None, 2) for _ in shape)]
        return v

    def coarsen():
        coarse_grid = Grid(
            [torch.as_tensor(g, dtype=torch.float64)[::2] for g in _grid_key(grid)], st.periodic
        )
        return rebuild(
            coarse_grid, coefficients={k: coarse_value(v) for k, v in coefficients.items()}
        )

    return coarsen


def interior_block(full: SparseSystem, boundary: np.ndarray, shape: tuple) -> SparseSystem:
    """``A_II`` (unknowns on a ``shape`` grid) of a full-form system with its lifting block
    ``A_IB`` (see :func:`assemble`)."""
    p = full.pattern
    N = full.n
    bnd = torch.from_numpy(boundary).to(p.row.device)
    inner_idx = torch.nonzero(~bnd)[:, 0]
    bnd_idx = torch.nonzero(bnd)[:, 0]
    new = torch.full((N,), -1, dtype=torch.int64, device=p.row.device)
    new[inner_idx] = torch.arange(len(inner_idx), device=p.row.device)
    new_b = torch.full((N,), -1, dtype=torch.int64, device=p.row.device)
    new_b[bnd_idx] = torch.arange(len(bnd_idx), device=p.row.device)
    row_in = ~bnd[p.row]
    ii = torch.nonzero(row_in & ~bnd[p.col])[:, 0]
    ib = torch.nonzero(row_in & bnd[p.col])[:, 0]
    pat_ii = Pattern.from_coo(
        new[p.row[ii]].cpu().numpy(), new[p.col[ii]].cpu().numpy(), len(inner_idx), len(inner_idx)
    ).to(p.row.device)
    pat_ib = Pattern.from_coo(
        new[p.row[ib]].cpu().numpy(), new_b[p.col[ib]].cpu().numpy(), len(inner_idx), len(bnd_idx)
    ).to(p.row.device)
    # from_coo sorts row-major like the full pattern, so the gathered order matches
    return SparseSystem(
        pat_ii,
        full.values[ii],
        shape,
        full.coarsen,
        interior=True,
        lifting=(full.values[ib], pat_ib, inner_idx, bnd_idx),
        periodic=full.periodic,
    )
