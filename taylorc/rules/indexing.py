"""Rules of writes, scatters and cumulative ops (the table: :mod:`taylorc.rules.table`).

Functional capture (:mod:`taylorc.capture`) turns ``y[:, 3:5] = v``, ``y[:, idx] = v``,
``y += b`` and ``index_add`` into ``slice_scatter``, ``select_scatter``, ``index_put``,
``copy`` and ``add``. Each scatter is linear jointly in the tensor written into and the
values written (the indices are constants), so coefficient k of the result is the same
scatter applied to the coefficients k of both operands, with zeros for an operand that
carries no Taylor terms (Griewank & Walther, "Evaluating Derivatives", 2008, ch. 13:
linear ops act on every Taylor coefficient alike).
"""

from __future__ import annotations

import torch
import torch.fx

from ..errors import UnsupportedOperatorError
from .define import propagate_composite, warn_nonsmooth
from .jet import Jet

aten = torch.ops.aten


def coef_or_zeros(ctx, k: int, x, shape) -> object:
    """Coefficient k of ``x`` (unaligned: leading shape ``ctx.lead(k)``), zeros when it has none."""
    c = x[k] if isinstance(x, Jet) else None
    if c is not None:
        return c
    # scatters take operands of the output's dtype
    return aten.new_zeros.default(ctx.value, ctx.lead(k) + list(shape), dtype=ctx.out_val.dtype)


def _shape(x) -> tuple[int, ...]:
    return x.shape if isinstance(x, Jet) else ()


def _has_terms(ctx, k, *xs) -> bool:
    return any(isinstance(x, Jet) and x[k] is not None for x in xs)


def scatter_rule(op, nargs_before_src: int):
    """``op(self, *args, src, *rest)`` with a dim at ``args[0]`` (shifted past the directions)."""

    def rule(ctx, k, base, *args, **kwargs):
        src = args[nargs_before_src - 1]
        if not _has_terms(ctx, k, base, src):
            return None
        cb = coef_or_zeros(ctx, k, base, base.shape)
        cs = coef_or_zeros(ctx, k, src, _shape(src))
        rest = list(args)
        rest[nargs_before_src - 1] = cs
        if op is aten.diagonal_scatter.default:
            offset, d1, d2 = (list(rest[1:]) + [0, 0, 1])[:3]
            return op(cb, cs, offset, ctx.dim(d1, base.ndim, k), ctx.dim(d2, base.ndim, k))
        if len(rest) > nargs_before_src:
            rest[nargs_before_src] = ctx.dim(rest[nargs_before_src], base.ndim, k)
        return op(cb, *rest, **kwargs)

    return rule


def copy_rule(ctx, k, base, src, non_blocking=False):
    """Coefficient k of ``copy(base, src)``: src's, broadcast and cast to the output's dtype."""
    c = ctx.coef(src, k)
    if c is None:
        return None  # every element of base is overwritten
    c = ctx.broadcast(c, k, _shape(src))
    source = ctx.node.args[1]
    if source.meta["val"].dtype != ctx.out_val.dtype:
        c = aten._to_copy.default(c, dtype=ctx.out_val.dtype)
    return c


def _lead_to_end(c, n: int, ndim: int):
    """Move the n leading direction dims of a coefficient behind its ndim source dims."""
    return c if n == 0 else aten.permute.default(c, list(range(n, n + ndim)) + list(range(n)))


def _lead_to_front(c, n: int, ndim: int):
    return c if n == 0 else aten.permute.default(c, list(range(ndim, ndim + n)) + list(range(ndim)))


def index_put_rule(ctx, k, base, indices, values, accumulate=False):
    """Coefficient k of ``index_put``: the same write on both operands' coefficients."""
    if not _has_terms(ctx, k, base, values):
        return None
    n = ctx.nlead(k)
    # the direction dims go last: advanced indices then address the same dims as in the
    # value, and values broadcast against the indexed region from the right as before
    cb = _lead_to_end(coef_or_zeros(ctx, k, base, base.shape), n, base.ndim)
    cv = _lead_to_end(coef_or_zeros(ctx, k, values, _shape(values)), n, len(_shape(values)))
    idx = [i[0] if isinstance(i, Jet) else i for i in indices]
    out = aten.index_put.default(cb, idx, cv, accumulate)
    return _lead_to_front(out, n, base.ndim)


def _expanded_index(ctx, k, index):
    idx = index[0] if isinstance(index, Jet) else index
    shape = list(index.shape if isinstance(index, Jet) else idx.shape)
    n = ctx.nlead(k)
    if n:
        idx = aten.expand.default(aten.reshape.default(idx, [1] * n + shape), ctx.lead(k) + shape)
    return idx


def scatter_src_rule(op):
    """The rule of ``scatter_add``/``scatter.src``/``scatter_reduce`` (sum, mean; amax and amin through :func:`scatter_extremum_identity`).

    The rule raises UnsupportedOperatorError for other reductions."""

    def rule(ctx, k, base, dim, index, src, *rest, **kwargs):
        reduce = rest[0] if rest else kwargs.get("reduce", "sum")
        if op is aten.scatter_reduce.two and reduce in ("amax", "amin"):
            warn_nonsmooth(ctx, "derivatives follow the selected entries")
            return propagate_composite(
                ctx, k, _scatter_extremum_identity, (base, dim, index, src, *rest), kwargs
            )
        if op is aten.scatter_reduce.two and reduce not in ("sum", "mean"):
            raise UnsupportedOperatorError(
                f"no Taylor rule for the ATen op {ctx.node.target} with reduce={reduce!r} "
                f"(graph node '{ctx.node.name}'): only 'sum', 'mean', 'amax' and 'amin' have "
                "Taylor rules"
            )
        if not _has_terms(ctx, k, base, src):
            return None
        cb = coef_or_zeros(ctx, k, base, base.shape)
        cs = coef_or_zeros(ctx, k, src, _shape(src))
        d = ctx.dim(dim, base.ndim, k)
        return op(cb, d, _expanded_index(ctx, k, index), cs, *rest, **kwargs)

    return rule


def _scatter_extremum_identity(base, dim, index, src, reduce, *, include_self=True):
    """scatter_reduce amax/amin as the mean of the entries that attain the result.

    The winners are found on the values (comparisons carry no Taylor terms); ties
    share equally, as torch's gradient does. Both scatters are linear in their values.
    """
    src = src[tuple(slice(0, n) for n in index.shape)]  # torch reads src where index is
    out = torch.scatter_reduce(base, dim, index, src, reduce, include_self=include_self)
    won_src = (src == out.gather(dim, index)).to(base.dtype)
    won_base = base == out
    if not include_self:  # base takes part only where nothing is scattered
        hit = torch.zeros_like(base).scatter_add(dim, index, torch.ones_like(src)) > 0
        won_base = won_base & hit.logical_not()
    won_base = won_base.to(base.dtype)
    count = won_base + torch.zeros_like(base).scatter_add(dim, index, won_src)
    total = base * won_base + torch.zeros_like(base).scatter_add(dim, index, src * won_src)
    return total / count


def scatter_value_rule(ctx, k, base, dim, index, value):
    """Coefficient k of ``scatter(base, dim, index, value)``: base's with zeros scattered."""
    c = base[k] if isinstance(base, Jet) else None
    if c is None:
        return None
    return aten.scatter.value(c, ctx.dim(dim, base.ndim, k), _expanded_index(ctx, k, index), 0.0)


def complex_rule(ctx, k, re, im):
    """Coefficient k of ``complex(re, im)``: the complex of the coefficients (zeros for a missing one)."""
    if not _has_terms(ctx, k, re, im):
        return None
    cr = ctx.broadcast(ctx.coef(re, k), k, _shape(re))
    ci = ctx.broadcast(ctx.coef(im, k), k, _shape(im))
    cr = cr if cr is not None else aten.zeros_like.default(ci)
    ci = ci if ci is not None else aten.zeros_like.default(cr)
    return aten.complex.default(cr, ci)


# -- cumulative ops -----------------------------------------------------------------------


def cumprod_identity(x, dim, dtype=None):
    """Running products along ``dim``, one pairwise product per entry (Leibniz along the dim)."""
    x = x if dtype is None else x.to(dtype)
    parts = [x.select(dim, 0)]
    for i in range(1, x.shape[dim]):
        parts.append(parts[-1] * x.select(dim, i))
    return torch.stack(parts, dim)


def cumulative_extremum(ctx, k, x, dim):
    """Coefficient k of ``cummax``/``cummin``: the running extremum's entries (a.e.)."""
    warn_nonsmooth(ctx, "derivatives follow the running extremum's entry")
    c = x[k]
    if c is None:
        return None
    idx = ctx.cache.setdefault("index", ctx.value[1])
    n = ctx.nlead(k)
    if n:
        idx = aten.expand.default(
            aten.reshape.default(idx, [1] * n + list(x.shape)), ctx.lead(k) + list(x.shape)
        )
    return aten.gather.default(c, ctx.dim(dim, x.ndim, k), idx), None


# -- advanced indexing, logcumsumexp ------------------------------------------------------


def index_rule(ctx, k, x, indices):
    """x[idx0, :, idx1, ...] (advanced indexing): linear in x, the indices constant."""
    masks = [
        i
        for i in ctx.node.args[1]
        if isinstance(i, torch.fx.Node) and i.meta["val"].dtype in (torch.bool, torch.uint8)
    ]
    if masks:
        raise UnsupportedOperatorError(
            f"no Taylor rule for the ATen op {ctx.node.target} with a boolean mask (graph node "
            f"'{ctx.node.name}'): its output size depends on the mask's values; index with "
            "integer positions instead (mask.nonzero() outside the model)"
        )
    c = x[k] if isinstance(x, Jet) else None
    if c is None:
        return None
    n = ctx.nlead(k)
    # the direction dims go last, where indexing leaves them alone: whether torch puts the
    # indexed dims in place or in front (non-adjacent indices), they stay behind the result
    idx = [i[0] if isinstance(i, Jet) else i for i in indices]
    out = aten.index.Tensor(_lead_to_end(c, n, x.ndim), idx)
    return _lead_to_front(out, n, ctx.out_ndim)


def logcumsumexp_identity(x, dim):
    # log sum_{j<=i} exp(x_j) = m + log cumsum(exp(x - m)) for any m constant along dim:
    # the max shift cancels exactly (quiet), as in softmax
    """``m + log cumsum exp(x - m)`` with m the max along ``dim`` (the shift cancels)."""
    m = x.amax(dim, keepdim=True)
    return torch.log(torch.cumsum(torch.exp(x - m), dim)) + m
