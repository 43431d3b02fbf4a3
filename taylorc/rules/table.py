"""The one registry of Taylor rules, keyed by ATen overload.

A rule is ``rule(ctx, k, *args, **kwargs) -> coefficient`` for orders
``k >= 1``: ``args`` are the op's arguments with every traced tensor replaced
by its :class:`~taylorc.rules.jet.Jet`; the result is a Proxy shaped
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

import dataclasses
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import sympy
import torch

from ..errors import UnsupportedOperatorError
from ..ir.facts import having
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
CONSTANT_OPS = set(having("constant_output"))


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
            :class:`~taylorc.rules.jet.Jet` (``jet[j]`` is coefficient j);
            use :func:`~taylorc.rules.jet.compose` for elementwise ops with a
            known derivative list, :func:`~taylorc.rules.jet.leibniz` for
            bilinear ones, and ``ctx.top(k, linear, rest)`` so the rule works
            in collapsed mode too (Dangel et al. 2025).
        kind: recorded for the ops table (``"user"`` by default).
        smooth: False makes taylorc warn at derivative order >= 2.
        note: one line for the ops table.

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


def elementwise(op) -> bool:
    """Whether the registered rule of ``op`` is elementwise: the batch analysis follows such
    an op exactly (the ``pointwise`` argument of
    :func:`taylorc.ir.coupling.check_batch_independence`)."""
    info = RULES.get(op)
    return info is not None and info.kind == "elementwise"


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
        return propagate_composite(ctx, k, lambda u, v: torch.ops.aten.matmul(u, v), (a, b), {})
    return leibniz(ctx, k, a, b, _matmul)


_register(aten.matmul.default, _matmul_rule, "bilinear")


def _addmm_rule(ctx, k, bias, a, b, *, beta=1, alpha=1):
    prod = scale(leibniz(ctx, k, a, b, _matmul), alpha)
    cb = scale(ctx.coef(bias, k), beta)
    if prod is None:
        return ctx.broadcast(cb, k, bias.shape) if cb is not None else None
    return add(prod, cb)


_register(aten.addmm.default, _addmm_rule, "bilinear", note="bias + Leibniz over mm")


def propagate_composite(ctx, k, identity, args, kwargs):
    """Coefficient k of a composite op: see :func:`taylorc.passes.taylor.propagate_composite`."""
    if ctx.composite is None:
        raise RuntimeError("composite rules need RuleContext.composite (the taylor pass sets it)")
    return ctx.composite(ctx, k, identity, args, kwargs)


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
                    d = (
                        sympy.diff(d, _Y) * self.ode
                    )  # unexpanded: shares g1 (1 - y^2 for tanh), no powers
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


def warn_nonsmooth(ctx, how: str) -> None:
    """Warn once per node that a piecewise op is exact only almost everywhere (at order >= 2)."""
    if ctx.K >= 2 and ctx.warn is not None and "warned" not in ctx.cache:
        ctx.cache["warned"] = True
        ctx.warn(
            f"{ctx.node.target} is not smooth: {how} (exact almost everywhere, wrong at the kinks) "
            f"at node {ctx.node.name}"
        )


def _nonsmooth(first_derivative):
    """Rule of a piecewise-linear op: g1 from ``first_derivative(x0, y0)``, g_m = 0 for m >= 2."""

    def rule(ctx, k, x, *params):
        warn_nonsmooth(ctx, "its derivatives of order >= 2 are taken as zero")
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
_real_abs = _nonsmooth(lambda x, y: aten.sign.default(x))


def _abs_rule(ctx, k, x):
    if ctx.node.args[0].meta["val"].is_complex():
        # |z| is not holomorphic: sqrt(re^2 + im^2) of the real and imaginary jets
        return propagate_composite(
            ctx, k, lambda z: torch.sqrt(torch.real(z) ** 2 + torch.imag(z) ** 2), (x,), {}
        )
    return _real_abs(ctx, k, x)


_register(
    aten.abs.default,
    _abs_rule,
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2; complex: sqrt(re^2 + im^2)",
)


# -- composites: identities over registered ops ---------------------------------------


def def_comp(ops, identity: Callable, note: str = "", quiet: bool = False) -> None:
    """Register an op by an identity over registered ops, e.g. ``a / b = a * reciprocal(b)``.

    ``identity`` is a function of tensors (and the op's other arguments); the
    taylor pass traces it to ATen and propagates the jets through the trace.
    ``quiet=True`` silences the non-smooth warnings of the trace, for identities
    whose kinks cancel exactly (softmax's max shift: softmax(x - m) = softmax(x)
    for ANY m(x), so every derivative is unaffected by m's).
    """

    def rule(ctx, k, *args, **kwargs):
        if quiet:
            ctx = dataclasses.replace(ctx, warn=None)
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


# -- activations and elementwise ops of PINN practice ----------------------------------


def _gelu_table(approximate="none"):
    if approximate == "tanh":
        c = sympy.sqrt(2 / sympy.pi)
        return DerivativeTable(
            expr=_X / 2 * (1 + sympy.tanh(c * (_X + sympy.Rational(44715, 1000000) * _X**3)))
        )
    return DerivativeTable(expr=_X / 2 * (1 + sympy.erf(_X / sympy.sqrt(2))))


def_deriv(aten.gelu.default, functools.cache(_gelu_table), note="erf and tanh forms")
def_deriv(aten.tan.default, _table(sympy.tan))
def_deriv(aten.asinh.default, _table(sympy.asinh))
def_deriv(aten.silu.default, _table(lambda x: x / (1 + sympy.exp(-x))), note="x sigmoid(x)")
def_deriv(
    aten.softplus.default,
    functools.cache(
        lambda beta=1, threshold=20: DerivativeTable(
            expr=sympy.log(1 + sympy.exp(sympy.nsimplify(beta) * _X)) / sympy.nsimplify(beta)
        )
    ),
    note="threshold branch ignored: the smooth formula everywhere",
)


def _select_derivs(ctx, x, pieces):
    """Derivative list of a piecewise op: ``pieces = (mask, derivs_true, derivs_false)``."""
    mask, a, b = pieces
    out = [ctx.value]
    for m in range(1, ctx.K + 1):
        da = a[m] if m < len(a) else 0.0
        db = b[m] if m < len(b) else 0.0
        if isinstance(da, (int, float)) and isinstance(db, (int, float)) and da == db == 0:
            out.append(None)
            continue
        da = da if not isinstance(da, (int, float)) else aten.full_like.default(x[0], float(da))
        db = db if not isinstance(db, (int, float)) else aten.full_like.default(x[0], float(db))
        out.append(aten.where.self(mask, da, db))
    return out


def _piecewise(pieces_fn):
    """A piecewise-smooth op: derivatives from ``pieces_fn(ctx, x0, *params)``; warns at order >= 2."""

    def rule(ctx, k, x, *params, **kwparams):
        warn_nonsmooth(ctx, "its derivatives of order >= 2 are those of the active piece")
        if "derivs" not in ctx.cache:
            ctx.cache["derivs"] = _select_derivs(ctx, x, pieces_fn(ctx, x[0], *params, **kwparams))
        return compose(ctx, k, x, ctx.cache["derivs"])

    return rule


def _elu_pieces(ctx, x0, alpha=1.0, scale=1.0, input_scale=1.0):
    e = aten.exp.default(aten.mul.Tensor(x0, float(input_scale)))
    neg = [None] + [
        aten.mul.Tensor(e, float(scale * alpha * input_scale**m)) for m in range(1, ctx.K + 1)
    ]
    return aten.gt.Scalar(x0, 0.0), [None, float(scale)], neg


def _leaky_pieces(ctx, x0, negative_slope=0.01):
    return aten.gt.Scalar(x0, 0.0), [None, 1.0], [None, float(negative_slope)]


def _clamp_pieces(ctx, x0, lo=None, hi=None):
    inside = aten.full_like.default(x0, 1.0)
    if lo is not None:
        inside = aten.mul.Tensor(inside, aten.gt.Scalar(x0, float(lo)))
    if hi is not None:
        inside = aten.mul.Tensor(inside, aten.lt.Scalar(x0, float(hi)))
    return aten.gt.Scalar(inside, 0.5), [None, 1.0], [None, 0.0]


_register(
    aten.elu.default,
    _piecewise(_elu_pieces),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
_register(
    aten.leaky_relu.default,
    _piecewise(_leaky_pieces),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
_register(
    [aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default],
    _piecewise(_clamp_pieces),
    "elementwise",
    smooth=False,
    note="derivative 0 outside the bounds; warns at order >= 2",
)


def _where_rule(ctx, k, cond, a, b):
    ca, cb = ctx.coef(a, k), ctx.coef(b, k)
    if ca is None and cb is None:
        return None
    lead_shape = ctx.lead(k) + ctx.out_shape
    ca = ca if ca is not None else aten.new_zeros.default(ctx.value, lead_shape)
    cb = cb if cb is not None else aten.new_zeros.default(ctx.value, lead_shape)
    return aten.where.self(cond[0] if isinstance(cond, Jet) else cond, ca, cb)


_register(aten.where.self, _where_rule, "linear", note="the condition carries no Taylor terms")


# -- several outputs, reductions, indexing --------------------------------------------


def _getitem_rule(ctx, k, x, i):
    c = x[k] if isinstance(x, Jet) else None
    return None if c is None else c[i]


_register(operator.getitem, _getitem_rule, "linear", note="selects one output of a multi-output op")
deflinear(
    aten.split_with_sizes.default,
    lambda ctx, k, c, x, sizes, dim=0: aten.split_with_sizes.default(
        c, sizes, ctx.dim(dim, x.ndim, k)
    ),
)
deflinear(
    aten.split.Tensor,
    lambda ctx, k, c, x, size, dim=0: aten.split.Tensor(c, size, ctx.dim(dim, x.ndim, k)),
)
deflinear(aten.unbind.int, lambda ctx, k, c, x, dim=0: aten.unbind.int(c, ctx.dim(dim, x.ndim, k)))


def _gather(ctx, k, c, x, dim, index, sparse_grad=False):
    idx = index[0] if isinstance(index, Jet) else index
    shape = list(ctx.out_shape)
    if ctx.nlead(k):
        idx = aten.expand.default(aten.unsqueeze.default(idx, 0), ctx.lead(k) + shape)
    return aten.gather.default(c, ctx.dim(dim, x.ndim, k), idx)


deflinear(aten.gather.default, _gather)


def _repeat(ctx, k, c, x, repeats):
    for _ in range(len(repeats) - x.ndim):
        c = aten.unsqueeze.default(c, ctx.nlead(k))
    return aten.repeat.default(c, [1] * ctx.nlead(k) + list(repeats))


deflinear(aten.repeat.default, _repeat)
deflinear(
    aten.constant_pad_nd.default,
    lambda ctx, k, c, x, pad, value=0: aten.constant_pad_nd.default(c, pad, 0.0),
)
deflinear(aten.view_as_real.default, lambda ctx, k, c, x: aten.view_as_real.default(c))
deflinear(
    aten.view_as_complex.default,
    lambda ctx, k, c, x: aten.view_as_complex.default(aten.contiguous.default(c)),
)
deflinear(aten.real.default, lambda ctx, k, c, x: aten.real.default(c))
deflinear(aten.imag.default, lambda ctx, k, c, x: aten.imag.default(c))
deflinear(
    aten._fft_r2c.default,
    lambda ctx, k, c, x, dim, normalization, onesided: aten._fft_r2c.default(
        c, _lead_dims(ctx, k, dim, x.ndim), normalization, onesided
    ),
)
deflinear(
    aten._fft_c2r.default,
    lambda ctx, k, c, x, dim, normalization, last_dim_size: aten._fft_c2r.default(
        c, _lead_dims(ctx, k, dim, x.ndim), normalization, last_dim_size
    ),
)
deflinear(
    aten._fft_c2c.default,
    lambda ctx, k, c, x, dim, normalization, forward: aten._fft_c2c.default(
        c, _lead_dims(ctx, k, dim, x.ndim), normalization, forward
    ),
)


def _extremum(op_index):
    """amax / amin: the coefficient of the selected entry (exact a.e.; warns at order >= 2)."""

    def rule(ctx, k, x, dim=(), keepdim=False):
        dims = list(dim) if dim else list(range(x.ndim))
        if len(dims) != 1:
            raise NotImplementedError(
                f"{ctx.node.target} over several dims: reduce one dim at a time"
            )
        warn_nonsmooth(ctx, "derivatives follow the selected entry")
        d = dims[0] % x.ndim
        idx = ctx.cache.setdefault("index", op_index(x[0], d, True))
        c = x[k]
        if c is None:
            return None
        if ctx.nlead(k):
            shape = list(x.shape)
            shape[d] = 1
            idx = aten.expand.default(aten.unsqueeze.default(idx, 0), ctx.lead(k) + shape)
        out = aten.gather.default(c, d + ctx.nlead(k), idx)
        return out if keepdim else aten.squeeze.dims(out, [d + ctx.nlead(k)])

    return rule


_register(
    aten.amax.default,
    _extremum(aten.argmax.default),
    "linear",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
_register(
    aten.amin.default,
    _extremum(aten.argmin.default),
    "linear",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)


def _convolution(ctx, k, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if isinstance(w, Jet) and not w.is_constant:
        raise NotImplementedError("convolution whose weight depends on the coordinates")
    c = x[k]
    if c is None:
        return None
    n = ctx.nlead(k)
    if n:
        c = aten.reshape.default(c, [-1] + list(x.shape[1:]))
    out = aten.convolution.default(
        c,
        w[0] if isinstance(w, Jet) else w,
        None,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups,
    )
    return aten.reshape.default(out, ctx.lead(k) + ctx.out_shape) if n else out


_register(
    aten.convolution.default,
    _convolution,
    "linear",
    note="linear in the input; directions folded into the batch",
)


# -- composites over registered ops -----------------------------------------------------


def _layer_norm_identity(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    xc = x - mean
    rstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)
    out = xc * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def _softmax_identity(x, dim, half_to_float=False):
    e = torch.exp(x - x.amax(dim, keepdim=True))  # the shift cancels exactly (see def_comp's quiet)
    return e / e.sum(dim, keepdim=True)


def _log_softmax_identity(x, dim, half_to_float=False):
    z = x - x.amax(dim, keepdim=True)
    return z - torch.log(torch.exp(z).sum(dim, keepdim=True))


def _vector_norm_identity(x, ord=2, dim=None, keepdim=False, dtype=None):
    if ord != 2:
        raise NotImplementedError(f"linalg.vector_norm with ord={ord}: only the 2-norm is smooth")
    return torch.sqrt(
        (x * x).sum(dim if dim is not None else list(range(x.dim())), keepdim=keepdim)
    )


def_comp(
    aten.native_layer_norm.default, _layer_norm_identity, note="(x - mean) rsqrt(var + eps), affine"
)
def_comp(
    aten._softmax.default,
    _softmax_identity,
    note="exp(x - max) / sum; the max shift cancels",
    quiet=True,
)
def_comp(
    aten._log_softmax.default,
    _log_softmax_identity,
    note="(x - max) - log sum exp(x - max)",
    quiet=True,
)
def_comp(aten.linalg_vector_norm.default, _vector_norm_identity, note="2-norm only")
def_comp(
    aten.pow.Tensor_Tensor, lambda a, b: torch.exp(b * torch.log(a)), note="a > 0: exp(b log a)"
)
def_comp(aten.baddbmm.default, lambda s, a, b, beta=1, alpha=1: beta * s + alpha * torch.bmm(a, b))


def _batch_norm_eval_identity(x, weight, bias, running_mean, running_var, training, momentum, eps):
    if training:  # the batch check rejects it before any rule runs
        raise NotImplementedError("batch norm in training mode couples the batch rows")
    shape = [1, -1] + [1] * (x.dim() - 2)
    out = (x - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out, running_mean, running_var


def_comp(
    aten.native_batch_norm.default,
    _batch_norm_eval_identity,
    note="eval mode: an affine map per channel",
)


# -- piecewise ops, pooling, group norm, products and variances, distances -------------


def _nonsmooth_comp(identity: Callable, how: str) -> Rule:
    """A composite rule of a piecewise op: the identity's active piece; warns at order >= 2."""

    def rule(ctx, k, *args, **kwargs):
        warn_nonsmooth(ctx, how)
        return propagate_composite(ctx, k, identity, args, kwargs)

    return rule


# hardtanh is clamp(x, min_val, max_val) with the bounds -1 and 1 by default
_register(
    aten.hardtanh.default,
    _piecewise(lambda ctx, x0, lo=-1.0, hi=1.0: _clamp_pieces(ctx, x0, lo, hi)),
    "elementwise",
    smooth=False,
    note="clamp(x, min_val, max_val); warns at order >= 2",
)


def _clamp_tensor_identity(x, lo=None, hi=None):
    # clamp(x, lo, hi) = min(max(x, lo), hi) (torch's order: hi wins when lo > hi); each
    # where picks the active operand, whose coefficients are the result's (a.e.)
    if lo is not None:
        x = torch.where(x < lo, lo, x)
    if hi is not None:
        x = torch.where(x > hi, hi, x)
    return x


# clamp_min with a tensor bound is what capture makes of a decomposition's in-place
# clamp_min_ (cosine_similarity's norm floor; capture.functionalize_leftovers)
for _op, _note in (
    (aten.clamp.Tensor, "tensor bounds: where(x < lo, lo, x), then hi; warns at order >= 2"),
    (aten.clamp_min.Tensor, "where(x < lo, lo, x); warns at order >= 2"),
):
    _register(
        _op,
        _nonsmooth_comp(_clamp_tensor_identity, "derivatives follow the active bound or input"),
        "composite",
        smooth=False,
        note=_note,
    )
# maximum(a, b) = where(a >= b, a, b): the larger operand's coefficients (a.e.)
_register(
    aten.maximum.default,
    _nonsmooth_comp(
        lambda a, b: torch.where(a >= b, a, b), "derivatives follow the larger operand"
    ),
    "composite",
    smooth=False,
    note="where(a >= b, a, b); warns at order >= 2",
)
_register(
    aten.minimum.default,
    _nonsmooth_comp(
        lambda a, b: torch.where(a <= b, a, b), "derivatives follow the smaller operand"
    ),
    "composite",
    smooth=False,
    note="where(a <= b, a, b); warns at order >= 2",
)


def _prod_identity(x, dim=None, keepdim=False, *, dtype=None):
    """prod along one dim (all elements when dim is None) as a tree of pairwise products.

    No exp(sum(log x)): that breaks at zero and negative entries; Leibniz through
    the ceil(log2 n) levels of products is exact everywhere.
    """
    x = x if dtype is None else x.to(dtype)
    if dim is None:
        x, d = x.reshape(-1), 0
    else:
        d = dim % x.dim()
    while x.shape[d] > 1:
        n = x.shape[d]
        h = n // 2
        y = x.narrow(d, 0, h) * x.narrow(d, h, h)
        if n % 2:  # the odd last entry joins the first pair
            head = y.narrow(d, 0, 1) * x.narrow(d, n - 1, 1)
            y = torch.cat([head, y.narrow(d, 1, h - 1)], d)
        x = y
    if dim is None:
        return x.reshape(())
    return x if keepdim else x.squeeze(d)


def_comp(
    [aten.prod.default, aten.prod.dim_int],
    _prod_identity,
    note="tree of pairwise products (Leibniz); zeros and signs allowed",
)


def _var_identity(x, dim=None, *, correction=None, keepdim=False):
    """var = sum((x - mean)^2) / (N - correction) over the dims (all when dim is None or [])."""
    dims = list(range(x.dim())) if not dim else [d % x.dim() for d in dim]
    n = 1
    for d in dims:
        n *= x.shape[d]
    c = 1 if correction is None else correction
    xc = x - x.mean(dims, keepdim=True)
    return (xc * xc).sum(dims, keepdim=keepdim) / (n - c)


def _var_mean_identity(x, dim=None, *, correction=None, keepdim=False):
    dims = list(range(x.dim())) if not dim else list(dim)
    return (
        _var_identity(x, dim, correction=correction, keepdim=keepdim),
        x.mean(dims, keepdim=keepdim),
    )


def_comp(aten.var.correction, _var_identity, note="sum((x - mean)^2) / (N - correction); std: sqrt")
def_comp(aten.var_mean.correction, _var_mean_identity, note="(var, mean) as var.correction")
deflinear(
    aten.diagonal.default,
    lambda ctx, k, c, x, offset=0, dim1=0, dim2=1: aten.diagonal.default(
        c, offset, ctx.dim(dim1, x.ndim, k), ctx.dim(dim2, x.ndim, k)
    ),
    note="linear; trace and einsum('ii->') capture to diagonal + sum",
)


def _avg_pool2d(ctx, k, c, x, *args, **kwargs):
    # linear and per plane: every leading dim (directions, batch, channels) folds into one
    h, w = x.shape[-2:]
    out = aten.avg_pool2d.default(aten.reshape.default(c, [-1, h, w]), *args, **kwargs)
    return aten.reshape.default(out, ctx.lead(k) + ctx.out_shape)


deflinear(
    aten.avg_pool2d.default,
    _avg_pool2d,
    note="linear; avg_pool1d captures to it; directions folded into the planes",
)


def _max_pool2d_rule(ctx, k, x, *args, **kwargs):
    """max pool: the coefficients of the selected entry (torch's flat per-plane indices)."""
    warn_nonsmooth(ctx, "derivatives follow the selected entry")
    c = x[k]
    if c is None:
        return None, None
    lead, shape = ctx.lead(k), ctx.out_shape
    flat = aten.reshape.default(c, lead + list(x.shape[:-2]) + [x.shape[-2] * x.shape[-1]])
    plane = shape[:-2] + [shape[-2] * shape[-1]]
    idx = aten.reshape.default(ctx.value[1], [1] * len(lead) + plane)
    idx = aten.expand.default(idx, lead + plane)
    return aten.reshape.default(aten.gather.default(flat, -1, idx), lead + shape), None


_register(
    aten.max_pool2d_with_indices.default,
    _max_pool2d_rule,
    "linear",
    smooth=False,
    note="gathers the selected entries; max_pool1d captures to it; warns at order >= 2",
)


def _group_norm_identity(x, weight, bias, N, C, HxW, group, eps):
    """(x - mean) rsqrt(var + eps) over each group of C/group channels, then the affine map."""
    xg = x.reshape(N, group, -1)
    mean = xg.mean(-1, keepdim=True)
    xc = xg - mean
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    out = (xc * rstd).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out, mean.reshape(N, group), rstd.reshape(N, group)


def_comp(
    aten.native_group_norm.default,
    _group_norm_identity,
    note="(x - mean) rsqrt(var + eps) per group, affine per channel",
)


def _cdist_identity(x1, x2, p=2.0, compute_mode=None):
    """||x1_i - x2_j||_p over the last dim, from the differences (not the mm expansion)."""
    d = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    if p == 2:
        return torch.sqrt((d * d).sum(-1))
    if p == float("inf"):
        return d.abs().amax(-1)
    return (d.abs() ** p).sum(-1) ** (1.0 / p)


def _cdist_rule(ctx, k, x1, x2, p, compute_mode=None):
    if p <= 0:
        raise UnsupportedOperatorError(
            f"no Taylor rule for the ATen op {ctx.node.target} with p={p} (graph node "
            f"'{ctx.node.name}'): a count of nonzeros or a min is not differentiable; use p > 0"
        )
    return propagate_composite(ctx, k, _cdist_identity, (x1, x2, p, compute_mode), {})


_register(
    aten._cdist_forward.default,
    _cdist_rule,
    "composite",
    note="sqrt(sum d^2) for p = 2 (smooth off the diagonal); other p > 0 by |d| (warns)",
)
