"""Rule bodies of activations and piecewise elementwise ops (the table: :mod:`taylorc.rules.table`).

Smooth activations are derivative tables (:mod:`taylorc.rules.derivatives`); piecewise
ones give each piece's derivatives (:func:`~taylorc.rules.define.piecewise`) and are exact
almost everywhere, with a warning at order >= 2.
"""

from __future__ import annotations

import sympy
import torch

from .define import nonsmooth, propagate_composite
from .derivatives import DerivativeTable, X

aten = torch.ops.aten


def gelu_table(approximate="none"):
    """GELU's derivative table: the erf form, or the tanh approximation's (``approximate``)."""
    if approximate == "tanh":
        c = sympy.sqrt(2 / sympy.pi)
        return DerivativeTable(
            expr=X / 2 * (1 + sympy.tanh(c * (X + sympy.Rational(44715, 1000000) * X**3)))
        )
    return DerivativeTable(expr=X / 2 * (1 + sympy.erf(X / sympy.sqrt(2))))


def elu_pieces(ctx, x0, alpha=1.0, scale=1.0, input_scale=1.0):
    """ELU's pieces ``(x0 > 0, [., scale], [., scale alpha s^m e^(s x0)])`` for :func:`~taylorc.rules.define.piecewise`."""
    e = aten.exp.default(aten.mul.Tensor(x0, float(input_scale)))
    neg = [None] + [
        aten.mul.Tensor(e, float(scale * alpha * input_scale**m)) for m in range(1, ctx.K + 1)
    ]
    return aten.gt.Scalar(x0, 0.0), [None, float(scale)], neg


def leaky_pieces(ctx, x0, negative_slope=0.01):
    """Leaky ReLU's pieces ``(x0 > 0, slope 1, slope negative_slope)``."""
    return aten.gt.Scalar(x0, 0.0), [None, 1.0], [None, float(negative_slope)]


def clamp_pieces(ctx, x0, lo=None, hi=None):
    """clamp's pieces: slope 1 strictly inside ``(lo, hi)``, 0 outside."""
    inside = aten.full_like.default(x0, 1.0)
    if lo is not None:
        inside = aten.mul.Tensor(inside, aten.gt.Scalar(x0, float(lo)))
    if hi is not None:
        inside = aten.mul.Tensor(inside, aten.lt.Scalar(x0, float(hi)))
    return aten.gt.Scalar(inside, 0.5), [None, 1.0], [None, 0.0]


_real_abs = nonsmooth(lambda x, y: aten.sign.default(x))


def abs_rule(ctx, k, x):
    """Coefficient k of ``|x|``: ``sign(x)`` times x's (a.e.); of a complex x, ``sqrt(re^2 + im^2)``."""
    if ctx.node.args[0].meta["val"].is_complex():
        # |z| is not holomorphic: sqrt(re^2 + im^2) of the real and imaginary jets
        return propagate_composite(
            ctx, k, lambda z: torch.sqrt(torch.real(z) ** 2 + torch.imag(z) ** 2), (x,), {}
        )
    return _real_abs(ctx, k, x)


def clamp_tensor_identity(x, lo=None, hi=None):
    # clamp(x, lo, hi) = min(max(x, lo), hi) (torch's order: hi wins when lo > hi); each
    # where picks the active operand, whose coefficients are the result's (a.e.)
    """``clamp(x, lo, hi)`` with tensor bounds as two wheres (torch's order: hi wins)."""
    if lo is not None:
        x = torch.where(x < lo, lo, x)
    if hi is not None:
        x = torch.where(x > hi, hi, x)
    return x
