"""The machinery the Taylor rules are written with.

A *jet* is the list of Taylor coefficients of one tensor along R directions,
in the derivative convention ``x_k = d^k/dt^k x(t)`` at ``t = 0`` (DESIGN.md).
Coefficient ``k = 0`` is the value (shape ``S``); coefficients ``k >= 1`` have
the direction axis in front (shape ``(R, *S)``). When the top order K is
*collapsed* (Dangel et al. 2025, "Collapsing Taylor Mode Automatic
Differentiation", Sec. 3), the top coefficient is the weighted sum over
directions: shape ``S`` for one weight vector, ``(G, *S)`` for G of them.

Rules emit graph nodes by calling ATen overloads on :class:`torch.fx.Proxy`
objects; :class:`RuleContext` tells a rule the leading shape of each order and
combines the top-order terms, so the same rule serves standard and collapsed
Taylor mode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

aten = torch.ops.aten

Value = Any  # an fx Proxy, a python number, or None (a known-zero coefficient)


@dataclass
class Jet:
    """Taylor coefficients of one tensor of the source graph.

    Attributes:
        coeffs: ``coeffs[k]`` is a Proxy for ``x_k`` or ``None`` when it is zero.
        shape: shape of the source tensor (of ``x_0``).
    """

    coeffs: list
    shape: tuple[int, ...]

    def __getitem__(self, k: int) -> Value:
        return self.coeffs[k] if k < len(self.coeffs) else None

    @property
    def ndim(self) -> int:
        """Dims of the value."""
        return len(self.shape)

    @property
    def is_constant(self) -> bool:
        """True when every coefficient above the value is zero (parameters, constants)."""
        return all(c is None for c in self.coeffs[1:])


@dataclass
class RuleContext:
    """What a rule needs to know while it emits the coefficients of one node.

    Attributes:
        node: the source node being rewritten (``node.meta["val"]`` gives shapes).
        K: highest Taylor order propagated.
        R: number of directions.
        collapsed: whether order K is collapsed (summed over directions).
        G: number of collapsed weight vectors (1: shape ``S``; >1: ``(G, *S)``).
        weights: Proxy of the ``(G, R)`` (or ``(R,)`` when G == 1) collapse weights,
            or ``None`` when all weights are one and G == 1.
        value: Proxy of the node's own value (order 0), set before orders >= 1 are emitted.
        R_top: in collapsed mode, only directions ``[0, R_top)`` have nonzero weight:
            the products of lower-order coefficients feeding the top order are
            formed on those rows only (``weights`` has R_top entries then).
        weight_values: the G == 1 collapse weights as numbers (length R_top), so that
            a single direction or all-one weights need no einsum.
        warn: callback for non-smooth ops, ``warn(message)``.
        composite: ``composite(ctx, k, identity, args, kwargs)``, the propagation of a
            composite rule through the trace of its identity (the taylor pass's
            :func:`~taylorc.passes.taylor.propagate_composite`; injected, so that the
            rules need not import the pass).
    """

    node: torch.fx.Node
    K: int
    R: int
    collapsed: bool = False
    G: int = 1
    weights: Value = None
    value: Value = None
    R_top: int | None = None
    weight_values: list[float] | None = None
    cache: dict = field(default_factory=dict)
    warn: Callable[[str], None] | None = None
    composite: Callable | None = None

    @property
    def out_val(self) -> torch.Tensor:
        """The (fake) value of the node's output; its first output for multi-output ops."""
        v = self.node.meta["val"]
        return v[0] if isinstance(v, (tuple, list)) else v

    @property
    def out_ndim(self) -> int:
        """Dims of the op's output value."""
        return self.out_val.dim()

    @property
    def out_shape(self) -> list[int]:
        """Shape of the op's output value."""
        return list(self.out_val.shape)

    def is_collapsed(self, k: int) -> bool:
        """Whether order k is the collapsed top (one sum over directions, no R axis)."""
        return self.collapsed and k == self.K

    def lead(self, k: int) -> list[int]:
        """Leading (direction) shape of order-k coefficients: ``[]``, ``[R]`` or ``[G]``."""
        if k == 0:
            return []
        if self.is_collapsed(k):
            return [] if self.G == 1 else [self.G]
        return [self.R]

    def nlead(self, k: int) -> int:
        """Number of leading (direction) dims of order-k coefficients."""
        return len(self.lead(k))

    def dim(self, d: int, ndim: int, k: int) -> int:
        """Source dimension ``d`` of a tensor of ``ndim`` dims, as a dim of its order-k coefficient."""
        return (d % ndim if ndim else 0) + self.nlead(k)

    def coef(self, x: Any, k: int) -> Value:
        """Coefficient k of argument x, broadcast-aligned to the output's rank.

        Coefficients of a lower-rank operand get unit dims inserted after the
        direction axis, so that elementwise broadcasting stays per direction.
        """
        if not isinstance(x, Jet):
            return x if k == 0 else None
        c = x[k]
        if c is None or k == 0 or self.nlead(k) == 0:
            return c
        for _ in range(self.out_ndim - x.ndim):
            c = aten.unsqueeze.default(c, 1)
        return c

    def rest_coef(self, x: Any, j: int, k: int) -> Value:
        """Coefficient j of x as a factor of a product feeding order k (sliced to R_top when collapsing)."""
        c = self.coef(x, j)
        if (
            c is None
            or j == 0
            or not self.is_collapsed(k)
            or self.R_top is None
            or self.R_top >= self.R
        ):
            return c
        return aten.slice.Tensor(c, 0, 0, self.R_top)

    def broadcast(self, c: Value, k: int, shape: Sequence[int]) -> Value:
        """Expand a coefficient of a ``shape``-shaped operand to the output's full shape."""
        if c is None or tuple(shape) == tuple(self.out_shape):
            return c
        return aten.expand.default(c, self.lead(k) + self.out_shape)

    def contract(self, r: Value) -> Value:
        """Collapse an ``(R, *S)`` term into the top-order layout (weighted sum over R)."""
        if r is None:
            return None
        if self.weights is None:
            return aten.sum.dim_IntList(r, [0])
        weights = self.weights
        if self.out_val.is_complex():  # einsum does not promote real weights to complex
            weights = aten._to_copy.default(weights, dtype=self.out_val.dtype)
        if self.G == 1 and self.weight_values is not None:
            w = self.weight_values
            if len(w) == 1:  # one direction carries the top order: no reduction at all
                return scale(aten.select.int(r, 0, 0), w[0])
            if all(x == 1 for x in w):
                return aten.sum.dim_IntList(r, [0])
        eq = "r,r...->..." if self.G == 1 else "gr,r...->g..."
        return aten.einsum.default(eq, [weights, r])

    def top(self, k: int, linear: Sequence[Value], rest: Sequence[tuple]) -> Value:
        """Combine the terms of output coefficient k.

        Args:
            k: the order.
            linear: terms linear in an input's order-k coefficient, already
                shaped ``lead(k) + S``.
            rest: terms ``(c, v, r)`` meaning ``c * v * r`` with ``v`` free of
                directions (or None) and ``r`` an ``(R, *S)`` product of
                lower-order coefficients. When order k is collapsed the sum over
                directions is applied to ``r`` before the multiplication by ``v``
                (cheaper, and exact since ``v`` does not depend on the direction).
        """
        parts = [t for t in linear if t is not None]
        for c, v, r in rest:
            if r is None or c == 0:
                continue
            if self.is_collapsed(k):
                r = self.contract(r)
            parts.append(scale(mul(v, r) if v is not None else r, c))
        return total(parts)


# -- small emitters that treat None as zero ------------------------------------------


def mul(a: Value, b: Value) -> Value:
    """Elementwise product; None (zero) absorbs, python 1 is the identity."""
    if a is None or b is None:
        return None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a * b
    if isinstance(a, (int, float)):
        a, b = b, a
    if isinstance(b, (int, float)):
        return scale(a, b)
    return aten.mul.Tensor(a, b)


def scale(a: Value, c: float) -> Value:
    """``c * a``; None (zero) stays None, c = 0 gives None, c = 1 returns a unchanged."""
    if a is None or c == 0:
        return None
    if c == 1:
        return a
    if isinstance(a, (int, float)):
        return a * c
    if c == -1:
        return aten.neg.default(a)
    return aten.mul.Tensor(a, c)


def add(a: Value, b: Value) -> Value:
    """``a + b`` with None as zero."""
    if a is None:
        return b
    if b is None:
        return a
    return aten.add.Tensor(a, b)


def total(terms: Sequence[Value]) -> Value:
    """Sum of the terms, None (zero) when all are None."""
    out = None
    for t in terms:
        out = add(out, t)
    return out


def power(a: Value, m: int) -> Value:
    """``a ** m`` for a positive integer m, as repeated elementwise products."""
    out = a
    for _ in range(m - 1):
        out = mul(out, a)
    return out


# -- combinatorics ---------------------------------------------------------------------


@functools.cache
def faa_di_bruno(k: int) -> tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]:
    """Terms of the k-th derivative of g(x(t)) in the derivative convention.

    Returns tuples ``(c, m, parts)``: ``y_k = sum c * g_m * prod_j x_j ** mult_j``
    over the integer partitions of k, ``parts = ((j, mult_j), ...)``,
    ``m = sum mult_j``, ``c = k! / prod(mult_j! (j!)^mult_j)`` (Faa di Bruno's formula).
    """
    out = []

    def partitions(n: int, largest: int):
        if n == 0:
            yield []
            return
        for j in range(min(n, largest), 0, -1):
            for p in partitions(n - j, j):
                yield [j] + p

    for p in partitions(k, k):
        mults: dict[int, int] = {}
        for j in p:
            mults[j] = mults.get(j, 0) + 1
        c = math.factorial(k)
        for j, m in mults.items():
            c //= math.factorial(m) * math.factorial(j) ** m
        out.append((c, len(p), tuple(sorted(mults.items()))))
    return tuple(out)


def compose(ctx: RuleContext, k: int, x: Jet, derivs: Sequence[Value]) -> Value:
    """Coefficient k of ``g(x)`` given ``derivs[m] = g^(m)(x_0)`` (Faa di Bruno).

    The term ``g_1 x_k`` is the one linear in the top coefficient; every other
    term is a product of lower-order coefficients with R directions.
    """
    linear, rest = [], []
    for c, m, parts in faa_di_bruno(k):
        g = derivs[m] if m < len(derivs) else None
        if parts == ((k, 1),):
            linear.append(mul(g, ctx.coef(x, k)))
            continue
        if g is None or isinstance(g, (int, float)) and g == 0:
            continue
        r = None
        for j, mult in parts:
            factor = power(ctx.rest_coef(x, j, k), mult)
            r = factor if r is None else mul(r, factor)
        rest.append((c, g, r))
    return ctx.top(k, linear, rest)


def leibniz(ctx: RuleContext, k: int, a: Any, b: Any, f: Callable[[Value, Value], Value]) -> Value:
    """Coefficient k of the bilinear ``f(a, b)``: ``sum_j C(k, j) f(a_j, b_{k-j})`` (Leibniz)."""

    def app(u: Value, v: Value) -> Value:
        return None if u is None or v is None else f(u, v)

    linear = [app(ctx.coef(a, k), ctx.coef(b, 0)), app(ctx.coef(a, 0), ctx.coef(b, k))]
    rest = [
        (math.comb(k, j), None, app(ctx.rest_coef(a, j, k), ctx.rest_coef(b, k - j, k)))
        for j in range(1, k)
    ]
    return ctx.top(k, linear, rest)
