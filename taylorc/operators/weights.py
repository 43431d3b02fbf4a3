"""Exact interpolation weights: a mixed partial derivative as a sum of directional ones.

``d^alpha u = sum_v w_v D^k u[v]`` over the lattice directions ``|v| = k`` of
Griewank, Utke, Walther, "Evaluating higher derivative tensors by forward propagation
of univariate Taylor series" (Math. Comp. 2000), with the weights in closed form; the
biharmonic's shorter expansion over ``e_i ± e_j`` (:func:`biharmonic_expansion`); the
exact check of an operator's expansion as a polynomial identity (:func:`verify_expansion`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import combinations_with_replacement

import sympy

Direction = tuple[int, ...]
Weights = dict[Direction, sympy.Rational]


def _compositions(k: int, s: int):
    """All s-tuples of nonnegative integers summing to k."""
    for cut in combinations_with_replacement(range(k + 1), s - 1):
        parts, prev = [], 0
        for c in cut:
            parts.append(c - prev)
            prev = c
        parts.append(k - prev)
        yield tuple(parts)


def _primitive(i: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    g = math.gcd(*i)
    return tuple(x // g for x in i), g


def _lagrange_coefficient(alpha: tuple[int, ...], i: tuple[int, ...]) -> int:
    """``[x^alpha] prod_m prod_{t < i_m} (k x_m - t sigma)``, sigma = sum of x, in integers.

    Up to the factor ``1 / (k^k prod_m i_m!)`` this is the homogeneous Lagrange
    polynomial of the lattice point i on the points ``|j| = k``: 1 at i, 0 at every
    other point. Monomials that exceed alpha in some coordinate are dropped as they
    appear (the factors only raise degrees), which keeps the expansion small.
    """
    k, s = sum(alpha), len(alpha)
    poly = {(0,) * s: 1}
    for m, im in enumerate(i):
        for t in range(im):
            new: dict[tuple[int, ...], int] = {}
            for mono, c in poly.items():
                for var in range(s):
                    a = (k if var == m else 0) - t
                    if a == 0 or mono[var] == alpha[var]:
                        continue
                    up = mono[:var] + (mono[var] + 1,) + mono[var + 1 :]
                    new[up] = new.get(up, 0) + c * a
            poly = new
    return poly.get(alpha, 0)


@functools.cache
def partial_weights(exponents: tuple[int, ...]) -> dict[tuple[int, ...], sympy.Rational]:
    """Exact weights ``w_v`` with ``d^alpha u = sum_v w_v D^k u[v]`` over the support of alpha.

    ``exponents`` are the positive exponents of alpha on its support (s
    coordinates, k = sum). The directions are the lattice points ``i`` with
    ``|i| = k`` (Griewank, Utke, Walther, "Evaluating higher derivative tensors by
    forward propagation of univariate Taylor series", Math. Comp. 2000). Since
    ``D^k u[i] = sum_beta k!/beta! i^beta d^beta u``, the weights are the functional
    ``p -> alpha!/k! [x^alpha] p`` applied to the Lagrange basis of homogeneous degree-k
    polynomials on the lattice, ``w_i = alpha!/k! [x^alpha] L_i`` (closed form, exact
    integers and rationals, no linear solve). They satisfy
    ``sum_i w_i i^beta = delta_{alpha beta} alpha!/k!`` for every ``|beta| = k`` (tested as
    an exact identity). Parallel directions are merged into their primitive vector
    (``D^k u[g v] = g^k D^k u[v]``).
    """
    alpha = tuple(exponents)
    k = sum(alpha)
    scale = Fraction(math.prod(math.factorial(a) for a in alpha), math.factorial(k) * k**k)
    out: dict[tuple[int, ...], Fraction] = {}
    for i in _compositions(k, len(alpha)):
        c = _lagrange_coefficient(alpha, i)
        if c != 0:
            v, g = _primitive(i)
            wi = scale * Fraction(c, math.prod(math.factorial(m) for m in i))
            out[v] = out.get(v, 0) + wi * g**k
    return {v: sympy.Rational(c.numerator, c.denominator) for v, c in out.items() if c != 0}


def multi_index_weights(alpha: Sequence[int]) -> Weights:
    """Weights over D-dimensional directions for ``d^alpha`` (alpha: D exponents)."""
    support = [d for d, a in enumerate(alpha) if a > 0]
    if not support:
        return {tuple(0 for _ in alpha): sympy.Integer(1)}
    out: Weights = {}
    for v, w in partial_weights(tuple(alpha[d] for d in support)).items():
        full = [0] * len(alpha)
        for d, vd in zip(support, v):
            full[d] = vd
        out[tuple(full)] = w
    return out


@functools.cache
def biharmonic_expansion(D: int, dims: tuple[int, ...]) -> Weights:
    """Directions and exact weights of ``sum_{i,j in dims} d^4u/dx_i^2 dx_j^2``.

    With d = len(dims), ``D^4u[e_i + e_j] + D^4u[e_i - e_j] = 2u_iiii + 12u_iijj + 2u_jjjj``,
    so ``Delta^2 u = (4 - d)/3 sum_i D^4u[e_i] + 1/6 sum_{i<j} (D^4u[e_i+e_j] + D^4u[e_i-e_j])``:
    d^2 directions, fewer than the d(3d - 1)/2 of the nonnegative lattice.
    """
    d = len(dims)
    out: Weights = {}
    for a, i in enumerate(dims):
        ei = [0] * D
        ei[i] = 1
        out[tuple(ei)] = sympy.Rational(4 - d, 3)
        for j in dims[a + 1 :]:
            for s in (1, -1):
                v = list(ei)
                v[j] = s
                out[tuple(v)] = sympy.Rational(1, 6)
    return {v: w for v, w in out.items() if w != 0}


def verify_expansion(
    op, D: int, target: sympy.Expr, z: Sequence[sympy.Symbol], coords=None
) -> bool:
    """Check ``sum_{k,v} w (v . z)^k == target(z)`` exactly, the symbol ``z_i`` standing for d/dx_i.

    ``op`` is a :class:`~taylorc.operators.spec.Operator` (its constant expansion
    ``op.expansion(D, coords)`` is checked).

    A directional derivative ``D^k u[v]`` is the polynomial ``(v . d)^k``
    applied to u, so the identity of polynomials is the identity of operators.
    """
    total = sympy.Integer(0)
    for k, terms in op.expansion(D, coords).items():
        for v, w in terms.items():
            total += w * sum(vi * zi for vi, zi in zip(v, z)) ** k
    return sympy.expand(total - target) == 0
