"""Nested automatic differentiation with torch.func: the reference (``method="nested"``).

Independent of the Taylor machinery: Laplacians are traces of
``torch.func.hessian`` (forward-over-reverse), biharmonics the trace of the
Hessian of that trace, gradients ``jacrev``; other operators contract the full
derivative tensors (nested ``jacfwd``) with their expansion. Everything is
``vmap``-ed over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import hessian, jacfwd, jacrev, vmap

from .operators.spec import Biharmonic, Gradient, Laplacian, Operator, Value


def per_sample(model: Callable) -> Callable:
    """``f(x_i) = model(x_i[None])[0]``: the model on one sample of shape ``in``."""
    return lambda xi: model(xi.unsqueeze(0)).squeeze(0)


def _flat(f, in_shape):
    """f on flattened coordinates ``(D,)``."""
    return lambda v: f(v.reshape(in_shape))


def _trace(h, dims, D):
    # h: (*out, D, D)
    idx = torch.tensor(dims if dims is not None else range(D), device=h.device)
    return h.diagonal(dim1=-2, dim2=-1).index_select(-1, idx).sum(-1)


def laplacian_fn(f, D, dims=None):
    """Per-sample Laplacian ``sum_{i in dims} d^2 f / dx_i^2`` of ``f: (D,) -> (*out)``."""
    return lambda v: _trace(hessian(f)(v), dims, D)


def nested_term(model: Callable, op: Operator, x: torch.Tensor) -> torch.Tensor:
    """One operator by nested autograd.

    Args:
        model: maps ``(B, *in)`` to ``(B, *out)``.
        op: the operator.
        x: ``(B, *in)`` coordinates.

    Returns:
        ``(B, *out)`` (``(B, *out, D)`` for the gradient).
    """
    if isinstance(op, Value):
        return model(x)
    in_shape = x.shape[1:]
    D = math.prod(in_shape)
    f = _flat(per_sample(model), in_shape)
    xf = x.reshape(x.shape[0], D)
    if isinstance(op, Gradient):
        return vmap(jacrev(f))(xf)
    if isinstance(op, Laplacian):
        return vmap(laplacian_fn(f, D, op.dims))(xf)
    if isinstance(op, Biharmonic):
        lap = laplacian_fn(f, D, op.dims)
        return vmap(laplacian_fn(lap, D, op.dims))(xf)
    return vmap(lambda v: _contract_expansion(f, op, D, v))(xf)


def _contract_expansion(f, op, D, v):
    out = 0
    for k, terms in op.expansion(D).items():
        if k == 0:
            out = out + float(sum(terms.values())) * f(v)
            continue
        g = f
        for _ in range(k):
            g = jacfwd(g)
        T = g(v)  # (*out, D, ..., D)
        for direction, w in terms.items():
            d = torch.tensor(direction, dtype=v.dtype, device=v.device)
            t = T
            for _ in range(k):
                t = t @ d
            out = out + float(w) * t
    return out


def nested(model: Callable, ops: dict[str, Operator], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every operator in ``ops`` by nested autograd (one pass per operator)."""
    return {name: nested_term(model, op, x) for name, op in ops.items()}
