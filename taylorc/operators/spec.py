"""Operator specs: linear differential operators ``sum_alpha c_alpha(x) d^alpha u``.

Every operator is read off univariate Taylor coefficients: a partial derivative
of order k is a combination of k-th directional derivatives
``D^k u[v] = d^k/dt^k u(x + t v)`` with exact rational weights (Griewank,
Utke, Walther 2000, "Evaluating higher derivative tensors by forward
propagation of univariate Taylor series"; weights solved exactly with sympy
and cached). An operator yields :class:`Part` objects: an order, weights over
integer directions, and a coefficient (constant parts are merged per order). The
weights themselves, and their exact check, live in :mod:`taylorc.operators.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch

from .weights import Direction, Weights, biharmonic_expansion, multi_index_weights

Expansion = dict[int, Weights]  # order -> direction -> weight

MAX_ORDER = 6


@dataclass(frozen=True)
class Coefficient:
    """A coordinate-dependent coefficient c(x) of a term.

    Exactly one of ``expr`` (a sympy expression in the coordinate symbols) and
    ``fn`` (a torch callable mapping ``(B, D)`` coordinates to ``(B,)``, or to
    ``(B, ...)`` indexed by ``index``) is set.
    """

    expr: sympy.Expr | None = None
    fn: Callable | None = None
    index: tuple[int, ...] = ()

    def __repr__(self) -> str:
        if self.expr is not None:
            return str(self.expr)
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"{name}(x){list(self.index) if self.index else ''}"


def is_constant(c) -> bool:
    """A constant coefficient (python or sympy number), as opposed to a function of x."""
    try:
        return isinstance(c, (int, float)) or bool(getattr(c, "is_number", False))
    except TypeError:
        return False


def coefficient_values(c, points, coords=None):
    """A term's coefficient at ``(N, D)`` points, shape ``(N,)``, same dtype as the points.

    ``c`` is a number, a sympy expression in the coordinate names (``x0, x1, ...``
    without ``coords``) evaluated by ``sympy.lambdify``, or a :class:`Coefficient`.
    Used by the nested-autograd reference and the discretization, not by the
    Taylor graphs (which lower coefficients into the graph).
    """
    if isinstance(c, Coefficient) and c.fn is not None:
        v = c.fn(points)
        for i in c.index:
            v = v.select(1, i)
    else:
        e = c.expr if isinstance(c, Coefficient) else sympy.sympify(c, rational=True)
        names = coords or [f"x{i}" for i in range(points.shape[1])]
        v = sympy.lambdify([sympy.Symbol(n) for n in names], e, modules="torch")(*points.unbind(1))
    return torch.as_tensor(v, dtype=points.dtype, device=points.device).expand(points.shape[0])


@dataclass(frozen=True)
class Part:
    """``coef(x) * sum_v weights[v] D^order u[v]`` (coef None means 1)."""

    order: int
    weights: tuple[tuple[Direction, sympy.Rational], ...]
    coef: Coefficient | None = None


class Operator:
    """Base class: a linear operator read off Taylor coefficients.

    Subclasses implement :meth:`terms` (``{variables: coefficient}``, the
    variables a tuple of coordinate indices or names with repetition, e.g.
    ``("x", "x")`` for u_xx) or override :meth:`parts`. ``kind`` is
    ``"linear"`` (a scalar per output entry), ``"value"`` or ``"gradient"``.
    """

    kind = "linear"
    name = "operator"

    def terms(self, D: int, coords: Sequence[str] | None) -> dict[tuple, object]:
        """Multi-index -> coefficient of the operator over D coordinates (each subclass's).

        Raises:
            NotImplementedError: on the base class.
        """
        raise NotImplementedError

    def parts(self, D: int, coords: Sequence[str] | None = None) -> list[Part]:
        """The operator as :class:`Part` objects over D coordinates.

        Raises:
            ValueError: an unknown coordinate, a coordinate index out of range,
                or a derivative order above ``MAX_ORDER``.
        """
        return parts_from_terms(self.terms(D, coords), D, coords, self.name)

    def expansion(self, D: int, coords: Sequence[str] | None = None) -> Expansion:
        """``{order: {direction: weight}}`` of the constant-coefficient parts.

        Raises:
            ValueError: the operator has coordinate-dependent coefficients.
        """
        out: Expansion = {}
        for p in self.parts(D, coords):
            if p.coef is not None:
                raise ValueError(
                    f"{self.name} has coordinate-dependent coefficients: no constant expansion"
                )
            w = out.setdefault(p.order, {})
            for v, c in p.weights:
                w[v] = w.get(v, 0) + c
        return out

    def order(self, D: int, coords: Sequence[str] | None = None) -> int:
        """Highest derivative order the operator needs."""
        return max((p.order for p in self.parts(D, coords)), default=0)

    def __repr__(self) -> str:
        return self.name


# -- from terms to parts ------------------------------------------------------------


def resolve_dim(var, D: int, coords: Sequence[str] | None, who: str) -> int:
    """A coordinate index from an int (negative counts from the end) or a coordinate name."""
    if isinstance(var, str):
        if coords is None:
            raise ValueError(f"{who}: coordinate {var!r} needs coords=... naming the input columns")
        if var not in coords:
            raise ValueError(f"{who}: unknown coordinate {var!r}; coords are {list(coords)}")
        return list(coords).index(var)
    if not -D <= int(var) < D:
        raise ValueError(
            f"{who}: coordinate index {var} out of range for an input with {D} coordinates"
        )
    return int(var) % D


def _as_coefficient(c, coords) -> tuple[sympy.Expr | None, Coefficient | None]:
    """(constant, None) or (None, Coefficient)."""
    if callable(c) and not isinstance(c, sympy.Basic):
        return None, Coefficient(fn=c)
    if isinstance(c, Coefficient):
        return None, c
    # floats as their exact decimal: 0.01 -> 1/100, so equal specs give equal plans
    e = sympy.Rational(repr(c)) if isinstance(c, float) else sympy.sympify(c, rational=True)
    if e.free_symbols:
        return None, Coefficient(expr=e)
    return e, None


def parts_from_terms(terms: dict[tuple, object], D: int, coords, who: str) -> list[Part]:
    """Merge ``{variables: coefficient}`` into parts: one per order for constants, one per coefficient otherwise."""
    const: dict[int, Weights] = {}
    varying: dict[tuple[int, Coefficient], Weights] = {}
    for variables, c in terms.items():
        if len(variables) > MAX_ORDER:
            raise ValueError(
                f"{who}: derivative order {len(variables)} of term {_term_name(variables, coords)} "
                f"is above the maximum {MAX_ORDER}"
            )
        alpha = [0] * D
        for var in variables:
            alpha[resolve_dim(var, D, coords, who)] += 1
        k = len(variables)
        scalar, coef = _as_coefficient(c, coords)
        target = const.setdefault(k, {}) if coef is None else varying.setdefault((k, coef), {})
        factor = scalar if coef is None else 1
        for v, w in multi_index_weights(alpha).items():
            target[v] = target.get(v, 0) + factor * w
    out = []
    for k, w in sorted(const.items()):
        w = {v: c for v, c in w.items() if c != 0}
        if w:
            out.append(Part(k, tuple(w.items())))
    for (k, coef), w in varying.items():
        out.append(Part(k, tuple(w.items()), coef))
    return out


def _term_name(variables, coords) -> str:
    names = [v if isinstance(v, str) else (coords[v] if coords else f"x{v}") for v in variables]
    return "u" + ("_" + "".join(names) if names else "")


# -- named operators ---------------------------------------------------------------


def _dims(dims, D, coords, who) -> list[int]:
    if dims is None:
        return list(range(D))
    return sorted({resolve_dim(d, D, coords, who) for d in dims})


class Value(Operator):
    """The model's value itself, ``u``: shape of ``model(x)``."""

    kind = "value"
    name = "u"

    def terms(self, D, coords):
        return {(): 1}


class Gradient(Operator):
    """First derivatives ``du/dx_i``: shape ``(B, *out, D)`` (D appended)."""

    kind = "gradient"
    name = "gradient"

    def parts(self, D, coords=None):
        return [
            Part(
                1, tuple((tuple(int(i == j) for j in range(D)), sympy.Integer(1)) for i in range(D))
            )
        ]


class Laplacian(Operator):
    """``sum_{i in dims} d^2u/dx_i^2``: unit directions, weight 1 (the forward Laplacian, Li et al. 2023).

    Args:
        dims: coordinates (indices or names with ``coords``); default all.
    """

    name = "laplacian"

    def __init__(self, dims: Sequence | None = None):
        self.dims = None if dims is None else list(dims)
        if dims is not None:
            self.name = f"Laplacian(dims={self.dims})"

    def terms(self, D, coords):
        return {(i, i): 1 for i in _dims(self.dims, D, coords, self.name)}


class Biharmonic(Operator):
    """``Delta^2 u = sum_{i,j in dims} d^4u / dx_i^2 dx_j^2`` (exact, order 4, d^2 directions)."""

    name = "biharmonic"

    def __init__(self, dims: Sequence | None = None):
        self.dims = None if dims is None else list(dims)
        if dims is not None:
            self.name = f"Biharmonic(dims={self.dims})"

    def parts(self, D, coords=None):
        return [
            Part(
                4,
                tuple(
                    biharmonic_expansion(D, tuple(_dims(self.dims, D, coords, self.name))).items()
                ),
            )
        ]

    def terms(self, D, coords):
        dims = _dims(self.dims, D, coords, self.name)
        out: dict[tuple, object] = {}
        for i in dims:
            for j in dims:
                key = tuple(sorted((i, i, j, j)))
                out[key] = out.get(key, 0) + 1
        return out


class WeightedLaplacian(Operator):
    """``sum_ij C_ij d^2u/dx_i dx_j`` (anisotropic diffusion, Fokker-Planck).

    Args:
        C: a constant ``(D, D)`` matrix (nested lists, numpy or torch), or a
            callable ``C(x)`` mapping ``(B, D)`` coordinates to ``(B, D, D)``.
    """

    name = "WeightedLaplacian"

    def __init__(self, C):
        self.C = C

    def terms(self, D, coords):
        if callable(self.C):
            return {
                (i, j): Coefficient(fn=self.C, index=(i, j)) for i in range(D) for j in range(D)
            }
        rows = [
            [float(c) for c in row]
            for row in (self.C.tolist() if hasattr(self.C, "tolist") else self.C)
        ]
        if len(rows) != D or any(len(r) != D for r in rows):
            raise ValueError(f"WeightedLaplacian: C must be ({D}, {D}) for {D} coordinates")
        terms: dict[tuple, object] = {}
        for i in range(D):
            for j in range(D):
                key = (min(i, j), max(i, j))
                terms[key] = terms.get(key, 0) + sympy.nsimplify(rows[i][j])
        return terms


class Advection(Operator):
    """``sum_i b_i du/dx_i`` with b a constant vector or a callable ``(B, D) -> (B, D)``."""

    name = "Advection"

    def __init__(self, b):
        self.b = b

    def terms(self, D, coords):
        if callable(self.b):
            return {(i,): Coefficient(fn=self.b, index=(i,)) for i in range(D)}
        b = [float(c) for c in (self.b.tolist() if hasattr(self.b, "tolist") else self.b)]
        if len(b) != D:
            raise ValueError(f"Advection: b must have {D} entries for {D} coordinates")
        return {(i,): sympy.nsimplify(c) for i, c in enumerate(b)}


def _time_dim(D, coords, who):
    if coords is not None:
        return resolve_dim("t", D, coords, who)
    return D - 1


class Heat(Operator):
    """``u_t - Delta_x u``: time is the coordinate named ``t`` (the last one without coords)."""

    name = "heat"

    def terms(self, D, coords):
        t = _time_dim(D, coords, self.name)
        return {(t,): 1, **{(i, i): -1 for i in range(D) if i != t}}


class Wave(Operator):
    """``u_tt - Delta_x u``: time is the coordinate named ``t`` (the last one without coords)."""

    name = "wave"

    def terms(self, D, coords):
        t = _time_dim(D, coords, self.name)
        return {(t, t): 1, **{(i, i): -1 for i in range(D) if i != t}}


class Helmholtz(Operator):
    """``Delta u + k^2 u`` with wave number k (default 1)."""

    def __init__(self, k: float = 1.0):
        self.k = k
        self.name = f"Helmholtz(k={k})"

    def terms(self, D, coords):
        return {(): sympy.nsimplify(self.k) ** 2, **{(i, i): 1 for i in range(D)}}


class LinearOperator(Operator):
    """A general linear operator ``sum_alpha c_alpha(x) d^alpha u``.

    Args:
        terms: ``{variables: coefficient}``; variables is a tuple of coordinate
            names or indices with repetition (``("x", "x", "y")`` is u_xxy,
            ``()`` is u); a coefficient is a number, a sympy expression in the
            coordinate symbols, or a callable ``(B, D) -> (B,)``.
        name: shown in plans and reprs.
        default_coords: coordinate names to use when ``compile`` gets no ``coords``
            (a sympy spec names them as the arguments of u).
    """

    def __init__(
        self, terms: dict[tuple, object], name: str = "LinearOperator", default_coords=None
    ):
        self._terms = dict(terms)
        self.name = name
        self.default_coords = list(default_coords) if default_coords is not None else None

    def terms(self, D, coords):
        return self._terms


NAMED: dict[str, Callable[[], Operator]] = {
    "u": Value,
    "value": Value,
    "gradient": Gradient,
    "laplacian": Laplacian,
    "biharmonic": Biharmonic,
    "heat": Heat,
    "wave": Wave,
    "helmholtz": Helmholtz,
}
