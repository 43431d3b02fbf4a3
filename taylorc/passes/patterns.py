"""The structural matchers: linear layers, activations, canonical activation steps, whole MLPs.

Lowering (:mod:`taylorc.passes.lower`), the whole-MLP pass (:mod:`taylorc.passes.mlp`)
and the linear layers' records (:mod:`taylorc.passes.layers`) recognise the same structures of
the captured ATen graph, matched here once:

* a linear layer: ``addmm(b, h, permute(W, [1, 0]))`` or ``mm(h, permute(W, [1, 0]))``
  of parameter placeholders (:func:`linear_use`, :func:`linear_layer`, :func:`linear_of`);
* an activation that lowers to ``taylorc::jet_activation`` (:func:`activation_of`: the
  ops of the op facts' ``activation`` entry, and ``x * sigmoid(x)`` = silu);
* the collapsed order-2 step of an activation in its canonical ATen form, the one
  :func:`~taylorc.kernels.jet_activation.jet_activation_reference` traces to
  (:func:`step_pattern`, matched by torch.fx's ``SubgraphMatcher`` in
  :func:`activation_steps`);
* a whole ``linear -> act -> ... -> linear`` network down to the coordinates
  (:func:`match_mlp`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

from ..ir.facts import valued
from ..kernels.jet_activation import ACTIVATIONS, jet_activation_reference

aten = torch.ops.aten

ACTIVATION_TARGETS = valued("activation")


def weight_product(node: torch.fx.Node):
    """``(input, W, bias or None, W^T node)`` of ``addmm(b, h, W^T)``, ``mm(h, W^T)`` or
    ``matmul(h, W^T)`` with ``W^T`` = ``permute(W, [1, 0])`` or ``t(W)`` and unit
    ``alpha``/``beta``; None otherwise. W may be any node (:func:`linear_use` asks for a
    parameter)."""
    products = (aten.addmm.default, aten.mm.default, aten.matmul.default)
    if node.op != "call_function" or node.target not in products:
        return None
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return None
    bias, h, wt = node.args[:3] if node.target is aten.addmm.default else (None, *node.args[:2])
    if not isinstance(wt, torch.fx.Node) or not isinstance(h, torch.fx.Node):
        return None
    transposed = wt.target is aten.permute.default and list(wt.args[1]) == [1, 0]
    if not (transposed or wt.target is aten.t.default):
        return None
    return h, wt.args[0], bias, wt


def linear_use(node: torch.fx.Node, params: dict[torch.fx.Node, str]):
    """``(input, weight node, bias node or None)`` of ``addmm(b, h, permute(W))`` / ``mm(h, permute(W))``.

    ``params`` maps the parameter placeholders of the captured graph to their names;
    W must be one of them (``t(W)`` is accepted for ``permute(W, [1, 0])``). None otherwise.
    """
    if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
        return None
    product = weight_product(node)
    if product is None or product[1] not in params:
        return None
    h, w, bias, _ = product
    return h, w, bias if bias in params else None


def linear_layer(node, params: dict[torch.fx.Node, str]):
    """``(input, weight, bias)`` of ``addmm(b, h, permute(W, [1, 0]))`` with a parameter
    bias (an ``nn.Linear``), else None (``node`` may be any output argument)."""
    if not (isinstance(node, torch.fx.Node) and node.target is aten.addmm.default):
        return None
    use = linear_use(node, params)
    return use if use is not None and use[2] is not None else None


def linear_of(node: torch.fx.Node, coord: str, params: dict):
    """:func:`linear_layer` of a layer whose input is computed: None when it is the
    coordinates (or another placeholder)."""
    use = linear_layer(node, params)
    if use is None or use[0].name == coord or use[0].op == "placeholder":
        return None
    return use


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


@functools.cache
def step_pattern(act: str) -> torch.fx.GraphModule:
    """ATen graph ``(x0, x1, top) -> (y0, y1, ytop)`` of act's collapsed order-2 step (canonical form)."""

    def step(x0, x1, top):
        y0, (y1,), ytop = jet_activation_reference(x0, [x1], top, None, act)
        return y0, y1, ytop

    gm = make_fx(step)(torch.randn(4), torch.randn(2, 4), torch.randn(4))
    gm.graph.eliminate_dead_code()  # derivatives() computes orders 3, 4 too
    gm.recompile()
    return gm


def activation_steps(graph: torch.fx.Graph, act: str) -> list[tuple[list, list]]:
    """The canonical collapsed order-2 steps of ``act`` in ``graph``: ``((x0, x1, top),
    (y0, y1, ytop))`` per match of :func:`step_pattern` (same ops, same literals, no
    intermediate read outside the step)."""
    matcher = SubgraphMatcher(step_pattern(act).graph, match_output=False, match_placeholder=False)
    return [(m.placeholder_nodes, m.returning_nodes) for m in matcher.match(graph)]


@dataclass
class MLPMatch:
    """The matched network: parameter placeholders (nodes of the captured graph) per linear
    layer, in forward order."""

    weights: list[torch.fx.Node]
    biases: list[torch.fx.Node | None]
    activation: str


def match_mlp(gm: torch.fx.GraphModule, coord: torch.fx.Node, params: dict) -> MLPMatch | None:
    """The network when the captured graph is one ``linear -> act -> ... -> linear`` chain.

    The output is a :func:`linear_layer`, and every layer's input is one activation (the
    same everywhere, one of the kernels') of such a layer, down to ``coord``; no
    intermediate value is read elsewhere. None otherwise.
    """
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    layers, acts, node = [], set(), out
    while True:
        layer = linear_layer(node, params)
        if layer is None:
            return None
        h, w, b = layer
        layers.append((w, b))
        if h is coord:
            break
        found = activation_of(h)
        if found is None or found[0] not in ACTIVATIONS:
            return None
        acts.add(found[0])
        node = found[1]
    if len(acts) != 1 or any(len(n.users) != 1 for n in gm.graph.nodes if n.op == "call_function"):
        return None  # mixed activations, or intermediate values read elsewhere
    layers.reverse()
    return MLPMatch([w for w, _ in layers], [b for _, b in layers], acts.pop())
