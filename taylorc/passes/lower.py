"""The lowering pass: replace each activation's Taylor step by one fused kernel call.

In the taylor/collapse graphs an activation ``y = g(x)`` becomes, per order, a
handful of elementwise nodes (derivatives of g, products of coefficients, the
weighted sum over directions in collapsed mode). This pass finds those steps by
the jets the taylor and collapse passes record (:class:`taylorc.ir.GraphInfo`),
recognises the activation in the source graph (``tanh``, ``sin``, ``cos``,
``sigmoid``, ``exp``, ``gelu`` and the pattern ``x * sigmoid(x)`` = silu), and
replaces the step by ``taylorc::jet_activation`` (:mod:`taylorc.kernels`), which
reads each input coefficient once and writes each output once. The old nodes die
in dead-code elimination.

Graphs without that metadata (hand-written Taylor code, Dynamo's graphs in the
``torch.compile`` backend) are matched structurally instead
(:func:`lower_structural`, by :mod:`taylorc.passes.patterns`): the collapsed order-2
step of each activation in its canonical ATen form, the one
:func:`~taylorc.kernels.jet_activation.jet_activation_reference` traces to (``t = tanh(x0); d1 = 1 - t*t; y1 = d1*x1;
ytop = d1*top + sum(-2*t*d1*x1*x1, 0)``). Algebraically equal but differently
written steps are not recognised and stay as they are.

By default it lowers only graphs on CUDA (where the op runs the Triton kernel);
``force=True`` lowers anywhere (the op then runs its PyTorch reference), which
is how the tests check the rewrite on the CPU.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from .. import ir
from ..kernels.jet_activation import ACTIVATIONS, MAX_ORDER
from . import PassContext, PassResult, relink
from .patterns import activation_of, activation_steps, linear_of

aten = torch.ops.aten


class LowerPass:
    """Replace activation Taylor steps by ``taylorc::jet_activation``.

    Args:
        force: lower also when the graph is not on CUDA.
        fuse_linear: fold a preceding ``nn.Linear`` (``addmm(b, x, W^T)``) into the
            kernel (``taylorc::jet_linear_activation``), except on the coordinates
            themselves: the first layer's unit directions need no GEMM (cleanup
            hoists it to ``(R, 1, D) @ W^T``).

    Returns:
        a :class:`~taylorc.passes.PassResult` whose ``done["lowered"]`` lists the source
        node names that were replaced.
    """

    name = "lower"
    requires = ("taylor",)
    forbids = ("clean",)  # it reads the activations' full jets, before pruning
    ensures = ("lowered",)

    def __init__(self, force: bool = False, fuse_linear: bool = True):
        self.force = force
        self.fuse_linear = fuse_linear

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        lowered: list[str] = []
        on_cuda = torch.device(ctx.device).type == "cuda"
        info = ir.info(gm)
        if not (on_cuda or self.force):
            return PassResult(gm, {"lowered": lowered})
        if info is None:  # a foreign Taylor graph: match the steps by their shape
            lowered = [f"structural:{i}" for i in range(lower_structural(gm))]
            return PassResult(gm, {"lowered": lowered})
        plan = ctx.plan
        collapsed = plan.collapsible and info.method == "collapsed"
        if plan.K == 0 or plan.K > MAX_ORDER or (collapsed and plan.G != 1):
            return PassResult(gm, {"lowered": lowered})
        nodes = set(gm.graph.nodes)
        jets = info.jets
        weights = None
        if collapsed:
            w = [float(v) for v in plan.top_weights[0]]
            if any(v != 1 for v in w):
                gm.register_buffer(
                    "lower_weights", torch.tensor(w, dtype=ctx.dtype, device=ctx.device)
                )
                weights = "lower_weights"
        params_of = {
            n: n.name
            for n in ctx.source.graph.nodes
            if n.op == "placeholder" and n.name != ctx.coord
        }
        for src in ctx.source.graph.nodes:
            found = activation_of(src)
            if found is None or src not in jets or found[1] not in jets:
                continue
            act, arg = found
            x_names, y_names = jets[arg], jets[src]
            if len(x_names) != plan.K + 1 or len(y_names) != plan.K + 1:
                continue  # a constant input or a pruned chain: leave it
            if any(n is None or n not in nodes for n in x_names):
                continue
            if all(n is None or n not in nodes for n in y_names):
                continue  # nothing reads this activation's jet
            shape = list(src.meta["val"].shape)
            linear = linear_of(arg, ctx.coord, params_of)
            if linear is not None and self.fuse_linear:
                x, weight, bias = linear
                xl_names = jets.get(x, [])
                if len(xl_names) == plan.K + 1 and all(n in nodes for n in xl_names if n):
                    params = [jets[weight][0]]
                    params.append(jets[bias][0] if bias is not None else None)
                    new = self._replace(
                        gm, src, act, xl_names, y_names, collapsed, weights, plan, shape, params
                    )
                    self._record(src, new, jets, nodes, lowered)
                    continue
            new = self._replace(gm, src, act, x_names, y_names, collapsed, weights, plan, shape)
            self._record(src, new, jets, nodes, lowered)
        stable_toposort(gm.graph)
        ir.dce(gm)
        return PassResult(gm, {"lowered": lowered})

    def _record(self, src, new, jets, nodes, lowered):
        """Point the source node's jet at the kernel's outputs, so later steps read those."""
        if new is None:
            return
        jets[src] = list(new)
        nodes.update(new)
        lowered.append(src.name)

    def _replace(self, gm, src, act, xs, y_names, collapsed, weights, plan, shape, linear=None):
        """Emit the kernel call for one activation (``linear``: fuse its ``(weight, bias)`` too)."""
        graph = gm.graph
        if any(x is None for x in xs):
            return None
        alive = set(graph.nodes)
        ys = [n if n in alive else None for n in y_names]  # None: dead
        n_low = plan.K - 1 if collapsed else plan.K
        # emitted at the end; stable_toposort pulls the call up to the first use of its outputs
        with graph.inserting_before(next(iter(reversed(graph.nodes)))):
            ops = []

            def emit(target, *args):
                node = graph.call_function(target, args)
                ops.append(node)
                return node

            w = None
            if weights is not None:
                w = graph.get_attr(weights)
                ops.append(w)
            if linear is not None:  # (B, in) coefficients straight into the fused GEMM
                top = xs[plan.K] if collapsed else None
                call = emit(
                    torch.ops.taylorc.jet_linear_activation.default,
                    xs[0],
                    xs[1 : n_low + 1],
                    top,
                    *linear,
                    w,
                    act,
                )
            else:
                x0 = emit(aten.reshape.default, xs[0], [-1])
                lower = [
                    emit(aten.reshape.default, xs[k], [plan.R, -1]) for k in range(1, n_low + 1)
                ]
                top = emit(aten.reshape.default, xs[plan.K], [-1]) if collapsed else None
                call = emit(torch.ops.taylorc.jet_activation.default, x0, lower, top, w, act)
            outs = [emit(operator.getitem, call, 0)]
            low = emit(operator.getitem, call, 1)
            outs += [emit(operator.getitem, low, k) for k in range(n_low)]
            if collapsed:
                outs.append(emit(operator.getitem, call, 2))
            shapes = [shape] + [[plan.R] + shape] * n_low + ([shape] if collapsed else [])
            shaped = [emit(aten.reshape.default, o, sh) for o, sh in zip(outs, shapes)]
        R = plan.R
        for k, node in enumerate(shaped):
            top = collapsed and k == len(shaped) - 1
            ir.set_tag(
                node, ir.Tag(src, k, ir.layout_of(k, top), R, role="lowered", coefficient=True)
            )
        ir.tag_new(ops, ir.Tag(src, 0, "value", R, role="lowered"))
        for old, new in zip(ys, shaped):  # stable_toposort then fixes the order
            if old is not None:
                ir.replace(gm, old, new)
        return shaped


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
    relink(order)


def lower_structural(gm: torch.fx.GraphModule) -> int:
    """Replace every canonical collapsed order-2 activation step in an ATen graph by the kernel.

    The steps are :func:`~taylorc.passes.patterns.activation_steps` of each activation
    (its canonical :func:`~taylorc.passes.patterns.step_pattern`); a match becomes
    ``taylorc::jet_activation(x0, [x1], top, None, act)`` with the coefficients
    flattened as the op expects. Returns the number of steps replaced.
    """
    graph, replaced = gm.graph, 0
    for act in ACTIVATIONS:
        for (x0, x1, top), outs in activation_steps(graph, act):
            with graph.inserting_before(next(iter(reversed(graph.nodes)))):
                # shape-free reshapes: the sizes may be symbolic in Dynamo's graphs
                flat = [
                    graph.call_function(aten.reshape.default, (x0, [-1])),
                    graph.call_function(aten.flatten.using_ints, (x1, 1)),
                    graph.call_function(aten.reshape.default, (top, [-1])),
                ]
                call = graph.call_function(
                    torch.ops.taylorc.jet_activation.default,
                    (flat[0], [flat[1]], flat[2], None, act),
                )
                y1 = graph.call_function(
                    operator.getitem, (graph.call_function(operator.getitem, (call, 1)), 0)
                )
                y0, ytop = (graph.call_function(operator.getitem, (call, k)) for k in (0, 2))
                new = [
                    graph.call_function(aten.reshape_as.default, (y0, x0)),
                    graph.call_function(aten.reshape_as.default, (y1, x1)),
                    graph.call_function(aten.reshape_as.default, (ytop, top)),
                ]
            ir.set_tag(call, ir.Tag(None, 0, role="lowered"))
            for old, node in zip(outs, new):
                ir.replace(gm, old, node)
            replaced += 1
        if replaced:
            stable_toposort(graph)
            ir.dce(gm)
    gm.recompile()
    return replaced
