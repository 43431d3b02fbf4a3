"""Methods built on reverse mode: ``Nested`` (the reference), ``ZCS`` and ``Auto``.

ZCS: Leng, Shankar, Thiyagalingam, "Zero Coordinate Shift: Whetted Automatic
Differentiation for Physics-informed Operator Learning", J. Comput. Phys. 2024.
"""

from __future__ import annotations

from .. import operators as _ops
from ..capture import flattened
from ..passes.zcs import ZCSPass, shift_inputs
from .base import Method, width
from .nested import func_loop, nested
from .taylor import Collapsed, finish


class Nested(Method):
    """Nested autograd with torch.func: the reference (FuncLoop for models of several arguments)."""

    name = "nested"
    builds_graph = False

    def run(self, op, args, i):
        x = args[i]
        D = width(x)
        if op.coords is not None and len(op.coords) != D:
            _ops.build_plan({}, D, op.coords)  # raises the coords ValueError
        if len(args) > 1:
            out = func_loop(op.fn, op.ops, args, i, op.coords)
        else:  # a model of several outputs: flattened as capture does
            out = nested(flattened(op.fn), op.ops, x, op.coords)
        return [out[n] for n in op.ops]


class ZCS(Method):
    """Zero coordinate shift: one scalar leaf per coordinate, reverse mode traced into one graph."""

    name = "zcs"
    needs_wrt = True

    def passes(self, op, cap, ctx, x):
        return finish(op, [ZCSPass(op.ops, op.coords)], unstack=False)

    def inputs(self, x, gm, ctx):
        return shift_inputs(x.shape[1], x.dtype, x.device)


AUTO_ZCS_MIN_FUNCTIONS = 100


def auto_method(order: int, M: int, N: int) -> str:
    """The method ``method="auto"`` runs for a model of M functions at N points.

    The forward (collapsed Taylor) route shares the trunk's jets among all M
    functions but contracts every propagated coefficient with the branch for
    all M x N pairs; ZCS contracts once per derivative level but nests one
    reverse pass per order. Measured on the CPU (``bench/zcs.py``; numbers in
    docs/zcs.md and docs/benchmarks.md): forward wins at order 4 and for few
    functions, ZCS for many functions at order <= 2. N does not change the winner.

    Returns:
        ``"collapsed"`` or ``"zcs"``.
    """
    if order > 2 or M <= AUTO_ZCS_MIN_FUNCTIONS:
        return "collapsed"
    return "zcs"


class Auto(Method):
    """ZCS or collapsed Taylor mode per call, by :func:`auto_method`."""

    name = "auto"
    needs_wrt = True

    def __init__(self):
        self._orders: dict[int, int] = {}  # operator order per coordinate count
        self._choices = {"collapsed": Collapsed(), "zcs": ZCS()}

    def resolve(self, op, args, i):
        M = max((a.shape[0] for j, a in enumerate(args) if j != i), default=1)
        D = args[i].shape[1]
        if D not in self._orders:  # planning work: once per width, not per call
            self._orders[D] = max(spec.order(D, op.coords) for spec in op.ops.values())
        return self._choices[auto_method(self._orders[D], M, args[i].shape[0])]
