"""Rule bodies of sums, products and quotients (the table: :mod:`taylorc.rules.table`).

Sums are linear; products follow Leibniz' rule ``y_k = sum_j C(k, j) a_j b_{k-j}``
(:func:`~taylorc.rules.jet.leibniz`); a quotient by a varying tensor is the product with
its reciprocal (Griewank & Walther, "Evaluating Derivatives", 2008, ch. 13).
"""

from __future__ import annotations

import torch

from .define import propagate_composite
from .jet import Jet, add, leibniz, scale

aten = torch.ops.aten


def add_rule(sign):
    """The rule of ``a + sign * alpha * b`` (``sign`` 1: add, -1: sub), broadcasting a lone operand."""

    def rule(ctx, k, a, b, alpha=1):
        ca, cb = ctx.coef(a, k), ctx.coef(b, k)
        if ca is None or cb is None:
            jet, c, s = (a, ca, 1) if cb is None else (b, cb, sign * alpha)
            return ctx.broadcast(scale(c, s), k, jet.shape)
        return add(ca, scale(cb, sign * alpha))

    return rule


def matmul(a, b):
    """``aten.matmul`` of two coefficients (broadcasts over the direction axis)."""
    return aten.matmul.default(a, b)


def matmul_rule(ctx, k, a, b):
    """Coefficient k of ``matmul(a, b)``: Leibniz, or the composite when an operand is 1-d."""
    if min(a.ndim, b.ndim) < 2:
        # A 1-d operand changes matmul's meaning once a direction axis is added.
        return propagate_composite(ctx, k, lambda u, v: torch.ops.aten.matmul(u, v), (a, b), {})
    return leibniz(ctx, k, a, b, matmul)


def addmm_rule(ctx, k, bias, a, b, *, beta=1, alpha=1):
    """Coefficient k of ``beta bias + alpha a @ b``: Leibniz over mm plus the bias's."""
    prod = scale(leibniz(ctx, k, a, b, matmul), alpha)
    cb = scale(ctx.coef(bias, k), beta)
    if prod is None:
        return ctx.broadcast(cb, k, bias.shape) if cb is not None else None
    return add(prod, cb)


def div_rule(ctx, k, a, b):
    """Coefficient k of ``a / b``: ``a_k / b_0`` for a constant b, else ``a * reciprocal(b)``."""
    if not isinstance(b, Jet) or b.is_constant:
        c = ctx.coef(a, k)
        return None if c is None else aten.div.Tensor(c, ctx.coef(b, 0))
    return composite_div(ctx, k, a, b)


def composite_div(ctx, k, a, b):
    """``a / b`` as ``a * reciprocal(b)`` through the composite rule."""
    return propagate_composite(ctx, k, lambda u, v: u * torch.reciprocal(v), (a, b), {})
