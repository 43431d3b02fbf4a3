"""Nested automatic differentiation with torch.func: the reference (``method="nested"``).

Independent of the Taylor machinery: Laplacians are traces of
``torch.func.hessian`` (forward-over-reverse), biharmonics the trace of the
Hessian of that trace, gradients ``jacrev``; other operators read the entries
of the full derivative tensors (nested ``jacfwd``) named by their multi-indices
(no interpolation weights), times coefficients evaluated with
``sympy.lambdify``. Everything is ``vmap``-ed over the batch (a loop over
the samples where vmap cannot batch in-place writes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import hessian, jacfwd, jacrev
from torch.func import vmap as _vmap

from ..operators.assembly import MultiIndexCache, assemble_terms
from ..operators.spec import (
    Biharmonic,
    Gradient,
    Laplacian,
    Operator,
    Value,
    coefficient_values,
    resolve_dim,
)


def vmap(g: Callable) -> Callable:
    """``torch.func.vmap(g)``, or a loop over the samples where vmap cannot batch the model.

    vmap refuses in-place writes of batched values into tensors the model creates
    (``z = torch.zeros(B, 3); z[:, 0] = u``); autograd on one sample at a time handles them.
    """

    def run(xf):
        try:
            return _vmap(g)(xf)
        except RuntimeError as e:
            if "vmap" not in str(e):
                raise
            return torch.stack([g(xi) for xi in xf])

    return run


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


def nested_term(model: Callable, op: Operator, x: torch.Tensor, coords=None) -> torch.Tensor:
    """One operator by nested autograd.

    Args:
        model: maps ``(B, *in)`` to ``(B, *out)``.
        op: the operator.
        x: ``(B, *in)`` coordinates.
        coords: coordinate names (for operators that name coordinates).

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
        dims = None if op.dims is None else [resolve_dim(d, D, coords, op.name) for d in op.dims]
        return vmap(laplacian_fn(f, D, dims))(xf)
    if isinstance(op, Biharmonic):
        dims = None if op.dims is None else [resolve_dim(d, D, coords, op.name) for d in op.dims]
        lap = laplacian_fn(f, D, dims)
        return vmap(laplacian_fn(lap, D, dims))(xf)
    return _from_terms(f, op.terms(D, coords), D, coords, xf)


def _from_terms(f, terms, D, coords, xf):
    """sum_alpha c_alpha(x) d^alpha u from the full derivative tensors (nested jacfwd), entry by entry."""
    tensors = {}
    out = 0
    for variables, c in terms.items():
        k = len(variables)
        if k not in tensors:
            g = f
            for _ in range(k):
                g = jacfwd(g)
            tensors[k] = vmap(g)(xf)  # (B, *out, D, ..., D)
        T = tensors[k]
        idx = [resolve_dim(v, D, coords, "reference") for v in variables]
        entry = T[(Ellipsis, *idx)] if idx else T
        c_x = coefficient_values(c, xf, coords).reshape([xf.shape[0]] + [1] * (entry.dim() - 1))
        out = out + c_x * entry
    return out


def nested(
    model: Callable, ops: dict[str, Operator], x: torch.Tensor, coords=None
) -> dict[str, torch.Tensor]:
    """Every operator in ``ops`` by nested autograd (one pass per operator)."""
    return {name: nested_term(model, op, x, coords) for name, op in ops.items()}


def func_loop(
    model: Callable, ops: dict[str, Operator], args: tuple, wrt: int, coords=None
) -> dict[str, torch.Tensor]:
    """Operator terms of a many-functions model by a loop over the functions (FuncLoop).

    The baseline of Leng et al. (2024), Sec. 2: for each of the M functions the
    coordinates ``(N, D)`` are a reverse-mode leaf and every derivative is a
    ``torch.autograd.grad`` of the summed lower one ("many roots, many leaves").

    Args:
        model: ``model(*args) -> (M, N)``; every argument but ``args[wrt]`` is
            batched over the M functions along dim 0.
        ops: the operators (value, gradient, linear).
        args: the call's arguments; ``args[wrt]`` are the ``(N, D)`` coordinates.
        wrt: index of the coordinates.
        coords: coordinate names.

    Returns:
        name -> ``(M, N)`` (the gradient ``(M, N, D)``), with graphs for training.

    Raises:
        ValueError: the model's output is not ``(M, N)``.
    """
    x0 = args[wrt]
    M = next(a.shape[0] for i, a in enumerate(args) if i != wrt)
    per_function = []
    for m in range(M):
        x = x0.detach().requires_grad_()
        u = model(*[x if i == wrt else a[m : m + 1] for i, a in enumerate(args)])
        if u.dim() != 2:
            raise ValueError(f"func_loop needs a model returning (M, N), got {tuple(u.shape)}")
        per_function.append(point_leaf_terms(u[0], x, ops, coords))
    return {k: torch.stack([t[k] for t in per_function]) for k in ops}


def point_leaf_terms(u: torch.Tensor, x: torch.Tensor, ops, coords=None) -> dict[str, torch.Tensor]:
    """Operator terms of ``u (P,)`` whose entry p depends on the leaf row ``x[p] (D,)`` only.

    Every derivative is ``torch.autograd.grad`` of the summed lower one w.r.t. the
    ``(P, D)`` leaf ("many roots, many leaves"); FuncLoop calls it per function,
    DataVect (Leng et al. 2024) once on the ``(M * N, D)`` aligned points.
    """

    def children(q):
        g = torch.autograd.grad(q.sum(), x, create_graph=True, allow_unused=True)[0]
        return [None if g is None else g[:, j] for j in range(x.shape[1])]

    return assemble_terms(MultiIndexCache(u, x.shape[1], children), u, ops, x, coords, axis=0)
