"""Elementwise rules from derivative tables: :class:`DerivativeTable`, :func:`def_deriv`.

An elementwise op ``y = g(x)`` needs only its derivatives ``g^(m)``: written in sympy
(in ``x`` and, for functions that solve an ODE ``g' = F(g)``, in ``y = g(x)``), lowered
to ATen once per node (:func:`lower_sympy`), and composed with the input's jet by Faa di
Bruno's formula (:func:`~taylorc.rules.jet.compose`; Griewank & Walther, "Evaluating
Derivatives", 2008, ch. 13).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy
import torch

from .define import register
from .jet import add, compose, scale

aten = torch.ops.aten

X, Y = sympy.symbols("x y")


class DerivativeTable:
    """Derivatives ``g^(m)`` of an elementwise function, as sympy expressions in x and y = g(x).

    Give either ``expr`` (g as a sympy expression in ``x``) or ``ode`` (``F`` with
    ``g' = F(g)``, a sympy expression in ``y``: then ``g^(m+1) = d/dy g^(m) * F``,
    which keeps tanh, sigmoid and exp as polynomials in their own value).
    """

    def __init__(self, expr: sympy.Expr | None = None, ode: sympy.Expr | None = None):
        self.expr, self.ode = expr, ode
        self._cache: dict[int, sympy.Expr] = {}

    def derivative(self, m: int) -> sympy.Expr:
        """g^(m) in terms of x and y (m >= 1); computed once per m."""
        if m not in self._cache:
            if self.ode is not None:
                d = self.ode
                for _ in range(m - 1):
                    d = (
                        sympy.diff(d, Y) * self.ode
                    )  # unexpanded: shares g1 (1 - y^2 for tanh), no powers
            else:
                d = sympy.diff(self.expr, X, m).subs(self.expr, Y)
            self._cache[m] = d
        return self._cache[m]


_SYMPY_TO_ATEN = {
    sympy.tanh: aten.tanh.default,
    sympy.sin: aten.sin.default,
    sympy.cos: aten.cos.default,
    sympy.exp: aten.exp.default,
    sympy.log: aten.log.default,
    sympy.erf: aten.erf.default,
    sympy.sinh: aten.sinh.default,
    sympy.cosh: aten.cosh.default,
    sympy.atan: aten.atan.default,
    sympy.tan: aten.tan.default,
    sympy.asinh: aten.asinh.default,
}


def lower_sympy(expr: sympy.Expr, env: dict, memo: dict):
    """Emit ATen ops computing a sympy expression; returns a Proxy or a python number."""
    if expr in memo:
        return memo[expr]
    if expr in env:
        return env[expr]
    if expr.is_number:  # includes pi, sqrt(2), ...
        out = float(expr)
    elif expr.is_Add:
        c, out = 0.0, None
        for t in expr.args:
            v = lower_sympy(t, env, memo)
            if isinstance(v, (int, float)):
                c += v
            else:
                out = add(out, v)
        out = c if out is None else (aten.add.Tensor(out, c) if c != 0 else out)
    elif expr.is_Mul:
        c, out = 1.0, None
        for t in expr.args:
            v = lower_sympy(t, env, memo)
            if isinstance(v, (int, float)):
                c *= v  # numbers (also irrational ones such as sqrt(2/pi)) stay python scalars
            else:
                out = v if out is None else aten.mul.Tensor(out, v)
        out = c if out is None else scale(out, c)
    elif expr.is_Pow:
        base, e = expr.args
        if base.is_Number:
            out = aten.pow.Scalar(float(base), lower_sympy(e, env, memo))
        else:
            b = lower_sympy(base, env, memo)
            if e == 1:
                out = b
            elif e == 2:
                out = aten.mul.Tensor(b, b)
            elif e == -1:
                out = aten.reciprocal.default(b)
            elif e == sympy.Rational(1, 2):
                out = aten.sqrt.default(b)
            elif e == sympy.Rational(-1, 2):
                out = aten.rsqrt.default(b)
            else:
                out = aten.pow.Tensor_Scalar(b, int(e) if e.is_Integer else float(e))
    elif expr.func is sympy.polygamma and expr.args[0].is_Integer:
        n, arg = int(expr.args[0]), lower_sympy(expr.args[1], env, memo)
        out = aten.digamma.default(arg) if n == 0 else aten.polygamma.default(n, arg)
    elif expr.func in _SYMPY_TO_ATEN:
        out = _SYMPY_TO_ATEN[expr.func](lower_sympy(expr.args[0], env, memo))
    else:
        raise NotImplementedError(f"taylorc cannot lower the sympy expression {expr} to ATen")
    memo[expr] = out
    return out


def def_deriv(
    ops,
    table: DerivativeTable | Callable[..., DerivativeTable],
    *,
    smooth: bool = True,
    note: str = "",
    operand: int = 0,
) -> None:
    """Register an elementwise op by its derivative table (Faa di Bruno's formula).

    ``table`` is a :class:`DerivativeTable`, or a function of the op's extra
    arguments returning one (``pow.Tensor_Scalar`` depends on its exponent).
    ``operand`` is the position of the tensor argument (1 for ``polygamma(n, x)``);
    the other positional arguments are the table's parameters.
    """

    def rule(ctx, k, *args, **kwparams):
        x, params = args[operand], args[:operand] + args[operand + 1 :]
        derivs = ctx.cache.get("derivs")
        if derivs is None:
            t = table(*params, **kwparams) if callable(table) else table
            env, memo = {X: x[0], Y: ctx.value}, {}
            derivs = [ctx.value] + [
                _number_or_none(lower_sympy(t.derivative(m), env, memo))
                for m in range(1, ctx.K + 1)
            ]
            ctx.cache["derivs"] = derivs
        return compose(ctx, k, x, derivs)

    register(ops, rule, "elementwise", smooth=smooth, note=note)


def _number_or_none(v):
    return None if isinstance(v, (int, float)) and v == 0 else v


def table_of(expr_of_x) -> DerivativeTable:
    """The table of ``g = expr_of_x(X)``, e.g. ``table_of(sympy.sin)``."""
    return DerivativeTable(expr=expr_of_x(X))
