"""The unstack pass: on the CPU, the coefficient blocks of a few directions, shaped
``(R, *S)``, become R separate ``S``-shaped tensors.

Why: the taylor pass stacks the R directions of every coefficient on a leading axis
(one GEMM and one elementwise call per op instead of R). On a GPU that is what one
wants. On a CPU, inside a Taylor graph, the stacked blocks of a few directions cost
more than their size (in isolation both layouts scale linearly; in the graph the
larger blocks fall out of the caches), so a dict of terms whose directions play
different roles (``{u, u_t, u_x, u_xx}``) runs faster with the directions computed
separately (measurements: ``bench/notes.md``).

Every stacked value derives from the ``directions`` buffer (the input jet's first
coefficient), so the pass follows the data flow from there: each op whose stacked
inputs it can split is emitted once per direction (pointwise ops, ``matmul`` with an
unstacked right operand, ``expand``/``reshape``/``view``/``permute`` that keep the
direction axis first, ``select``/``slice`` on it, the top contraction
``einsum("r,r...->...")``); any other consumer gets ``stack(pieces)`` back, so the
result is always the same graph value, only computed differently.
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ir
from ..ir import annotate_shapes
from ..ir.facts import having
from . import PassContext

aten = torch.ops.aten
# Laplacians (every direction alike) gain nothing either way; dicts whose directions play
# different roles gain at R = 2 (bench/notes.md). Kept small: above a few directions the
# per-direction calls add up and the stacked GEMMs are efficient.
MAX_DIRECTIONS = 4
_SHAPE_OPS = having("shape_arg")


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


class _Splitter:
    """Per-direction copies of the stacked nodes of one graph."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm, self.graph = gm, gm.graph
        self.pieces: dict[torch.fx.Node, list[torch.fx.Node]] = {}
        self._first: dict[torch.fx.Node, torch.fx.Node] = {}
        self._stacked: dict[torch.fx.Node, torch.fx.Node] = {}

    def call(self, target, args) -> torch.fx.Node:
        return self.graph.call_function(target, args)

    def first_row(self, node: torch.fx.Node) -> torch.fx.Node:
        """``node[0]`` of an unstacked operand with a leading axis of 1 (made once)."""
        if node not in self._first:
            self._first[node] = self.call(aten.select.int, (node, 0, 0))
        return self._first[node]

    def split(self, node: torch.fx.Node):
        """Per-direction nodes for ``node`` (a list), a node that replaces it (the direction
        axis was reduced), or None when the op is not known to be splittable."""
        t, args = node.target, node.args
        a = args[0] if args else None
        pa = self.pieces.get(a)
        out = _val(node)
        if out is None:
            return None
        if t is aten.select.int and pa is not None and args[1] == 0:
            return pa[args[2]]
        if t is aten.slice.Tensor and pa is not None and args[1] == 0 and len(args) <= 4:
            start, end = (list(args[2:4]) + [None, None])[:2]
            return pa[slice(start, end)]
        if t in _SHAPE_OPS and pa is not None and list(args[1])[0] == len(pa):
            return [self.call(t, (p, list(args[1])[1:])) for p in pa]
        if t is aten.permute.default and pa is not None and list(args[1])[0] == 0:
            return [self.call(t, (p, [d - 1 for d in args[1][1:]])) for p in pa]
        if t is aten.matmul.default and pa is not None and args[1] not in self.pieces:
            if _val(a).dim() >= 2 and _val(args[1]).dim() == 2:
                return [self.call(t, (p, args[1])) for p in pa]
            return None
        if t is aten.einsum.default and args[0] == "r,r...->..." and args[1][1] in self.pieces:
            w, ps = args[1][0], self.pieces[args[1][1]]
            if w.op != "get_attr":
                return None
            values = getattr(self.gm, w.target).tolist()  # a constant buffer of the plan
            terms = [
                p if c == 1 else self.call(aten.mul.Tensor, (p, c))
                for p, c in zip(ps, values)
                if c != 0
            ]
            if not terms:
                return None
            total = terms[0]
            for term in terms[1:]:
                total = self.call(aten.add.Tensor, (total, term))
            return total
        if isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
            return self._pointwise(node, out)
        return None

    def _pointwise(self, node, out):
        stacked = [a for a in node.args if a in self.pieces]
        R = {len(self.pieces[a]) for a in stacked}
        if len(R) != 1 or node.kwargs or out.dim() == 0:
            return None
        (R,) = R
        if out.shape[0] != R or any(_val(a).dim() != out.dim() for a in stacked):
            return None
        args = []
        for a in node.args:
            v = _val(a)
            if a in self.pieces or v is None or v.dim() < out.dim():
                args.append(a)
            elif v.shape[0] == 1:
                args.append(self.first_row(a))
            else:
                return None  # a full-rank operand not derived from the directions
        return [
            self.call(
                node.target, tuple(self.pieces[a][r] if a in self.pieces else a for a in args)
            )
            for r in range(R)
        ]

    def restack(self, user: torch.fx.Node) -> None:
        """Give ``user`` the stacked value of each split input it reads (one ``stack`` per
        input, shared by all such users: it is made before the first of them)."""
        for a in list(user.all_input_nodes):
            if a in self.pieces:
                if a not in self._stacked:
                    with self.graph.inserting_before(user):
                        self._stacked[a] = self.call(aten.stack.default, (self.pieces[a],))
                    ir.tag_new([self._stacked[a]], ir.tag_of(a), role="stack")
                user.replace_input_with(a, self._stacked[a])


def unstack(gm: torch.fx.GraphModule) -> int:
    """Split the stacked direction blocks of ``gm`` (see the module docstring).

    Args:
        gm: a Taylor graph whose direction blocks derive from the ``directions`` buffer
            (shape ``(R, D)``), with ``meta["val"]`` on its nodes (``annotate_shapes``).

    Returns:
        the number of ops now emitted per direction (0: the graph is unchanged).
    """
    graph = gm.graph
    sp = _Splitter(gm)
    count = 0
    for node in list(graph.nodes):
        if node.op == "get_attr" and node.target == "directions":
            with graph.inserting_after(node):
                R = gm.directions.shape[0]
                sp.pieces[node] = [sp.call(aten.select.int, (node, 0, r)) for r in range(R)]
            _tag_pieces(node, sp.pieces[node], [])
            continue
        if not any(a in sp.pieces for a in node.all_input_nodes):
            continue
        first = node.prev
        with graph.inserting_before(node):
            new = sp.split(node) if node.op == "call_function" else None
        made = []
        while first.next is not node:
            first = first.next
            made.append(first)
        if isinstance(new, list):
            sp.pieces[node] = new
            _tag_pieces(node, new, made)
            count += 1
        elif isinstance(new, torch.fx.Node):
            ir.tag_new(made, ir.tag_of(node))
            ir.replace(gm, node, new)
            count += 1
        else:
            sp.restack(node)
    description = ir.info(gm)
    if description is not None:  # the jets now name the per-direction pieces
        description.remap(lambda n: tuple(sp.pieces[n]) if n in sp.pieces else n)
    ir.dce(gm)
    graph.lint()
    gm.recompile()
    annotate_shapes(gm)
    return count


def _tag_pieces(node, pieces, made) -> None:
    """Tag direction r's piece as direction r of ``node``'s block, other new nodes like it."""
    tag = ir.tag_of(node)
    for r, p in enumerate(pieces):
        if tag is not None and p in made or node.op == "get_attr":
            ir.tag_new([p], tag, layout="direction", direction=r)
    ir.tag_new(made, tag)


class UnstackPass:
    """Unstack the direction blocks when the graph is on the CPU and has 2 to
    ``MAX_DIRECTIONS`` directions; a no-op otherwise.

    Attributes:
        split: after a run, the number of ops emitted per direction.
    """

    name = "unstack"
    requires = ("clean",)
    forbids = ("unstacked",)
    ensures = ("unstacked",)

    def __init__(self):
        self.split = 0

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        self.split = 0
        directions = getattr(gm, "directions", None)
        on_cpu = torch.device(ctx.device).type == "cpu"
        if on_cpu and directions is not None and 2 <= directions.shape[0] <= MAX_DIRECTIONS:
            self.split = unstack(gm)
        return gm
