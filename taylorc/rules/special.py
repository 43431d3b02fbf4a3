"""Rule bodies of remainders and atan2 (the table: :mod:`taylorc.rules.table`).

The special functions themselves (erfc, erfinv, lgamma, polygamma, ...) are entries of
the table: derivative tables that follow from their closed-form first derivatives
(DLMF 5.15 for the polygamma functions, 7.2 for the error functions, 4.37 for the
inverse hyperbolic functions).
"""

from __future__ import annotations

import torch

from .define import nonsmooth_comp

aten = torch.ops.aten


def remainder(rounding):
    """The rule of ``a - rounding(a / b) * b``: the rounded quotient is piecewise constant."""

    def identity(a, b):
        return a - rounding(a / b) * b

    return nonsmooth_comp(identity, "it jumps where the quotient crosses an integer")


# -- polygamma, atan2, hypot ---------------------------------------------------------------


def atan2_identity(a, b):
    # atan2(a, b) = atan(a / b) + c where |b| >= |a|, and -atan(b / a) + c' elsewhere, the
    # constants c, c' multiples of pi/2 fixed per quadrant (DLMF 4.23.36 with
    # atan(u) + atan(1/u) = sign(u) pi/2): constants carry no Taylor terms, so they are left out;
    # the branch is chosen so that the quotient stays in [-1, 1]; the branch not taken
    # divides by 1 instead (a zero there would send NaN through where's gradient)
    """``atan2(a, b)`` as ``atan(a/b)`` or ``-atan(b/a)``, whichever quotient is bounded."""
    sel = b.abs() >= a.abs()
    one = torch.ones_like(a)
    return torch.where(
        sel, torch.atan(a / torch.where(sel, b, one)), -torch.atan(b / torch.where(sel, one, a))
    )
