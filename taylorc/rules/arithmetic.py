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
    def rule(ctx, k, a, b, alpha=1):
        ca, cb = ctx.coef(a, k), ctx.coef(b, k)
        if ca is None or cb is None:
            jet, c, s = (a, ca, 1) if cb is None else (b, cb, sign * alpha)
            return ctx.broadcast(scale(c, s), k, jet.shape)
        return add(ca, scale(cb, sign * alpha))

    return rule


def matmul(a, b):
    return aten.matmul.default(a, b)


def matmul_rule(ctx, k, a, b):
    if min(a.ndim, b.ndim) < 2:
        # A 1-d operand changes matmul's meaning once a direction axis is added.
        return propagate_composite(ctx, k, lambda u, v: torch.ops.aten.matmul(u, v), (a, b), {})
    return leibniz(ctx, k, a, b, matmul)


def addmm_rule(ctx, k, bias, a, b, *, beta=1, alpha=1):
    prod = scale(leibniz(ctx, k, a, b, matmul), alpha)
    cb = scale(ctx.coef(bias, k), beta)
    if prod is None:
        return ctx.broadcast(cb, k, bias.shape) if cb is not None else None
    return add(prod, cb)


def div_rule(ctx, k, a, b):
    if not isinstance(b, Jet) or b.is_constant:
        c = ctx.coef(a, k)
        return None if c is None else aten.div.Tensor(c, ctx.coef(b, 0))
    return composite_div(ctx, k, a, b)


def composite_div(ctx, k, a, b):
    return propagate_composite(ctx, k, lambda u, v: u * torch.reciprocal(v), (a, b), {})
