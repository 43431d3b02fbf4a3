"""The cleanup pass: prune known-zero coefficients, hoist batch broadcasts out of matmuls, then CSE and DCE.

Zeros come from the input jet (its coefficients of order >= 2 vanish: the
input moves on a straight line) and from the collapsed seed; the one known-zero
analysis (:func:`taylorc.ir.zeros.known_zeros`) propagates them through ops that are
linear in the zero operand (products, matmuls, views, reductions), and sums with a
zero operand become the other operand. Constants never carry coefficients (the
taylor pass copies them).
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ir
from ..ir import annotate_shapes
from ..ir.zeros import SUMS, ZERO_MAKERS, known_zeros
from . import PassContext

aten = torch.ops.aten


def prune_zeros(gm: torch.fx.GraphModule, functional: bool = True) -> int:
    """Replace the known zeros (:func:`taylorc.ir.zeros.known_zeros`) by ``zeros`` and a
    sum with one zero operand by the other operand; returns how many nodes were replaced.

    taylorc's graphs are functional. An ATen graph with in-place ops (a ``make_fx``
    trace) passes ``functional=False``: the nodes an in-place op may write
    (:func:`taylorc.ir.written`) are never taken as zero nor rewritten (a zeros tensor
    written through a view is not zero), and a sum with one zero operand is not
    replaced by the other operand (an in-place op could write that one later, or it
    could be a graph input, returned as an output); known-zero nodes become fresh
    ``zeros``. Outputs that were views of each other may no longer be: a caller must
    not write into them.

    A product or quotient with non-finite entries in the other operand gives 0 here,
    NaN eagerly (that point's result is non-finite anyway).
    """
    keep = frozenset() if functional else ir.written(gm.graph)
    zero = known_zeros(gm.graph, exclude=keep)
    replaced = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n in keep or n.target in ZERO_MAKERS:
            continue
        if n in zero:
            zero.add(_make_zero(gm, n))
        elif (
            functional
            and n.target in SUMS
            and len(n.args) >= 2
            and (n.args[0] in zero or n.args[1] in zero)
        ):
            a, b = n.args[0], n.args[1]
            alpha = n.kwargs.get("alpha", 1) * (-1 if n.target is aten.sub.Tensor else 1)
            other, factor = (b, alpha) if a in zero else (a, 1)
            _replace_by(gm, n, other, factor)
        else:
            continue
        replaced += 1
    ir.dce(gm)
    return replaced


def _make_zero(gm: torch.fx.GraphModule, n: torch.fx.Node) -> torch.fx.Node:
    """Replace ``n`` by a fresh ``zeros`` of its shape; returns the new node."""
    v = n.meta["val"]
    with gm.graph.inserting_before(n):
        z = gm.graph.call_function(
            aten.zeros.default, (list(v.shape),), {"dtype": v.dtype, "device": v.device}
        )
    z.meta.update(n.meta)
    ir.replace(gm, n, z)
    return z


def _replace_by(gm, n, keep, factor):
    """Replace ``n`` by ``factor * keep``, expanded to ``n``'s shape when ``keep`` broadcast."""
    graph, out = gm.graph, keep
    v = n.meta["val"]
    with graph.inserting_before(n):
        if not isinstance(keep, torch.fx.Node):
            out = graph.call_function(
                aten.full.default,
                (list(v.shape), keep * factor),
                {"dtype": v.dtype, "device": v.device},
            )
            factor = 1
        elif tuple(keep.meta["val"].shape) != tuple(v.shape):
            out = graph.call_function(aten.expand.default, (keep, list(v.shape)))
        if factor != 1:
            out = graph.call_function(aten.mul.Tensor, (out, factor))
    if out is not keep:
        out.meta.update(n.meta)
        ir.tag_new(out.all_input_nodes, ir.tag_of(n))  # the expand under the mul
    ir.replace(gm, n, out)


def hoist_broadcast_matmuls(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``matmul(expand(s), W)`` as ``expand(matmul(s, W))``; returns the count.

    The input jet's first coefficient is the ``(R, D)`` directions expanded over
    the batch, so the first layer's matmul would multiply B identical rows per
    direction. Rows of a matmul are independent, so an expand of any dim but the
    contracted last one commutes with it: the GEMM shrinks to ``(R, 1, D) @ (D, H)``
    and its backward to a sum over the batch.
    """
    count = 0
    for n in list(gm.graph.nodes):
        if n.target not in (aten.matmul.default, aten.mm.default):
            continue
        a, w = n.args[0], n.args[1]
        if not (isinstance(a, torch.fx.Node) and a.target == aten.expand.default):
            continue
        src, wv, out = a.args[0], w.meta.get("val"), n.meta.get("val")
        sv = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if sv is None or wv is None or out is None or wv.dim() != 2:
            continue
        if sv.dim() != a.meta["val"].dim() or sv.shape[-1] != a.meta["val"].shape[-1]:
            continue
        with gm.graph.inserting_before(n):
            small = gm.graph.call_function(aten.matmul.default, (src, w))
            wide = gm.graph.call_function(aten.expand.default, (small, list(out.shape)))
        ir.tag_new((small, wide), ir.tag_of(n))
        ir.replace(gm, n, wide)
        gm.graph.erase_node(n)
        count += 1
    return count


class CleanupPass:
    """Zero pruning, batch hoisting, CSE and DCE, in place; keeps constants, tags and the description.

    The layer pipeline (:mod:`taylorc.methods.layer_graph`) does not run it: pruning and CSE
    merge or drop columns that KFAC reads separately, hoisting loses per-sample inputs.
    """

    name = "cleanup"
    requires = ("operator",)
    forbids = ("clean",)
    ensures = ("clean",)

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        annotate_shapes(gm)
        prune_zeros(gm)
        hoist_broadcast_matmuls(gm)
        ir.cse(gm)
        ir.dce(gm)
        return gm
