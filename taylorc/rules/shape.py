"""Rule bodies of linear ops that move, reduce, pad or select entries (the table: :mod:`taylorc.rules.table`).

A linear op acts on every Taylor coefficient alike (Griewank & Walther, "Evaluating
Derivatives", 2008, ch. 13): each body applies the op to a coefficient whose leading
direction dims (``ctx.lead(k)``) shift the op's dims (``ctx.dim``).
"""

from __future__ import annotations

import torch

from .define import warn_nonsmooth
from .jet import Jet

aten = torch.ops.aten


def lead_dims(ctx, k, dims, ndim):
    """The dims ``dims`` of an ``ndim``-d value, shifted past coefficient k's leading dims."""
    return [ctx.dim(d, ndim, k) for d in dims]


def expand(ctx, k, c, x, size, implicit=False):
    """Coefficient ``c`` of ``expand(x, size)``: unsqueezed to ``len(size)`` dims, then expanded."""
    for _ in range(len(size) - x.ndim):
        c = aten.unsqueeze.default(c, ctx.nlead(k))
    return aten.expand.default(c, ctx.lead(k) + list(size))


def reduce(op_dim):
    """The coefficient body of a reduction ``op_dim(x, dims, keepdim)`` (sum, mean)."""

    def coef(ctx, k, c, x, dims=None, keepdim=False, dtype=None):
        dims = range(x.ndim) if not dims else dims
        kw = {} if dtype is None else {"dtype": dtype}
        return op_dim(c, lead_dims(ctx, k, dims, x.ndim), keepdim, **kw)

    return coef


def zeros_like_coef(ctx, k, jet):
    """Zeros shaped as coefficient k of ``jet``."""
    return aten.new_zeros.default(ctx.value, ctx.lead(k) + list(jet.shape))


def cat_rule(ctx, k, tensors, dim=0, *, stack=False):
    """Coefficient k of ``cat``/``stack``: zeros for the tensors that carry none."""
    coefs = [ctx.coef(t, k) if isinstance(t, Jet) else None for t in tensors]
    if all(c is None for c in coefs):
        return None
    coefs = [c if c is not None else zeros_like_coef(ctx, k, t) for c, t in zip(coefs, tensors)]
    ndim = tensors[0].ndim + (1 if stack else 0)
    op = aten.stack.default if stack else aten.cat.default
    return op(coefs, ctx.dim(dim, ndim, k))


def getitem_rule(ctx, k, x, i):
    """Coefficient k of output ``i`` of a multi-output op."""
    c = x[k] if isinstance(x, Jet) else None
    return None if c is None else c[i]


def gather(ctx, k, c, x, dim, index, sparse_grad=False):
    """Coefficient ``c`` of ``gather(x, dim, index)``: the index expanded over the leading dims."""
    idx = index[0] if isinstance(index, Jet) else index
    shape = list(ctx.out_shape)
    if ctx.nlead(k):
        idx = aten.expand.default(aten.unsqueeze.default(idx, 0), ctx.lead(k) + shape)
    return aten.gather.default(c, ctx.dim(dim, x.ndim, k), idx)


def repeat(ctx, k, c, x, repeats):
    """Coefficient ``c`` of ``repeat(x, repeats)``: the leading dims repeated once."""
    for _ in range(len(repeats) - x.ndim):
        c = aten.unsqueeze.default(c, ctx.nlead(k))
    return aten.repeat.default(c, [1] * ctx.nlead(k) + list(repeats))


def where_rule(ctx, k, cond, a, b):
    """Coefficient k of ``where(cond, a, b)``: the condition carries no Taylor terms."""
    ca, cb = ctx.coef(a, k), ctx.coef(b, k)
    if ca is None and cb is None:
        return None
    lead_shape = ctx.lead(k) + ctx.out_shape
    ca = ca if ca is not None else aten.new_zeros.default(ctx.value, lead_shape)
    cb = cb if cb is not None else aten.new_zeros.default(ctx.value, lead_shape)
    return aten.where.self(cond[0] if isinstance(cond, Jet) else cond, ca, cb)


def extremum(op_index):
    """amax / amin: the coefficient of the selected entry (exact a.e.; warns at order >= 2)."""

    def rule(ctx, k, x, dim=(), keepdim=False):
        dims = list(dim) if dim else list(range(x.ndim))
        if len(dims) != 1:
            raise NotImplementedError(
                f"{ctx.node.target} over several dims: reduce one dim at a time"
            )
        warn_nonsmooth(ctx, "derivatives follow the selected entry")
        d = dims[0] % x.ndim
        idx = ctx.cache.setdefault("index", op_index(x[0], d, True))
        c = x[k]
        if c is None:
            return None
        if ctx.nlead(k):
            shape = list(x.shape)
            shape[d] = 1
            idx = aten.expand.default(aten.unsqueeze.default(idx, 0), ctx.lead(k) + shape)
        out = aten.gather.default(c, d + ctx.nlead(k), idx)
        return out if keepdim else aten.squeeze.dims(out, [d + ctx.nlead(k)])

    return rule


def convolution(ctx, k, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    """Coefficient k of a convolution, linear in x: directions folded into the batch.

    Raises:
        NotImplementedError: a weight that depends on the coordinates."""
    if isinstance(w, Jet) and not w.is_constant:
        raise NotImplementedError("convolution whose weight depends on the coordinates")
    c = x[k]
    if c is None:
        return None
    n = ctx.nlead(k)
    if n:
        c = aten.reshape.default(c, [-1] + list(x.shape[1:]))
    out = aten.convolution.default(
        c,
        w[0] if isinstance(w, Jet) else w,
        None,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups,
    )
    return aten.reshape.default(out, ctx.lead(k) + ctx.out_shape) if n else out


def avg_pool2d(ctx, k, c, x, *args, **kwargs):
    # linear and per plane: every leading dim (directions, batch, channels) folds into one
    """Coefficient ``c`` of ``avg_pool2d``: every leading dim folded into the planes."""
    h, w = x.shape[-2:]
    out = aten.avg_pool2d.default(aten.reshape.default(c, [-1, h, w]), *args, **kwargs)
    return aten.reshape.default(out, ctx.lead(k) + ctx.out_shape)


def max_pool2d_rule(ctx, k, x, *args, **kwargs):
    """max pool: the coefficients of the selected entry (torch's flat per-plane indices)."""
    warn_nonsmooth(ctx, "derivatives follow the selected entry")
    c = x[k]
    if c is None:
        return None, None
    lead, shape = ctx.lead(k), ctx.out_shape
    flat = aten.reshape.default(c, lead + list(x.shape[:-2]) + [x.shape[-2] * x.shape[-1]])
    plane = shape[:-2] + [shape[-2] * shape[-1]]
    idx = aten.reshape.default(ctx.value[1], [1] * len(lead) + plane)
    idx = aten.expand.default(idx, lead + plane)
    return aten.reshape.default(aten.gather.default(flat, -1, idx), lead + shape), None
