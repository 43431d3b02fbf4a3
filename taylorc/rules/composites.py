"""Identities of composite ops over registered ops (the table: :mod:`taylorc.rules.table`).

Each identity is traced to ATen and the jets propagate through the trace
(:func:`~taylorc.rules.define.def_comp`): normalisations, softmax, norms, products,
variances, distances.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedOperatorError
from .define import propagate_composite

aten = torch.ops.aten


def layer_norm_identity(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``native_layer_norm``: ``((x - mean) rsqrt(var + eps)) * w + b``, with mean and rstd."""
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    xc = x - mean
    rstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)
    out = xc * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def softmax_identity(x, dim, half_to_float=False):
    """softmax as ``exp(x - max) / sum`` (the max shift cancels exactly)."""
    e = torch.exp(x - x.amax(dim, keepdim=True))  # the shift cancels exactly (see def_comp's quiet)
    return e / e.sum(dim, keepdim=True)


def log_softmax_identity(x, dim, half_to_float=False):
    """log softmax as ``(x - max) - log sum exp(x - max)``."""
    z = x - x.amax(dim, keepdim=True)
    return z - torch.log(torch.exp(z).sum(dim, keepdim=True))


def vector_norm_identity(x, ord=2, dim=None, keepdim=False, dtype=None):
    """The 2-norm ``sqrt(sum x^2)`` over ``dim``.

    Raises:
        NotImplementedError: ``ord`` other than 2 (not smooth)."""
    if ord != 2:
        raise NotImplementedError(f"linalg.vector_norm with ord={ord}: only the 2-norm is smooth")
    return torch.sqrt(
        (x * x).sum(dim if dim is not None else list(range(x.dim())), keepdim=keepdim)
    )


def batch_norm_eval_identity(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """Eval-mode batch norm: the affine map per channel from the running statistics.

    Raises:
        NotImplementedError: training mode (couples the batch rows)."""
    if training:  # the batch check rejects it before any rule runs
        raise NotImplementedError("batch norm in training mode couples the batch rows")
    shape = [1, -1] + [1] * (x.dim() - 2)
    out = (x - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out, running_mean, running_var


def prod_identity(x, dim=None, keepdim=False, *, dtype=None):
    """prod along one dim (all elements when dim is None) as a tree of pairwise products.

    No exp(sum(log x)): that breaks at zero and negative entries; Leibniz through
    the ceil(log2 n) levels of products is exact everywhere.
    """
    x = x if dtype is None else x.to(dtype)
    if dim is None:
        x, d = x.reshape(-1), 0
    else:
        d = dim % x.dim()
    while x.shape[d] > 1:
        n = x.shape[d]
        h = n // 2
        y = x.narrow(d, 0, h) * x.narrow(d, h, h)
        if n % 2:  # the odd last entry joins the first pair
            head = y.narrow(d, 0, 1) * x.narrow(d, n - 1, 1)
            y = torch.cat([head, y.narrow(d, 1, h - 1)], d)
        x = y
    if dim is None:
        return x.reshape(())
    return x if keepdim else x.squeeze(d)


def var_identity(x, dim=None, *, correction=None, keepdim=False):
    """var = sum((x - mean)^2) / (N - correction) over the dims (all when dim is None or [])."""
    dims = list(range(x.dim())) if not dim else [d % x.dim() for d in dim]
    n = 1
    for d in dims:
        n *= x.shape[d]
    c = 1 if correction is None else correction
    xc = x - x.mean(dims, keepdim=True)
    return (xc * xc).sum(dims, keepdim=keepdim) / (n - c)


def var_mean_identity(x, dim=None, *, correction=None, keepdim=False):
    """``(var, mean)`` as ``aten.var_mean.correction`` returns them."""
    dims = list(range(x.dim())) if not dim else list(dim)
    return (
        var_identity(x, dim, correction=correction, keepdim=keepdim),
        x.mean(dims, keepdim=keepdim),
    )


def group_norm_identity(x, weight, bias, N, C, HxW, group, eps):
    """(x - mean) rsqrt(var + eps) over each group of C/group channels, then the affine map."""
    xg = x.reshape(N, group, -1)
    mean = xg.mean(-1, keepdim=True)
    xc = xg - mean
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    out = (xc * rstd).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out, mean.reshape(N, group), rstd.reshape(N, group)


def cdist_identity(x1, x2, p=2.0, compute_mode=None):
    """||x1_i - x2_j||_p over the last dim, from the differences (not the mm expansion)."""
    d = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    if p == 2:
        return torch.sqrt((d * d).sum(-1))
    if p == float("inf"):
        return d.abs().amax(-1)
    return (d.abs() ** p).sum(-1) ** (1.0 / p)


def cdist_rule(ctx, k, x1, x2, p, compute_mode=None):
    """Coefficient k of ``cdist(x1, x2, p)`` through :func:`cdist_identity`.

    Raises:
        UnsupportedOperatorError: ``p <= 0`` (not differentiable)."""
    if p <= 0:
        raise UnsupportedOperatorError(
            f"no Taylor rule for the ATen op {ctx.node.target} with p={p} (graph node "
            f"'{ctx.node.name}'): a count of nonzeros or a min is not differentiable; use p > 0"
        )
    return propagate_composite(ctx, k, cdist_identity, (x1, x2, p, compute_mode), {})
