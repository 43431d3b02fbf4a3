"""Reading operator specs: the field's notation (``"u_t - 0.01*u_xx + 2*u_xy"``) and sympy expressions.

A string names derivatives as ``u_<coordinates>`` (``u_xxyy`` is
d^4u/dx^2 dy^2) over the coordinate names given by ``coords``; coefficients
may use the coordinate names, numbers, ``pi`` and ``params``. A sympy spec
uses ``Derivative(u(x, y), x, 2)`` with ``u`` an undefined function of the
coordinates. Both must be linear in u: products of u-terms, functions of u,
and terms free of u raise ``ValueError`` naming the offending term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sympy

from .spec import NAMED, LinearOperator, Operator

_TOKEN = re.compile(r"\bu(?:_([A-Za-z0-9]+))?\b")


def split_coords(coords) -> list[str] | None:
    """``"x y t"`` / ``"x,y,t"`` / a sequence -> a list of names (None stays None).

    Raises:
        ValueError: duplicate or empty names.
    """
    if coords is None:
        return None
    names = (
        coords.replace(",", " ").split() if isinstance(coords, str) else [str(c) for c in coords]
    )
    if not names or len(set(names)) != len(names):
        raise ValueError(f"coords must name each input column once, got {coords!r}")
    return names


def _subscript(sub: str, coords: Sequence[str], text: str) -> tuple[str, ...]:
    """Split ``"xxy"`` into coordinate names, longest name first."""
    out, i = [], 0
    names = sorted(coords, key=len, reverse=True)
    while i < len(sub):
        match = next((n for n in names if sub.startswith(n, i)), None)
        if match is None:
            raise ValueError(
                f"unknown coordinate in u_{sub} (in {text!r}): coords are {list(coords)}"
            )
        out.append(match)
        i += len(match)
    return tuple(out)


def parse_expression(
    text: str, coords: Sequence[str] | None, params: dict | None = None
) -> Operator:
    """A :class:`LinearOperator` from the field's notation.

    Args:
        text: e.g. ``"u_t - 0.01*u_xx + 2*u_xy"`` or ``"u_xx + sin(x)*u_y"``.
        coords: the coordinate names, one per input column.
        params: extra names usable in coefficients, e.g. ``{"nu": 0.01}``.

    Raises:
        ValueError: no coords, an unknown coordinate or symbol, a nonlinear
            term, or a term without u.
    """
    if coords is None:
        raise ValueError(
            f'operator {text!r} names derivatives: give coords=... (e.g. coords="x y t")'
        )
    symbols: dict[str, sympy.Symbol] = {}

    def replace(m):
        variables = _subscript(m.group(1), coords, text) if m.group(1) else ()
        key = "U__" + "_".join(variables) if variables else "U__"
        symbols[key] = sympy.Symbol(key)
        return key

    body = _TOKEN.sub(replace, text)
    local = {n: sympy.Symbol(n) for n in coords}
    local.update(symbols)
    local.update(
        {
            k: sympy.nsimplify(v) if isinstance(v, (int, float)) else v
            for k, v in (params or {}).items()
        }
    )
    local["pi"] = sympy.pi
    try:
        expr = sympy.sympify(body, locals=local, rational=True)
    except (sympy.SympifyError, SyntaxError, TypeError) as e:
        raise ValueError(f"cannot read operator {text!r}: {e}") from e
    return _linear_from_expr(expr, {s: _variables(n) for n, s in symbols.items()}, coords, text)


def _variables(key: str) -> tuple[str, ...]:
    rest = key[len("U__") :]
    return tuple(rest.split("_")) if rest else ()


def _linear_from_expr(expr, usyms: dict[sympy.Symbol, tuple], coords, text) -> LinearOperator:
    allowed = {sympy.Symbol(c) for c in coords}
    terms: dict[tuple, object] = {}

    def show(term):
        return term.xreplace(
            {s: sympy.Symbol("u" + ("_" + "".join(v) if v else "")) for s, v in usyms.items()}
        )

    for term in sympy.Add.make_args(sympy.expand(expr)):
        present = [s for s in usyms if term.has(s)]
        if not present:
            raise ValueError(
                f"term {show(term)} of {text!r} does not contain u: a linear operator has no source "
                "terms (put them in the residual)"
            )
        coef = sympy.simplify(term / present[0])
        if len(present) > 1 or coef.has(*usyms):
            raise ValueError(
                f"term {show(term)} of {text!r} is not linear in u: products or functions of u "
                "(like u*u_x) belong in the residual, built from a dict of operators"
            )
        unknown = coef.free_symbols - allowed
        if unknown:
            raise ValueError(
                f"term {show(term)} of {text!r} uses unknown symbols {sorted(map(str, unknown))}: "
                f"coefficients may use the coordinates {list(coords)}, numbers and params"
            )
        key = usyms[present[0]]
        terms[key] = terms.get(key, 0) + coef
    return LinearOperator(terms, name=text)


def from_sympy(expr: sympy.Expr, coords: Sequence[str] | None = None) -> Operator:
    """A :class:`LinearOperator` from ``sympy.Derivative(u(x, y), x, 2) + ...``.

    The coordinates are the arguments of the (single) undefined function u,
    unless ``coords`` is given.

    Raises:
        ValueError: no undefined function, several of them, or a nonlinear term.
    """
    funcs = {f.func for f in expr.atoms(sympy.core.function.AppliedUndef)}
    if len(funcs) != 1:
        raise ValueError(
            f"a sympy operator needs exactly one unknown function u(x, ...), found {sorted(map(str, funcs))}"
        )
    (u,) = funcs
    app = next(iter(a for a in expr.atoms(sympy.core.function.AppliedUndef)))
    names = list(coords) if coords is not None else [str(a) for a in app.args]
    usyms: dict[sympy.Symbol, tuple] = {}

    def symbol_for(variables):
        s = sympy.Symbol("U__" + "_".join(variables))
        usyms[s] = variables
        return s

    reps = {}
    for d in expr.atoms(sympy.Derivative):
        if d.expr.func == u:
            variables = tuple(str(v) for v, n in d.variable_count for _ in range(n))
            reps[d] = symbol_for(variables)
    e = expr.xreplace(reps)
    e = e.xreplace(
        {a: symbol_for(()) for a in e.atoms(sympy.core.function.AppliedUndef) if a.func == u}
    )
    op = _linear_from_expr(e, usyms, names, str(expr))
    op.default_coords = names
    return op


def parse(spec, coords: Sequence[str] | None = None, params: dict | None = None) -> Operator:
    """An :class:`Operator` from a name, an expression string, a sympy expression or an Operator.

    Raises:
        ValueError: unknown name, bad expression.
        TypeError: a spec of another type.
    """
    if isinstance(spec, Operator):
        return spec
    if isinstance(spec, str):
        key = spec.strip()
        if key.lower() in NAMED:
            return NAMED[key.lower()]()
        if _TOKEN.search(key):
            return parse_expression(key, coords, params)
        raise ValueError(
            f"unknown operator {spec!r}: use one of {sorted(NAMED)}, an expression in u_<coords> "
            "(with coords=...), a sympy expression, or a taylorc.operators.Operator"
        )
    if isinstance(spec, sympy.Basic):
        return from_sympy(spec, coords)
    raise TypeError(
        f"operator must be a name, an expression, an Operator or a dict of them, got {type(spec).__name__}"
    )
