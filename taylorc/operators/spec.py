"""Operator specs: what to compute from the model's Taylor coefficients.

A linear differential operator of order k is written as a weighted sum of
k-th directional derivatives ``D^k u[v] = d^k/dt^k u(x + t v)`` (exact
rational weights, sympy), so that it can be read off univariate Taylor
coefficients (Griewank, Utke, Walther 2000, "Evaluating higher derivative
tensors by forward propagation of univariate Taylor series").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sympy

Direction = tuple[int, ...]
Expansion = dict[int, dict[Direction, sympy.Rational]]  # order -> direction -> weight


class Operator:
    """Base class: a linear operator read off Taylor coefficients.

    Subclasses implement :meth:`expansion`. ``kind`` is ``"linear"`` (a scalar
    per output entry), ``"value"`` or ``"gradient"``.
    """

    kind = "linear"
    name = "operator"

    def expansion(self, D: int) -> Expansion:
        """``{order: {direction: weight}}`` with directions as integer D-tuples.

        Args:
            D: number of input coordinates (the flattened per-sample input size).

        Raises:
            ValueError: the operator does not fit D coordinates.
        """
        raise NotImplementedError

    def order(self, D: int) -> int:
        """Highest derivative order the operator needs."""
        return max(self.expansion(D), default=0)

    def __repr__(self) -> str:
        return self.name


def _unit(D: int, i: int, sign_j: tuple[int, int] | None = None) -> Direction:
    v = [0] * D
    v[i] = 1
    if sign_j is not None:
        j, s = sign_j
        v[j] = s
    return tuple(v)


def _check_dims(dims: Sequence[int] | None, D: int, who: str) -> list[int]:
    if dims is None:
        return list(range(D))
    dims = list(dims)
    bad = [d for d in dims if not -D <= d < D]
    if bad:
        raise ValueError(f"{who}: dims {bad} out of range for an input with {D} coordinates")
    return sorted({d % D for d in dims})


class Value(Operator):
    """The model's value itself, ``u``: shape of ``model(x)``."""

    kind = "value"
    name = "u"

    def expansion(self, D: int) -> Expansion:
        return {0: {(): sympy.Integer(1)}}


class Gradient(Operator):
    """First derivatives ``du/dx_i``: shape ``(B, *out, D)`` (D appended)."""

    kind = "gradient"
    name = "gradient"

    def expansion(self, D: int) -> Expansion:
        return {1: {_unit(D, i): sympy.Integer(1) for i in range(D)}}


class Laplacian(Operator):
    """``sum_{i in dims} d^2u/dx_i^2``: R = len(dims) unit directions, weight 1 (the forward Laplacian, Li et al. 2023)."""

    name = "laplacian"

    def __init__(self, dims: Sequence[int] | None = None):
        self.dims = None if dims is None else list(dims)
        if dims is not None:
            self.name = f"Laplacian(dims={self.dims})"

    def expansion(self, D: int) -> Expansion:
        dims = _check_dims(self.dims, D, "Laplacian")
        return {2: {_unit(D, i): sympy.Integer(1) for i in dims}}


@functools.cache
def biharmonic_expansion(D: int, dims: tuple[int, ...]) -> Expansion:
    """Directions and exact weights of the biharmonic ``sum_{i,j in dims} d^4u/dx_i^2 dx_j^2``.

    With d = len(dims), ``D^4u[e_i + e_j] + D^4u[e_i - e_j] = 2u_iiii + 12u_iijj + 2u_jjjj``,
    so ``Delta^2 u = (4 - d)/3 sum_i D^4u[e_i] + 1/6 sum_{i<j} (D^4u[e_i+e_j] + D^4u[e_i-e_j])``:
    d^2 directions (Griewank, Utke, Walther 2000 interpolation, with the sign
    pairs that halve the count against the nonnegative lattice).
    """
    d = len(dims)
    out: dict[Direction, sympy.Rational] = {}
    for a, i in enumerate(dims):
        out[_unit(D, i)] = sympy.Rational(4 - d, 3)
        for j in dims[a + 1 :]:
            out[_unit(D, i, (j, 1))] = sympy.Rational(1, 6)
            out[_unit(D, i, (j, -1))] = sympy.Rational(1, 6)
    return {4: {v: w for v, w in out.items() if w != 0}}


class Biharmonic(Operator):
    """``Delta^2 u = sum_{i,j in dims} d^4u / dx_i^2 dx_j^2`` (exact, K = 4, d^2 directions)."""

    name = "biharmonic"

    def __init__(self, dims: Sequence[int] | None = None):
        self.dims = None if dims is None else list(dims)
        if dims is not None:
            self.name = f"Biharmonic(dims={self.dims})"

    def expansion(self, D: int) -> Expansion:
        return biharmonic_expansion(D, tuple(_check_dims(self.dims, D, "Biharmonic")))


NAMED = {
    "u": Value,
    "value": Value,
    "gradient": Gradient,
    "laplacian": Laplacian,
    "biharmonic": Biharmonic,
}


def parse(spec) -> Operator:
    """An :class:`Operator` from a name or an Operator.

    Raises:
        ValueError: unknown name.
        TypeError: a spec of another type.
    """
    if isinstance(spec, Operator):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in NAMED:
            return NAMED[key]()
        raise ValueError(
            f"unknown operator {spec!r}: use one of {sorted(NAMED)} or a taylorc.operators.Operator"
        )
    raise TypeError(
        f"operator must be a name, an Operator or a dict of them, got {type(spec).__name__}"
    )


def verify_expansion(op: Operator, D: int, target: sympy.Expr, z: Sequence[sympy.Symbol]) -> bool:
    """Check ``sum_{k,v} w (v . z)^k == target(z)`` exactly, the symbol ``z_i`` standing for d/dx_i.

    Used by the tests: a directional derivative ``D^k u[v]`` is the polynomial
    ``(v . d)^k`` applied to u, so the identity of polynomials is the identity
    of operators.
    """
    total = sympy.Integer(0)
    for k, terms in op.expansion(D).items():
        for v, w in terms.items():
            total += w * sum(vi * zi for vi, zi in zip(v, z)) ** k
    return sympy.expand(total - target) == 0
