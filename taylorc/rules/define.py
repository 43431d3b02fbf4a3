"""The rule registry (``RULES``) and the helpers that define its entries.

A rule is ``rule(ctx, k, *args, **kwargs) -> coefficient`` for orders
``k >= 1``: ``args`` are the op's arguments with every traced tensor replaced
by its :class:`~taylorc.rules.jet.Jet`; the result is a Proxy shaped
``ctx.lead(k) + S`` or ``None`` (zero). Order 0 is the op itself on the
values and needs no rule.

Rules are built with small helpers, in the style of JAX's
``jax/experimental/jet.py``:

* :func:`deflinear` -- a linear op applies to every coefficient (one line);
* :func:`~taylorc.rules.derivatives.def_deriv` -- an elementwise op needs only its
  derivative table, written in sympy and lowered to ATen (Faa di Bruno does the rest);
* :func:`def_bilinear` -- Leibniz' rule over a bilinear op;
* :func:`def_comp` -- a composite op is its identity over registered ops;
* :func:`nonsmooth`, :func:`piecewise`, :func:`nonsmooth_comp` -- piecewise ops, exact
  almost everywhere, with the warning at order >= 2.

The entries themselves are in :mod:`taylorc.rules.table`; users extend the registry
with :func:`register_rule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ir.facts import having
from .jet import compose, leibniz

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


def register(ops, rule, kind, smooth=True, note=""):
    """Register ``rule`` for one overload or a list of them, with its ops-table entry."""
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

    register(ops, rule, "linear", note=note)


def def_bilinear(ops, f: Callable, note: str = "") -> None:
    """Register a bilinear op ``f(a, b)`` by Leibniz' rule ``y_k = sum_j C(k,j) f(a_j, b_{k-j})``.

    ``f`` must broadcast over a leading direction axis on either operand.
    """

    def rule(ctx, k, a, b):
        return leibniz(ctx, k, a, b, f)

    register(ops, rule, "bilinear", note=note)


def propagate_composite(ctx, k, identity, args, kwargs):
    """Coefficient k of a composite op: see :func:`taylorc.passes.taylor.propagate_composite`."""
    if ctx.composite is None:
        raise RuntimeError("composite rules need RuleContext.composite (the taylor pass sets it)")
    return ctx.composite(ctx, k, identity, args, kwargs)


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

    register(ops, rule, "composite", note=note)


def warn_nonsmooth(ctx, how: str) -> None:
    """Warn once per node that a piecewise op is exact only almost everywhere (at order >= 2)."""
    if ctx.K >= 2 and ctx.warn is not None and "warned" not in ctx.cache:
        ctx.cache["warned"] = True
        ctx.warn(
            f"{ctx.node.target} is not smooth: {how} (exact almost everywhere, wrong at the kinks) "
            f"at node {ctx.node.name}"
        )


def nonsmooth(first_derivative):
    """Rule of a piecewise-linear op: g1 from ``first_derivative(x0, y0)``, g_m = 0 for m >= 2."""

    def rule(ctx, k, x, *params):
        warn_nonsmooth(ctx, "its derivatives of order >= 2 are taken as zero")
        g1 = ctx.cache.setdefault("g1", first_derivative(x[0], ctx.value))
        return compose(ctx, k, x, [ctx.value, g1])

    return rule


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


def piecewise(pieces_fn):
    """A piecewise-smooth op: derivatives from ``pieces_fn(ctx, x0, *params)``; warns at order >= 2."""

    def rule(ctx, k, x, *params, **kwparams):
        warn_nonsmooth(ctx, "its derivatives of order >= 2 are those of the active piece")
        if "derivs" not in ctx.cache:
            ctx.cache["derivs"] = _select_derivs(ctx, x, pieces_fn(ctx, x[0], *params, **kwparams))
        return compose(ctx, k, x, ctx.cache["derivs"])

    return rule


def nonsmooth_comp(identity: Callable, how: str) -> Rule:
    """A composite rule of a piecewise op: the identity's active piece; warns at order >= 2."""

    def rule(ctx, k, *args, **kwargs):
        warn_nonsmooth(ctx, how)
        return propagate_composite(ctx, k, identity, args, kwargs)

    return rule
