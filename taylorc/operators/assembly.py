"""Assembling operators from derivatives by multi-index: shared by ZCS, Stein and FuncLoop.

Given any way to get the derivative ``d^alpha u`` of a value u by multi-index alpha
(reverse mode through shift leaves in ZCS, Stein's identity, per-function autograd in
FuncLoop), :func:`assemble_terms` sums each linear operator's terms with its
coefficients; :class:`MultiIndexCache` computes each multi-index once from its closest
cached parent (the caching of DeepXDE's ``LazyGrad``, Leng et al. 2024);
:func:`lost_batch_axis` is the error where a coordinate-dependent coefficient needs the
points' output axis and the batch analysis lost it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..operators.spec import Gradient, Value, coefficient_values, is_constant, resolve_dim


def lost_batch_axis() -> ValueError:
    """The error for a coordinate-dependent coefficient when the points' output axis is unknown."""
    return ValueError(
        "a coordinate-dependent coefficient needs to know which output axis holds the "
        "collocation points, and the batch analysis lost track of it (a reshape merged it): "
        "keep the points' axis separate in the model's output"
    )


class MultiIndexCache:
    """Derivatives by multi-index, each computed once from its closest cached parent.

    ``children(q)`` returns the D first derivatives of a cached quantity ``q`` (one
    reverse pass gives all of them), so asking for ``u_xxt`` after ``u_xx`` costs one
    more pass, and the siblings of every computed index come for free. This is the
    caching of DeepXDE's ZCS ``LazyGrad`` (Leng et al. 2024) and of its ``jacobian``
    helpers.

    Args:
        root: the order-0 quantity.
        D: number of coordinates.
        children: ``q -> [dq/dx_0, ..., dq/dx_{D-1}]`` (None entries mean zero).
    """

    def __init__(self, root, D: int, children: Callable):
        self.D = D
        self.children = children
        self.cache: dict[tuple[int, ...], object] = {(0,) * D: root}

    def __call__(self, alpha: tuple[int, ...]):
        """The derivative with multi-index ``alpha`` (counts per coordinate); None when zero."""
        alpha = tuple(alpha)
        if alpha in self.cache:
            return self.cache[alpha]
        j = max(i for i, a in enumerate(alpha) if a > 0)
        parent = alpha[:j] + (alpha[j] - 1,) + alpha[j + 1 :]
        q = self(parent)
        kids = self.children(q) if q is not None else [None] * self.D
        for i, kid in enumerate(kids):
            self.cache[parent[:i] + (parent[i] + 1,) + parent[i + 1 :]] = kid
        return self.cache[alpha]


def multi_index(variables, D: int, coords=None) -> tuple[int, ...]:
    """Counts per coordinate of a term's variables, e.g. ``("x", "x", "t")`` -> ``(2, 1)``."""
    alpha = [0] * D
    for v in variables:
        alpha[resolve_dim(v, D, coords, "operator")] += 1
    return tuple(alpha)


def assemble_terms(derivative: Callable, u, ops, x, coords, axis: int) -> dict[str, torch.Tensor]:
    """Each operator from per-multi-index derivatives of u.

    Args:
        derivative: ``alpha -> d^alpha u`` shaped like u (None for zero).
        u: the value; x: the ``(N, D)`` coordinates, whose points lie on ``axis`` of u
            (None: unknown, which only constant coefficients tolerate).

    Raises:
        ValueError: a coordinate-dependent coefficient while ``axis`` is None.
    """
    D = x.shape[1]
    out = {}
    for name, op in ops.items():
        if isinstance(op, Value):
            out[name] = u
        elif isinstance(op, Gradient):
            unit = [tuple(int(i == j) for i in range(D)) for j in range(D)]
            out[name] = torch.stack([_zero_if_none(derivative(a), u) for a in unit], dim=-1)
        else:
            total = torch.zeros_like(u)
            for variables, c in op.terms(D, coords).items():
                d = _zero_if_none(derivative(multi_index(variables, D, coords)), u)
                if is_constant(c):
                    total = total + float(c) * d
                    continue
                if axis is None:
                    raise lost_batch_axis()
                shape = [1] * axis + [x.shape[0]] + [1] * (u.dim() - axis - 1)
                total = total + coefficient_values(c, x, coords).reshape(shape) * d
            out[name] = total
    return out


def _zero_if_none(t, like):
    return torch.zeros_like(like) if t is None else t
