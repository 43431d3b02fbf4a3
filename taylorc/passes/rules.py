"""The one registry of Taylor rules, keyed by ATen overload.

A rule is ``rule(ctx, k, *args, **kwargs) -> coefficient`` for orders
``k >= 1``: ``args`` are the op's arguments with every traced tensor replaced
by its :class:`~taylorc.passes.jet.Jet`; the result is a Proxy shaped
``ctx.lead(k) + S`` or ``None`` (zero). Order 0 is the op itself on the
values and needs no rule.

Rules are built with small helpers, in the style of JAX's
``jax/experimental/jet.py``:

* :func:`deflinear` -- a linear op applies to every coefficient (one line);
* :func:`def_deriv` -- an elementwise op needs only its derivative table,
  written in sympy and lowered to ATen (Faa di Bruno does the rest);
* :func:`def_bilinear` -- Leibniz' rule over a bilinear op;
* :func:`def_comp` -- a composite op is its identity over registered ops.

Users extend the registry with :func:`register_rule`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import sympy
import torch

from .jet import Jet, add, compose, leibniz, scale

aten = torch.ops.aten

Rule = Callable[..., object]


@dataclass
class RuleInfo:
    """A registered rule and what the docs say about it.

    Attributes:
        rule: ``rule(ctx, k, *args, **kwargs)`` for orders k >= 1.
        kind: ``"linear"``, ``"elementwise"``, ``"bilinear"``, ``"composite"`` or ``"user"``.
        smooth: False for ops whose derivatives of order >= 2 are zero only almost
            everywhere (a warning is issued at order >= 2).
        note: one line for the generated ops table.
    """

    rule: Rule
    kind: str
    smooth: bool = True
    note: str = ""


RULES: dict[torch._ops.OpOverload, RuleInfo] = {}

# Ops whose output does not vary with their input's value (a.e.): only the value propagates.
CONSTANT_OPS = {
    aten.zeros_like.default,
    aten.ones_like.default,
    aten.full_like.default,
    aten.empty_like.default,
    aten.detach.default,
    aten.sign.default,
    aten.floor.default,
    aten.ceil.default,
    aten.round.default,
    aten.gt.Scalar,
    aten.gt.Tensor,
    aten.lt.Scalar,
    aten.lt.Tensor,
    aten.ge.Scalar,
    aten.ge.Tensor,
    aten.le.Scalar,
    aten.le.Tensor,
    aten.eq.Scalar,
    aten.eq.Tensor,
    aten.ne.Scalar,
    aten.ne.Tensor,
    aten.logical_not.default,
    aten.logical_and.default,
    aten.logical_or.default,
}


def register_rule(
    op: torch._ops.OpOverload,
    rule: Rule,
    *,
    kind: str = "user",
    smooth: bool = True,
    note: str = "",
) -> None:
    """Register (or replace) the Taylor rule of an ATen overload.

    Args:
        op: the overload, e.g. ``torch.ops.mylib.myop.default`` (a packet such as
            ``torch.ops.aten.sin`` is resolved to its ``.default``).
        rule: ``rule(ctx, k, *args, **kwargs)`` returning the order-k Taylor
            coefficient (k >= 1) of the op's output, shaped ``ctx.lead(k) + S``,
            or ``None`` for zero. Tensor arguments arrive as
            :class:`~taylorc.passes.jet.Jet` (``jet[j]`` is coefficient j);
            use :func:`~taylorc.passes.jet.compose` for elementwise ops with a
            known derivative list, :func:`~taylorc.passes.jet.leibniz` for
            bilinear ones, and ``ctx.top(k, linear, rest)`` so the rule works
            in collapsed mode too (Dangel et al. 2025).
        kind, smooth, note: recorded for the ops table; ``smooth=False`` makes
            taylorc warn at derivative order >= 2.

    Raises:
        TypeError: ``op`` is not an ATen overload or ``rule`` is not callable.
    """
    if isinstance(op, torch._ops.OpOverloadPacket):
        op = op.default
    if not isinstance(op, torch._ops.OpOverload):
        raise TypeError(
            f"register_rule expects an op overload such as torch.ops.aten.sin.default, got {op!r}"
        )
    if not callable(rule):
        raise TypeError(f"register_rule expects a callable rule, got {rule!r}")
    RULES[op] = RuleInfo(rule, kind, smooth, note)


def _register(ops, rule, kind, smooth=True, note=""):
    for op in ops if isinstance(ops, (list, tuple)) else [ops]:
        RULES[op] = RuleInfo(rule, kind, smooth, note)


# -- linear ops ----------------------------------------------------------------------


def deflinear(ops, coef_fn: Callable, note: str = "") -> None:
    """Register a unary linear op: ``y_k = L(x_k)``.

    ``coef_fn(ctx, k, c, x, *args, **kwargs)`` applies the op to the coefficient
    ``c`` (leading shape ``ctx.lead(k)``) of the first argument ``x`` (a Jet).
    """

    def rule(ctx, k, x, *args, **kwargs):
        c = x[k]
        return None if c is None else coef_fn(ctx, k, c, x, *args, **kwargs)

    _register(ops, rule, "linear", note=note)


def _lead_dims(ctx, k, dims, ndim):
    return [ctx.dim(d, ndim, k) for d in dims]


deflinear(
    [aten.view.default, aten._unsafe_view.default, aten.reshape.default],
    lambda ctx, k, c, x, shape: aten.reshape.default(c, ctx.lead(k) + list(shape)),
)
deflinear(
    aten.unsqueeze.default,
    lambda ctx, k, c, x, d: aten.unsqueeze.default(c, d % (x.ndim + 1) + ctx.nlead(k)),
)
deflinear(aten.squeeze.dim, lambda ctx, k, c, x, d: aten.squeeze.dims(c, [ctx.dim(d, x.ndim, k)]))
deflinear(
    aten.squeeze.dims,
    lambda ctx, k, c, x, dims: aten.squeeze.dims(c, _lead_dims(ctx, k, dims, x.ndim)),
)
deflinear(
    aten.squeeze.default,
    lambda ctx, k, c, x: aten.squeeze.dims(
        c, [i + ctx.nlead(k) for i, s in enumerate(x.shape) if s == 1]
    ),
)
deflinear(
    aten.permute.default,
    lambda ctx, k, c, x, dims: aten.permute.default(
        c, list(range(ctx.nlead(k))) + _lead_dims(ctx, k, dims, x.ndim)
    ),
)
deflinear(
    aten.t.default,
    lambda ctx, k, c, x: c if x.ndim < 2 else aten.transpose.int(c, ctx.nlead(k), ctx.nlead(k) + 1),
)
deflinear(
    aten.transpose.int,
    lambda ctx, k, c, x, a, b: aten.transpose.int(c, ctx.dim(a, x.ndim, k), ctx.dim(b, x.ndim, k)),
)
deflinear(
    aten.flip.default,
    lambda ctx, k, c, x, dims: aten.flip.default(c, _lead_dims(ctx, k, dims, x.ndim)),
)
deflinear(aten.select.int, lambda ctx, k, c, x, d, i: aten.select.int(c, ctx.dim(d, x.ndim, k), i))
deflinear(
    aten.slice.Tensor,
    lambda ctx, k, c, x, d=0, start=None, end=None, step=1: aten.slice.Tensor(
        c, ctx.dim(d, x.ndim, k), start, end, step
    ),
)
deflinear(
    aten.index_select.default,
    lambda ctx, k, c, x, d, index: aten.index_select.default(c, ctx.dim(d, x.ndim, k), index[0]),
)
deflinear(
    [aten.alias.default, aten.clone.default, aten.contiguous.default, aten.lift_fresh_copy.default],
    lambda ctx, k, c, x, *a, **kw: c,
)
deflinear(aten._to_copy.default, lambda ctx, k, c, x, **kw: aten._to_copy.default(c, **kw))
deflinear(aten.neg.default, lambda ctx, k, c, x: aten.neg.default(c))


def _expand(ctx, k, c, x, size, implicit=False):
    for _ in range(len(size) - x.ndim):
        c = aten.unsqueeze.default(c, ctx.nlead(k))
    return aten.expand.default(c, ctx.lead(k) + list(size))


deflinear(aten.expand.default, _expand)


def _reduce(op_dim):
    def coef(ctx, k, c, x, dims=None, keepdim=False, dtype=None):
        dims = range(x.ndim) if not dims else dims
        kw = {} if dtype is None else {"dtype": dtype}
        return op_dim(c, _lead_dims(ctx, k, dims, x.ndim), keepdim, **kw)

    return coef


deflinear([aten.sum.dim_IntList, aten.sum.default], _reduce(aten.sum.dim_IntList))
deflinear([aten.mean.dim, aten.mean.default], _reduce(aten.mean.dim))


def _zeros_like_coef(ctx, k, jet):
    return aten.new_zeros.default(ctx.value, ctx.lead(k) + list(jet.shape))


def _cat_rule(ctx, k, tensors, dim=0, *, stack=False):
    coefs = [ctx.coef(t, k) if isinstance(t, Jet) else None for t in tensors]
    if all(c is None for c in coefs):
        return None
    coefs = [c if c is not None else _zeros_like_coef(ctx, k, t) for c, t in zip(coefs, tensors)]
    ndim = tensors[0].ndim + (1 if stack else 0)
    op = aten.stack.default if stack else aten.cat.default
    return op(coefs, ctx.dim(dim, ndim, k))


_register(aten.cat.default, _cat_rule, "linear")
_register(aten.stack.default, functools.partial(_cat_rule, stack=True), "linear")


# -- sums and products ---------------------------------------------------------------


def _add_rule(sign):
    def rule(ctx, k, a, b, alpha=1):
        ca, cb = ctx.coef(a, k), ctx.coef(b, k)
        if ca is None or cb is None:
            jet, c, s = (a, ca, 1) if cb is None else (b, cb, sign * alpha)
            return ctx.broadcast(scale(c, s), k, jet.shape)
        return add(ca, scale(cb, sign * alpha))

    return rule


_register([aten.add.Tensor, aten.add.Scalar], _add_rule(1), "linear")
_register([aten.sub.Tensor, aten.sub.Scalar], _add_rule(-1), "linear")


def def_bilinear(ops, f: Callable, note: str = "") -> None:
    """Register a bilinear op ``f(a, b)`` by Leibniz' rule ``y_k = sum_j C(k,j) f(a_j, b_{k-j})``.

    ``f`` must broadcast over a leading direction axis on either operand.
    """

    def rule(ctx, k, a, b):
        return leibniz(ctx, k, a, b, f)

    _register(ops, rule, "bilinear", note=note)


def _matmul(a, b):
    return aten.matmul.default(a, b)


def_bilinear([aten.mul.Tensor, aten.mul.Scalar], lambda a, b: aten.mul.Tensor(a, b))
def_bilinear([aten.mm.default, aten.bmm.default], _matmul, note="matmul over the direction axis")


def _matmul_rule(ctx, k, a, b):
    if min(a.ndim, b.ndim) < 2:
        # A 1-d operand changes matmul's meaning once a direction axis is added.
        return propagate_composite(
            ctx, k, lambda u, v: torch.ops.aten.matmul(u, v), (a, b), {}, decompose=True
        )
    return leibniz(ctx, k, a, b, _matmul)


_register(aten.matmul.default, _matmul_rule, "bilinear")


def _addmm_rule(ctx, k, bias, a, b, *, beta=1, alpha=1):
    prod = scale(leibniz(ctx, k, a, b, _matmul), alpha)
    cb = scale(ctx.coef(bias, k), beta)
    if prod is None:
        return ctx.broadcast(cb, k, bias.shape) if cb is not None else None
    return add(prod, cb)


_register(aten.addmm.default, _addmm_rule, "bilinear", note="bias + Leibniz over mm")


def propagate_composite(ctx, k, identity, args, kwargs, decompose=False):
    from .taylor import propagate_composite as run  # the taylor pass owns the propagation loop

    return run(ctx, k, identity, args, kwargs, decompose=decompose)


def _div_rule(ctx, k, a, b):
    if not isinstance(b, Jet) or b.is_constant:
        c = ctx.coef(a, k)
        return None if c is None else aten.div.Tensor(c, ctx.coef(b, 0))
    return _composite_div(ctx, k, a, b)


# -- elementwise ops from derivative tables -------------------------------------------

_X, _Y = sympy.symbols("x y")


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
                    d = sympy.expand(sympy.diff(d, _Y) * self.ode)
            else:
                d = sympy.diff(self.expr, _X, m).subs(self.expr, _Y)
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
        coeff, terms = expr.as_coeff_add()
        out = None
        for t in terms:
            out = add(out, lower_sympy(t, env, memo))
        if coeff != 0:
            out = aten.add.Tensor(out, float(coeff))
    elif expr.is_Mul:
        coeff, rest = expr.as_coeff_mul()
        out = None
        for t in rest:
            v = lower_sympy(t, env, memo)
            out = v if out is None else aten.mul.Tensor(out, v)
        out = scale(out, float(coeff))
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
) -> None:
    """Register an elementwise op by its derivative table (Faa di Bruno's formula).

    ``table`` is a :class:`DerivativeTable`, or a function of the op's extra
    arguments returning one (``pow.Tensor_Scalar`` depends on its exponent).
    """

    def rule(ctx, k, x, *params):
        derivs = ctx.cache.get("derivs")
        if derivs is None:
            t = table(*params) if callable(table) else table
            env, memo = {_X: x[0], _Y: ctx.value}, {}
            derivs = [ctx.value] + [
                _number_or_none(lower_sympy(t.derivative(m), env, memo))
                for m in range(1, ctx.K + 1)
            ]
            ctx.cache["derivs"] = derivs
        return compose(ctx, k, x, derivs)

    _register(ops, rule, "elementwise", smooth=smooth, note=note)


def _number_or_none(v):
    return None if isinstance(v, (int, float)) and v == 0 else v


def _table(expr_of_x):
    return DerivativeTable(expr=expr_of_x(_X))


def_deriv(aten.tanh.default, DerivativeTable(ode=1 - _Y**2), note="g' = 1 - g^2")
def_deriv(aten.sigmoid.default, DerivativeTable(ode=_Y * (1 - _Y)), note="g' = g (1 - g)")
def_deriv(aten.exp.default, DerivativeTable(ode=_Y), note="g' = g")
def_deriv(aten.sin.default, _table(sympy.sin))
def_deriv(aten.cos.default, _table(sympy.cos))
def_deriv(aten.log.default, _table(sympy.log))
def_deriv(aten.sqrt.default, _table(sympy.sqrt))
def_deriv(aten.rsqrt.default, _table(lambda x: 1 / sympy.sqrt(x)))
def_deriv(aten.reciprocal.default, _table(lambda x: 1 / x))
def_deriv(aten.sinh.default, _table(sympy.sinh))
def_deriv(aten.cosh.default, _table(sympy.cosh))
def_deriv(aten.atan.default, _table(sympy.atan))
def_deriv(aten.erf.default, _table(sympy.erf))
def_deriv(aten.log1p.default, _table(lambda x: sympy.log(1 + x)))
def_deriv(aten.expm1.default, _table(lambda x: sympy.exp(x) - 1))
def_deriv(
    aten.pow.Tensor_Scalar,
    functools.cache(lambda p: DerivativeTable(expr=_X ** sympy.nsimplify(p))),
    note="scalar exponent",
)


def _nonsmooth(first_derivative):
    """Rule of a piecewise-linear op: g1 from ``first_derivative(x0, y0)``, g_m = 0 for m >= 2."""

    def rule(ctx, k, x, *params):
        if ctx.K >= 2 and ctx.warn is not None and "warned" not in ctx.cache:
            ctx.cache["warned"] = True
            ctx.warn(
                f"{ctx.node.target} is not smooth: its derivatives of order >= 2 are taken as zero "
                f"(exact almost everywhere, wrong at the kinks) at node {ctx.node.name}"
            )
        g1 = ctx.cache.setdefault("g1", first_derivative(x[0], ctx.value))
        return compose(ctx, k, x, [ctx.value, g1])

    return rule


_register(
    aten.relu.default,
    _nonsmooth(lambda x, y: aten.sign.default(y)),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
_register(
    aten.abs.default,
    _nonsmooth(lambda x, y: aten.sign.default(x)),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)


# -- composites: identities over registered ops ---------------------------------------


def def_comp(ops, identity: Callable, note: str = "") -> None:
    """Register an op by an identity over registered ops, e.g. ``a / b = a * reciprocal(b)``.

    ``identity`` is a function of tensors (and the op's other arguments); the
    taylor pass traces it to ATen and propagates the jets through the trace.
    """

    def rule(ctx, k, *args, **kwargs):
        return propagate_composite(ctx, k, identity, args, kwargs)

    _register(ops, rule, "composite", note=note)


def _composite_div(ctx, k, a, b):
    return propagate_composite(ctx, k, lambda u, v: u * torch.reciprocal(v), (a, b), {})


_register(
    [aten.div.Tensor, aten.div.Scalar],
    _div_rule,
    "composite",
    note="a * reciprocal(b) when b varies",
)
def_comp(aten.linear.default, lambda x, w, b=None: torch.nn.functional.linear(x, w, b))
