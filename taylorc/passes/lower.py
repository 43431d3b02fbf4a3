"""The lowering pass: replace each activation's Taylor step by one fused kernel call.

In the taylor/collapse graphs an activation ``y = g(x)`` becomes, per order, a
handful of elementwise nodes (derivatives of g, products of coefficients, the
weighted sum over directions in collapsed mode). This pass finds those steps by
the jets the taylor and collapse passes record (``gm.meta["taylorc"]["jets"]``),
recognises the activation in the source graph (``tanh``, ``sin``, ``cos``,
``sigmoid``, ``exp``, ``gelu`` and the pattern ``x * sigmoid(x)`` = silu), and
replaces the step by ``taylorc::jet_activation`` (:mod:`taylorc.kernels`), which
reads each input coefficient once and writes each output once. The old nodes die
in dead-code elimination.

By default it lowers only graphs on CUDA (where the op runs the Triton kernel);
``force=True`` lowers anywhere (the op then runs its PyTorch reference), which
is how the tests check the rewrite on the CPU.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from ..kernels.jet_activation import MAX_ORDER
from . import PassContext

aten = torch.ops.aten

ACTIVATION_TARGETS = {
    aten.tanh.default: "tanh",
    aten.sin.default: "sin",
    aten.cos.default: "cos",
    aten.sigmoid.default: "sigmoid",
    aten.exp.default: "exp",
    aten.gelu.default: "gelu",
}


def activation_of(node: torch.fx.Node) -> tuple[str, torch.fx.Node] | None:
    """``(name, input)`` when a source node is a lowerable activation, else None."""
    if node.op != "call_function":
        return None
    if node.target in ACTIVATION_TARGETS:
        if node.target is aten.gelu.default and node.kwargs.get("approximate", "none") != "none":
            return None
        return ACTIVATION_TARGETS[node.target], node.args[0]
    if node.target is aten.mul.Tensor and len(node.args) == 2:  # silu: x * sigmoid(x)
        a, b = node.args
        for x, s in ((a, b), (b, a)):
            if isinstance(s, torch.fx.Node) and s.target is aten.sigmoid.default and s.args[0] is x:
                return "silu", x
    return None


class LowerPass:
    """Replace activation Taylor steps by ``taylorc::jet_activation``.

    Args:
        force: lower also when the graph is not on CUDA.

    Attributes:
        lowered: after a run, the source node names that were replaced.
    """

    name = "lower"

    def __init__(self, force: bool = False):
        self.force = force
        self.lowered: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        self.lowered = []
        on_cuda = torch.device(ctx.device).type == "cuda"
        info = gm.meta.get("taylorc", {})
        if not (on_cuda or self.force) or "jets" not in info:
            return gm
        plan = ctx.plan
        collapsed = plan.collapsible and any(
            n.meta.get("taylorc", {}).get("collapsed") for n in gm.graph.nodes
        )
        if plan.K == 0 or plan.K > MAX_ORDER or (collapsed and plan.G != 1):
            return gm
        nodes = {n.name: n for n in gm.graph.nodes}
        jets = info["jets"]
        weights = None
        if collapsed:
            w = [float(v) for v in plan.top_weights[0]]
            if any(v != 1 for v in w):
                gm.register_buffer(
                    "lower_weights", torch.tensor(w, dtype=ctx.dtype, device=ctx.device)
                )
                weights = "lower_weights"
        for src in ctx.source.graph.nodes:
            found = activation_of(src)
            if found is None or src.name not in jets or found[1].name not in jets:
                continue
            act, arg = found
            x_names, y_names = jets[arg.name], jets[src.name]
            if len(x_names) != plan.K + 1 or len(y_names) != plan.K + 1:
                continue  # a constant input or a pruned chain: leave it
            if any(n is None or n not in nodes for n in x_names + y_names):
                continue
            shape = list(src.meta["val"].shape)
            self._replace(gm, nodes, act, x_names, y_names, collapsed, weights, plan, shape)
            self.lowered.append(src.name)
        stable_toposort(gm.graph)
        gm.graph.eliminate_dead_code()
        return gm

    def _replace(self, gm, nodes, act, x_names, y_names, collapsed, weights, plan, shape):
        graph = gm.graph
        xs = [nodes[n] for n in x_names]
        ys = [nodes[n] for n in y_names]
        anchor = max(xs, key=lambda n: _position(graph, n))
        n_low = plan.K - 1 if collapsed else plan.K
        with graph.inserting_after(anchor):
            ops = []

            def emit(target, *args):
                node = graph.call_function(target, args)
                ops.append(node)
                return node

            x0 = emit(aten.reshape.default, xs[0], [-1])
            lower = [emit(aten.reshape.default, xs[k], [plan.R, -1]) for k in range(1, n_low + 1)]
            top = emit(aten.reshape.default, xs[plan.K], [-1]) if collapsed else None
            w = emit_attr(graph, weights, ops) if weights is not None else None
            call = emit(torch.ops.taylorc.jet_activation.default, x0, lower, top, w, act)
            outs = [emit(operator.getitem, call, 0)]
            low = emit(operator.getitem, call, 1)
            outs += [emit(operator.getitem, low, k) for k in range(n_low)]
            if collapsed:
                outs.append(emit(operator.getitem, call, 2))
            shapes = [shape] + [[plan.R] + shape] * n_low + ([shape] if collapsed else [])
            shaped = [emit(aten.reshape.default, o, sh) for o, sh in zip(outs, shapes)]
        for node in ops:
            node.meta["taylorc"] = {"role": "lowered", "activation": act}
        for old, new in zip(ys, shaped):  # stable_toposort then fixes the order
            old.replace_all_uses_with(new)


def emit_attr(graph, name, ops):
    node = graph.get_attr(name)
    ops.append(node)
    return node


def _position(graph: torch.fx.Graph, node: torch.fx.Node) -> int:
    for i, n in enumerate(graph.nodes):
        if n is node:
            return i
    return -1


def stable_toposort(graph: torch.fx.Graph) -> None:
    """Reorder the nodes so every node follows its inputs, keeping the given order otherwise.

    Each node is emitted at its place after its not-yet-emitted inputs (depth
    first), so a kernel placed behind its last operand is pulled up to its first use.
    """
    done: set[torch.fx.Node] = set()
    order: list[torch.fx.Node] = []
    for root in list(graph.nodes):
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if expanded:
                done.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.all_input_nodes) if a not in done)
    prev = None
    for node in order:
        if prev is not None and node.prev is not prev:
            prev.append(node)
        prev = node
