"""The taylor pass: rewrite every node of the captured graph into its Taylor coefficients.

Each source node becomes the nodes computing its coefficients ``x_0 .. x_K``
along the plan's R directions (coefficients ``k >= 1`` shaped ``(R, *S)``),
using the rules of :mod:`taylorc.rules.table`. Nodes that do not depend on
the coordinates (parameters, buffers, constants) are copied and carry no
coefficients. The input's first coefficient is the direction matrix; its
higher coefficients are zeros, which the cleanup pass prunes.

The output computes every requested term; the order-K part of each term goes
through one ``einsum`` over the directions tagged ``role="contract_top"``,
which the collapse pass replaces. Method: Griewank & Walther, "Evaluating
Derivatives" (2008), ch. 13; batched over directions as in Dangel et al. 2025.
"""

from __future__ import annotations

import sympy
import torch
import torch.fx

from .. import ir
from ..errors import UnsupportedOperatorError
from ..operators.assembly import lost_batch_axis
from ..rules.define import CONSTANT_OPS
from ..rules.derivatives import lower_sympy
from ..rules.jet import Jet, RuleContext, add, scale
from . import PassContext
from .propagate import (  # noqa: F401 - the node-level helpers, re-exported for the passes
    depends_on,
    differentiable_ancestors,
    differentiable_inputs,
    emit_coefficient,
    emit_value,
    map_args,
    needs_jet,
    propagate_composite,
    rule_for,
    shape_of,
)

aten = torch.ops.aten


class Emitter:
    """Emits rule output into a graph and tags every new node with an :class:`~taylorc.ir.Tag`."""

    def __init__(self, graph: torch.fx.Graph, R: int):
        self.graph = graph
        self.tracer = torch.fx.proxy.GraphAppendingTracer(graph)
        self.R = R

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        """``node`` as a Proxy of the graph being emitted."""
        return torch.fx.Proxy(node, self.tracer)

    def last(self) -> torch.fx.Node:
        """The graph's last node so far."""
        return next(iter(reversed(self.graph.nodes)))

    def tag_since(self, marker, source, order: int, layout: str, stop=None, **extra) -> None:
        """Tag the nodes after ``marker`` (up to ``stop`` or the end) that have no tag yet.

        ``source`` is the captured-graph node they derive from; ``extra`` sets the other
        :class:`~taylorc.ir.Tag` fields (``role``, ``coefficient``).
        """
        tag = ir.Tag(source, order, layout, self.R, **extra)
        n = marker.next
        while n is not self.graph._root and n is not stop:
            if ir.tag_of(n) is None:
                ir.set_tag(n, tag)
            n = n.next


class TaylorPass:
    """Rewrite the captured graph into standard Taylor mode (order K, R directions).

    Reads ``gm`` (the captured graph) and ``ctx.plan``; returns a new
    GraphModule with the same placeholders whose output is the tuple of the
    plan's terms. ``gm.meta["taylorc"]`` is a :class:`~taylorc.ir.GraphInfo` whose
    ``jets`` map each source node to its coefficient nodes.

    Raises:
        BatchCouplingError: the model mixes batch rows (see :mod:`taylorc.ir.coupling`).
        UnsupportedOperatorError: an op in the graph has no rule.
        ValueError: the model does not return a single tensor.
    """

    name = "taylor"
    requires = ("captured",)
    forbids = ("operator",)
    ensures = ("taylor", "operator")

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        plan = ctx.plan
        ctx.batch_axis = ctx.check_batch(gm)
        root = torch.nn.Module()
        graph = torch.fx.Graph()
        em = Emitter(graph, plan.R)
        varying = needs_jet(gm.graph, ctx.coord)
        env: dict[torch.fx.Node, Jet] = {}
        jets: dict[torch.fx.Node, list] = {}
        out_node = None
        for node in gm.graph.nodes:
            if node.op == "output":
                out_node = node
                continue
            if node.op == "placeholder":
                p = em.proxy(graph.placeholder(node.name))
                p.node.meta["val"] = node.meta.get("val")
                coeffs = [p] + (
                    self._seed(em, root, node, p, ctx) if node.name == ctx.coord else []
                )
            elif node not in varying or node.target in CONSTANT_OPS or node.op == "get_attr":
                marker = em.last()
                new = graph.node_copy(node, lambda n: env[n][0].node)
                if node.op == "get_attr":
                    setattr(root, node.target, getattr(gm, node.target))
                em.tag_since(marker, node, 0, "value", role="constant")
                coeffs = [em.proxy(new)]
            elif node.op == "call_function":
                coeffs = self._propagate(em, node, env, plan, ctx)
            else:
                raise UnsupportedOperatorError(
                    f"unsupported graph node {node.op} {node.target} ('{node.name}')"
                )
            env[node] = Jet(coeffs, shape_of(node) if "val" in node.meta else ())
            jets[node] = [c.node if isinstance(c, torch.fx.Proxy) else None for c in coeffs]
        result = self._outputs(em, root, out_node, env, ctx)
        graph.output(tuple(r.node if isinstance(r, torch.fx.Proxy) else r for r in result))
        new_gm = torch.fx.GraphModule(root, graph, class_name="TaylorGraph")
        ir.set_info(new_gm, ir.GraphInfo("taylor", gm, plan.K, plan.R, plan.G, jets))
        return new_gm

    def _seed(self, em, root, node, p, ctx):
        """Input jet: x_1 = the directions (broadcast over the batch), x_k = 0 for k >= 2."""
        plan = ctx.plan
        if plan.K == 0:
            return []
        shape = list(shape_of(node))
        root.register_buffer("directions", plan.direction_tensor(ctx.dtype, ctx.device))
        marker = em.last()
        v = em.proxy(em.graph.get_attr("directions"))
        x1 = aten.expand.default(aten.reshape.default(v, [plan.R, 1] + shape[1:]), [plan.R] + shape)
        em.tag_since(marker, node, 1, "block", coefficient=True, role="seed")
        coeffs = [x1]
        for k in range(2, plan.K + 1):
            marker = em.last()
            coeffs.append(aten.new_zeros.default(p, [plan.R] + shape))
            em.tag_since(marker, node, k, "block", coefficient=True, role="seed")
        return coeffs

    def _propagate(self, em, node, env, plan, ctx):
        rctx = RuleContext(node, plan.K, plan.R, warn=ctx.warn, composite=propagate_composite)
        rule_for(node)  # fail before emitting anything
        marker = em.last()
        rctx.value = emit_value(node, env)
        em.tag_since(marker, node, 0, "value", coefficient=True)
        coeffs = [rctx.value]
        for k in range(1, plan.K + 1):
            marker = em.last()
            coeffs.append(emit_coefficient(rctx, node, env, k))
            em.tag_since(marker, node, k, "block", coefficient=True)
        return coeffs

    def _outputs(self, em, root, out_node, env, ctx):
        plan = ctx.plan
        (result,) = out_node.args
        if isinstance(result, (tuple, list)) and len(result) == 1:
            result = result[0]
        if not isinstance(result, torch.fx.Node) or not isinstance(env[result], Jet):
            raise ValueError(
                "taylorc needs a model that returns one tensor (B, *out); got " + str(type(result))
            )
        y = env[result]
        marker = em.last()
        top = None
        if plan.K > 0 and plan.G > 0 and y[plan.K] is not None:
            w = plan.top_weight_tensor(ctx.dtype, ctx.device)
            if w is None:
                w = torch.ones(plan.R, dtype=ctx.dtype, device=ctx.device)
            root.register_buffer("top_weights", w)
            eq = "r,r...->..." if plan.G == 1 else "gr,r...->g..."
            top = aten.einsum.default(eq, [em.proxy(em.graph.get_attr("top_weights")), y[plan.K]])
        em.tag_since(marker, result, plan.K, "top", role="contract_top")
        marker = em.last()
        x = next(j[0] for n, j in env.items() if n.op == "placeholder" and n.name == ctx.coord)
        outs = [read_term(t, y, top, plan, root, em, ctx, x) for t in plan.terms]
        em.tag_since(marker, result, -1, "value", role="extract")
        return outs


def read_term(term, y: Jet, top, plan, root, em, ctx, x):
    """Emit one requested output from the output jet ``y`` and the top contraction."""
    if term.kind == "value":
        return y[0]
    if term.kind == "gradient":
        if y[1] is None:
            return aten.new_zeros.default(y[0], list(y.shape) + [plan.D])
        rows = y[1]
        if term.grad_rows != list(range(plan.R)):
            name = f"grad_rows_{len(root._buffers)}"
            root.register_buffer(name, torch.tensor(term.grad_rows, device=ctx.device))
            rows = aten.index_select.default(rows, 0, em.proxy(em.graph.get_attr(name)))
        return aten.permute.default(rows, list(range(1, y.ndim + 1)) + [0])
    out = None
    for p in term.parts:
        if p.order == 0:
            part = scale(y[0], float(p.weights[0]))
        elif p.top is not None:
            g, s = p.top
            part = (
                None
                if top is None
                else scale(top if plan.G == 1 else aten.select.int(top, 0, g), float(s))
            )
        elif y[p.order] is None:
            part = None
        else:
            name = f"weights_{len(root._buffers)}"
            root.register_buffer(
                name,
                torch.tensor([float(w) for w in p.weights], dtype=ctx.dtype, device=ctx.device),
            )
            part = aten.einsum.default(
                "r,r...->...", [em.proxy(em.graph.get_attr(name)), y[p.order]]
            )
        if part is not None and p.coef is not None:
            part = aten.mul.Tensor(
                part, coefficient(p.coef, x, y.ndim, plan, root, em, ctx.batch_axis)
            )
        out = add(out, part)
    return out if out is not None else aten.zeros_like.default(y[0])


class CoefficientFunction(torch.nn.Module):
    """Holds a user's coefficient callable so the graph can call it (``call_module``)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def coefficient(coef, x, out_ndim: int, plan, root, em, axis: int | None = 0):
    """Emit ``c(x)`` shaped ``(B, 1, ..., 1)`` to broadcast against a ``(B, *out)`` term.

    ``axis`` is the output axis of the batch (1 for ``(M, B)``-shaped outputs).

    Raises:
        ValueError: the coefficient depends on x but the batch axis of the output is unknown.
    """
    if axis is None:
        raise lost_batch_axis()
    B = x.node.meta["val"].shape[0]
    flat = aten.reshape.default(x, [B, plan.D])
    if coef.expr is not None:
        names = plan.coords or [f"x{i}" for i in range(plan.D)]
        env = {sympy.Symbol(n): aten.select.int(flat, 1, i) for i, n in enumerate(names)}
        unknown = coef.expr.free_symbols - set(env)
        if unknown:
            raise ValueError(
                f"coefficient {coef.expr} uses {sorted(map(str, unknown))}, which are not coordinates {names}"
            )
        c = lower_sympy(coef.expr, env, {})
    else:
        name = next(
            (
                n
                for n, m in root.named_children()
                if isinstance(m, CoefficientFunction) and m.fn is coef.fn
            ),
            None,
        )
        if name is None:
            name = f"coefficient_{len(list(root.children()))}"
            root.add_module(name, CoefficientFunction(coef.fn))
        c = em.proxy(em.graph.call_module(name, (flat.node,)))
        for i in coef.index:
            c = aten.select.int(c, 1, i)
    return aten.reshape.default(c, [1] * axis + [B] + [1] * (out_ndim - axis - 1))
