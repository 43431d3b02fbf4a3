"""Rules of special functions and remainders (registered into the one registry, ``RULES``).

Smooth elementwise functions are given by their derivative tables (Faa di Bruno's
formula, :func:`~taylorc.rules.table.def_deriv`); the tables follow from the
closed-form first derivatives (DLMF 5.15 for the polygamma functions, 7.2 for the
error functions, 4.37 for the inverse hyperbolic functions).
"""

from __future__ import annotations

import functools

import sympy
import torch

from .table import (
    _X,
    _Y,
    DerivativeTable,
    _register,
    _table,
    def_comp,
    def_deriv,
    propagate_composite,
)
from .table import warn_nonsmooth as _warn

aten = torch.ops.aten

def_deriv(aten.erfc.default, _table(sympy.erfc))
def_deriv(
    aten.erfinv.default,
    DerivativeTable(ode=sympy.sqrt(sympy.pi) / 2 * sympy.exp(_Y**2)),
    note="g' = sqrt(pi)/2 exp(g^2)",
)
def_deriv(aten.acosh.default, _table(sympy.acosh), note="x > 1")
def_deriv(aten.atanh.default, _table(sympy.atanh), note="|x| < 1")
def_deriv(aten.exp2.default, DerivativeTable(ode=sympy.log(2) * _Y), note="g' = log(2) g")
def_deriv(aten.lgamma.default, _table(sympy.loggamma), note="derivatives: polygamma")
def_deriv(aten.digamma.default, DerivativeTable(expr=sympy.polygamma(0, _X)), note="polygamma")


def _remainder(rounding):
    """``a - rounding(a / b) * b``: the rounded quotient is piecewise constant."""

    def identity(a, b):
        return a - rounding(a / b) * b

    def rule(ctx, k, a, b):
        _warn(ctx, "it jumps where the quotient crosses an integer")
        return propagate_composite(ctx, k, identity, (a, b), {})

    return rule


for _op, _round in (
    (aten.fmod.Scalar, torch.trunc),
    (aten.fmod.Tensor, torch.trunc),
    (aten.remainder.Scalar, torch.floor),
    (aten.remainder.Tensor, torch.floor),
):
    _register(
        _op,
        _remainder(_round),
        "composite",
        smooth=False,
        note="a - round(a/b) b; exact a.e.; warns at order >= 2",
    )


# -- polygamma, atan2, hypot ---------------------------------------------------------------

# d/dx polygamma(n, x) = polygamma(n + 1, x) (DLMF 5.15.1); the tensor is the second argument
def_deriv(
    aten.polygamma.default,
    functools.cache(lambda n: DerivativeTable(expr=sympy.polygamma(n, _X))),
    note="g^(m) = polygamma(n + m)",
    operand=1,
)


def _atan2_identity(a, b):
    # atan2(a, b) = atan(a / b) + c where |b| >= |a|, and -atan(b / a) + c' elsewhere, the
    # constants c, c' multiples of pi/2 fixed per quadrant (DLMF 4.23.36 with
    # atan(u) + atan(1/u) = sign(u) pi/2): constants carry no Taylor terms, so they are left out;
    # the branch is chosen so that the quotient stays in [-1, 1]; the branch not taken
    # divides by 1 instead (a zero there would send NaN through where's gradient)
    sel = b.abs() >= a.abs()
    one = torch.ones_like(a)
    return torch.where(
        sel, torch.atan(a / torch.where(sel, b, one)), -torch.atan(b / torch.where(sel, one, a))
    )


def_comp(
    aten.atan2.default,
    _atan2_identity,
    note="atan(a/b) or -atan(b/a), whichever quotient is bounded (constants dropped)",
)
# hypot(a, b) = sqrt(a^2 + b^2): smooth away from a = b = 0
def_comp(aten.hypot.default, lambda a, b: torch.sqrt(a * a + b * b), note="sqrt(a^2 + b^2)")
