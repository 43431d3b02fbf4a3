"""Linear layers: where the Taylor graph applies a weight, column by column (the contract KFAC reads).

In the Taylor graph of a network, every linear layer ``z = h W^T + b`` is applied to
S coefficient columns that share W: the value, each direction of each order below
the top, and the top (collapsed: one column per collapse-weight row; standard: one
per direction). A :class:`LinearLayer` records, for one use of a weight in the
captured graph (``addmm(b, h, permute(W))`` or ``mm(h, permute(W))``), the input and
output node of every column. Kronecker-factored curvature for PINN losses needs
exactly these (Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature
for Physics-Informed Neural Networks", NeurIPS 2024, Sec. 3): A from the inputs Z,
B from ``g = dr/dz`` per column: the gradient of zero perturbations added to the outputs.

The layer pipeline (:func:`taylorc.api.CompiledOperator.taylor_graph`) is taylor,
:class:`KeepInputsPass`, collapse and :class:`LayerPass`, without the cleanup pass: zero
pruning would cut known-zero columns out of the graph (their g is not zero), and a
plain CSE would merge equal columns of different orders (one perturbation could not
tell their g apart). So every column's per-sample input and pre-activation output is
its own node. :class:`LayerPass` hoists batch broadcasts out of matmuls (the
first layer's direction columns: the output stays per sample as an ``expand``,
the input columns stay as they were), adds one perturbation input per layer (or returns
the output columns), returns every layer's input columns, and runs a CSE that
keeps every output column apart, then DCE. Method of the graph:
Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode AD" (NeurIPS 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from .. import ir
from ..deprecation import renamed, renamed_names
from ..ir import annotate_shapes
from ..ir.zeros import known_zero, known_zeros  # noqa: F401 - known_zero: read from here too
from .cleanup import hoist_broadcast_matmuls
from .factored import Factored, factor_inputs, factor_outputs
from .patterns import linear_use
from .propagate import depends_on

aten = torch.ops.aten


@dataclass
class Column:
    """One coefficient column of a linear layer.

    Attributes:
        kind: ``"value"`` (order 0, the plain forward), ``"direction"`` (order k,
            direction r) or ``"top"`` (the collapsed top order, collapse-weight row g).
        order: the Taylor order k.
        index: the direction r (``"direction"``) or the row g (``"top"`` with several
            rows); None for the value and a single-row top.
        input: the node holding the input coefficient: ``(M, d_in)`` for value/top,
            ``(R, M, d_in)`` (take ``[index]``) for a direction, ``(G, M, d_in)`` for a
            top of G rows. None: known zero and not in the graph, or held by a
            :class:`~taylorc.passes.factored.Factored` input of the layer.
        output: the node holding the pre-activation output coefficient, same layout
            with ``d_out``. None: it does not reach the result (g = 0 there), or its g
            is held by a :class:`~taylorc.passes.factored.Factored` output of the layer.
        zero_input: the input is known to be zero (the input's higher orders, e.g. the
            first layer's top); KFAC still counts the column in S.
    """

    kind: str
    order: int
    index: int | None
    input: torch.fx.Node | None
    output: torch.fx.Node | None
    zero_input: bool = False


@dataclass
class LinearLayer:
    """One use of a weight in a linear layer of the captured model, over all its columns.

    Attributes:
        name: unique among the graph's layers: the module's name, ``"#<i>"`` appended
            for the i-th further use of the same weight.
        module: qualified name of the module that owns the weight (``"net.0"``).
        weight: qualified parameter name of W ``(d_out, d_in)``.
        bias: qualified parameter name of b ``(d_out,)``, or None (no bias, or a bias
            added outside the matmul, which is then not part of this layer).
        source: the ``addmm``/``mm`` node of the captured graph.
        columns: the S columns, in the order of axis 1 of ``Z`` and of the perturbation:
            the value, then order 1..K-1 (each: directions 0..R-1), then the top.
        rows_per_point: input rows per point (1, or n for a layer applied to ``(B, n, d)``).
        collapse_weights: the plan's top weights ``(G, R)`` (None for standard Taylor).
        perturbation, z: the perturbation placeholder (added to the outputs) and the
            stacked inputs (without the columns of ``factored`` inputs), graph nodes.
        factored: columns held as products (:class:`~taylorc.passes.factored.Factored`; graphs without perturbations only).
    """

    name: str
    module: str
    weight: str
    bias: str | None
    source: torch.fx.Node
    columns: list[Column] = field(default_factory=list)
    rows_per_point: int = 1
    collapse_weights: torch.Tensor | None = None
    perturbation: torch.fx.Node | None = None
    z: torch.fx.Node | None = None
    factored: list[Factored] = field(default_factory=list)
    tap = renamed("LinearLayer.tap", "perturbation")

    @property
    def S(self) -> int:
        """Number of coefficient columns."""
        return len(self.columns)

    def parameters(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The live ``(W, b)`` tensors of ``model`` (b None without a bias)."""
        params = dict(model.named_parameters())
        return params[self.weight], params[self.bias] if self.bias is not None else None

    def references(self):
        """Every node of the layer graph this layer names, as ``(where, node)`` pairs."""
        for s, c in enumerate(self.columns):
            for what, n in (("input", c.input), ("output", c.output)):
                if n is not None:
                    yield f"layers[{self.name}].columns[{s}].{what}", n
        for what, n in (("perturbation", self.perturbation), ("z", self.z)):
            if n is not None:
                yield f"layers[{self.name}].{what}", n
        for i, f in enumerate(self.factored):
            for what, n in (("P", f.P), ("Q", f.Q)):
                if n is not None:
                    yield f"layers[{self.name}].factored[{i}].{what}", n

    def tag(self, node: torch.fx.Node, column: Column, role: str) -> None:
        """Tag a node the layer pipeline made for ``column`` of this layer (``role``: what
        it is, e.g. ``"perturbation"``, ``"layer_input"``, ``"factor"``)."""
        layout = {"value": "value", "top": "top", "direction": "block"}[column.kind]
        ir.set_tag(node, ir.Tag(self.source, column.order, layout, role=role))

    def factored_columns(self, side: str) -> set[int]:
        """The columns held as products on ``side`` (``"input"`` or ``"output"``)."""
        return {s for f in self.factored if f.side == side for s in f.cols}

    def remap(self, fn) -> None:
        """Replace every referenced node n by ``fn(n)`` (see :meth:`taylorc.ir.GraphInfo.remap`)."""
        for c in self.columns:
            c.input = fn(c.input) if c.input is not None else None
            c.output = fn(c.output) if c.output is not None else None
        self.perturbation = fn(self.perturbation) if self.perturbation is not None else None
        self.z = fn(self.z) if self.z is not None else None
        for f in self.factored:
            f.P = fn(f.P) if f.P is not None else None
            f.Q = fn(f.Q) if f.Q is not None else None


def _columns(h_jet, z_jet, K: int, R: int, G: int, collapsed: bool, zeros: set) -> list[Column]:
    """The columns of one layer from the jets of its input and output (``zeros``: the
    graph's :func:`~taylorc.ir.zeros.known_zeros`)."""

    def at(jet, k):
        return jet[k] if k < len(jet) else None

    cols = [Column("value", 0, None, at(h_jet, 0), at(z_jet, 0))]
    for k in range(1, K + 1):
        x, z = at(h_jet, k), at(z_jet, k)
        zero = x is None or x in zeros
        if k == K and collapsed:
            rows = [None] if G == 1 else list(range(G))
            cols += [Column("top", k, g, x, z, zero_input=zero) for g in rows]
        else:
            cols += [Column("direction", k, r, x, z, zero_input=zero) for r in range(R)]
    return cols


def find_layers(
    gm: torch.fx.GraphModule, param_names: list[str], plan, coord: str = "x"
) -> list[LinearLayer]:
    """The linear layers of a Taylor graph (taylor or collapsed, before any fusing pass).

    Args:
        gm: the graph, with its :class:`~taylorc.ir.GraphInfo` (jets by source node).
        param_names: qualified parameter names in the order of the captured graph's
            first placeholders (:attr:`taylorc.capture.Captured.param_names`).
        plan: the :class:`~taylorc.operators.plan.JetPlan`.
        coord: the name capture gave the coordinates' placeholder.

    Returns:
        one layer per use of a weight whose input depends on the coordinates (layers
        on constants, e.g. a DeepONet branch at a fixed function, have no columns).
    """
    info = ir.info(gm)
    placeholders = [n for n in info.source.graph.nodes if n.op == "placeholder"]
    params = dict(zip(placeholders, param_names))
    collapsed = info.method == "collapsed"
    weights = (
        torch.tensor([[float(w) for w in row] for row in plan.top_weights]) if collapsed else None
    )
    varying, zeros = depends_on(info.source.graph, coord), known_zeros(gm.graph)
    points = next(p for p in placeholders if p.name == coord).meta["val"].shape[0]
    layers, uses = [], {}
    for node in info.source.graph.nodes:
        use = linear_use(node, params)
        if use is None or use[0] not in varying:
            continue
        h, w, b = use
        weight = params[w]
        module = weight.rsplit(".", 1)[0] if weight.endswith(".weight") else weight
        i = uses[weight] = uses.get(weight, -1) + 1
        cols = _columns(info.jet(h), info.jet(node), info.K, info.R, info.G, collapsed, zeros)
        name = module + (f"#{i}" if i else "")
        layer = LinearLayer(name, module, weight, params.get(b), node, cols)
        layer.collapse_weights = weights
        layer.rows_per_point = max(1, h.meta["val"].shape[0] // points)
        layers.append(layer)
    return layers


class LayerPass:
    """Find the linear layers and open them: a perturbation per layer, every input returned.

    The graph gains, after its placeholders, one perturbation placeholder per layer,
    shaped ``(N, S, d_out)`` (``(N, S, n, d_out)`` for layers applied to ``(N, n, d)``),
    whose column s is added to the layer's output column s; and its output becomes
    ``(*terms, *Z)`` with ``Z`` per layer shaped like the perturbation with ``d_in``.
    Zero perturbations leave the result unchanged; the gradient of the result with respect
    to a perturbation is ``g = dr/dz`` per point and column. Layers: ``GraphInfo.layers``.

    With ``perturbations=False`` the graph has no perturbation inputs and returns, after
    the Z's, every layer's distinct output nodes (:func:`column_groups`, layer by layer),
    then ``P, Q`` of each :class:`~taylorc.passes.factored.Factored` block of each layer:
    the gradient of the result with respect to those intermediate tensors is the same g
    (for a factored output block, ``dr/dP ⊙ Q``), without the adds on the forward and
    the scatter into one perturbation per layer on the reverse pass (what
    :mod:`taylorc.optim` runs). Its Z's leave out the columns of factored input blocks.

    Args:
        param_names: qualified parameter names in captured-placeholder order.
        perturbations: add the perturbation inputs (True) or return the output columns (False).
    """

    name = "layers"
    requires = ("taylor",)
    forbids = ("clean",)  # pruning and a plain CSE would merge or drop columns
    ensures = ("layers",)

    def __init__(self, param_names: list[str], perturbations: bool = True):
        self.param_names, self.perturbations = param_names, perturbations

    def __call__(self, gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
        annotate_shapes(gm)
        if hoist_broadcast_matmuls(gm):  # per-sample outputs stay: the expand is the column
            annotate_shapes(gm)
        info = ir.info(gm)
        info.layers = find_layers(gm, self.param_names, ctx.plan, ctx.coord)
        graph = gm.graph
        out = next(n for n in graph.nodes if n.op == "output")
        first = next(n for n in graph.nodes if n.op != "placeholder")
        coord = next(n for n in graph.nodes if n.op == "placeholder" and n.name == ctx.coord)
        N, zs, columns = coord.meta["val"].shape[0], [], []
        if not self.perturbations:  # before any use of the blocks (kept inputs are none)
            out.args = (tuple(out.args[0][: len(ctx.plan.terms)]),)
            for layer in info.layers:
                layer.factored = factor_inputs(graph, layer, N)
            for layer in info.layers:
                layer.factored += factor_outputs(gm, layer, N)
        for i, layer in enumerate(info.layers):
            d_in, d_out = _width(layer, "input"), _width(layer, "output")
            mid = [layer.rows_per_point] if layer.rows_per_point > 1 else []
            if self.perturbations:
                with graph.inserting_before(first):
                    layer.perturbation = graph.placeholder(f"perturbation_{i}")
                with FakeTensorMode():
                    shape = [N, layer.S, *mid, d_out]
                    layer.perturbation.meta["val"] = torch.empty(shape, dtype=ctx.dtype)
                _attach_perturbations(graph, layer, N)
            else:
                columns += [z for z, _ in column_groups(layer)]
            with graph.inserting_before(out):
                layer.z = _stack_inputs(graph, layer, N, mid, d_in, ctx.dtype)
            zs.append(layer.z)
        terms = out.args[0][: len(ctx.plan.terms)]  # without KeepInputsPass's kept inputs
        factors = [n for layer in info.layers for f in layer.factored for n in (f.P, f.Q)]
        out.args = (tuple(terms) + tuple(zs) + tuple(columns) + tuple(factors),)
        # CSE that keeps every node whose g is read apart (it must keep exactly its own
        # users), then DCE of what only the kept inputs read
        read = {c.output for u in info.layers for c in u.columns if c.output is not None}
        read |= {f.P for u in info.layers for f in u.factored if f.side == "output"}
        ir.cse(gm, keep=read)
        ir.dce(gm)
        return gm


class KeepInputsPass:
    """Keep every linear layer's input coefficients alive until :class:`LayerPass` reads them.

    The Laplacian's graph never reads the last layer's first-order inputs, and the
    collapse pass drops them; KFAC counts them in its input factor (Dangel, Müller,
    Zeinhofer 2024). This pass appends them to the graph's outputs (orders below the
    top, all orders without collapse); :class:`LayerPass` removes them again.
    """

    name = "keep_layer_inputs"
    requires = ("taylor",)
    forbids = ("collapsed", "clean")  # the collapse drops what it keeps
    ensures = ("inputs_kept",)

    def __init__(self, param_names: list[str], collapsing: bool):
        self.param_names, self.collapsing = param_names, collapsing

    def __call__(self, gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
        info = ir.info(gm)
        placeholders = [n for n in info.source.graph.nodes if n.op == "placeholder"]
        params = dict(zip(placeholders, self.param_names))
        top = ctx.plan.K if self.collapsing and ctx.plan.collapsible else ctx.plan.K + 1
        kept = []
        for node in info.source.graph.nodes:
            use = linear_use(node, params)
            if use is not None:
                kept += [n for n in info.jet(use[0])[:top] if n is not None]
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (tuple(out.args[0]) + tuple(kept),)
        return gm


def _width(layer: LinearLayer, what: str) -> int:
    """d_in or d_out of a layer, from any column's input or output node."""
    node = next(getattr(c, what) for c in layer.columns if getattr(c, what) is not None)
    return node.meta["val"].shape[-1]


def column_groups(layer: LinearLayer) -> list[tuple[torch.fx.Node, list[int]]]:
    """The layer's distinct output nodes, each with the columns s it holds, in column order.

    A node holds one column (``(M, d_out)``, ``Column.index`` None) or a block
    (``(R, M, d_out)``, column s at ``[layer.columns[s].index]``).

    Raises:
        taylorc.ir.IRError: columns of several orders share one node (their g could not
            be told apart).
    """
    groups: dict[torch.fx.Node, list[int]] = {}
    for s, c in enumerate(layer.columns):
        if c.output is not None:
            groups.setdefault(c.output, []).append(s)
    for z, cols in groups.items():
        if len({layer.columns[s].order for s in cols}) > 1:
            raise ir.IRError(f"layer {layer.name}: columns of several orders share {z.name}")
    return list(groups.items())


def _attach_perturbations(graph: torch.fx.Graph, layer: LinearLayer, N: int) -> None:
    """``z + perturbation[:, s]`` for each output column s (a block's R columns at once)."""
    p = layer.perturbation
    for z, cols in column_groups(layer):
        shape = list(z.meta["val"].shape)
        column = layer.columns[cols[0]]
        with graph.inserting_before(z.next):
            if column.index is None:  # one column: (M, d_out)
                made = [graph.call_function(aten.select.int, (p, 1, cols[0]))]
            else:  # a block of columns: (R, M, d_out)
                made = [graph.call_function(aten.slice.Tensor, (p, 1, cols[0], cols[-1] + 1))]
                made.append(graph.call_function(aten.movedim.int, (made[-1], 1, 0)))
            made.append(graph.call_function(aten.reshape.default, (made[-1], shape)))
            perturbed = graph.call_function(aten.add.Tensor, (z, made[-1]))
        for n in made + [perturbed]:
            layer.tag(n, column, "perturbation")
        # not ir.replace: the layer keeps naming the unperturbed output z
        z.replace_all_uses_with(perturbed, delete_user_cb=lambda u, t=perturbed: u is not t)


def _stack_inputs(graph, layer: LinearLayer, N: int, mid: list[int], d_in: int, dtype):
    """``Z (N, S', *mid, d_in)``: the input columns stacked (known zeros made explicit),
    without the ``S - S'`` columns of factored inputs."""
    cols, factored = [], layer.factored_columns("input")
    for s, c in enumerate(layer.columns):
        if s in factored:
            continue
        if c.input is None:
            shape = [N * (mid[0] if mid else 1), d_in]
            col = graph.call_function(aten.zeros.default, (shape,), {"dtype": dtype})
        elif c.kind == "direction" or (c.kind == "top" and c.index is not None):
            col = graph.call_function(aten.select.int, (c.input, 0, c.index))
        else:
            col = c.input
        cols.append(col)
        if col is not c.input:
            layer.tag(col, c, "layer_input")
    S = len(cols)
    made = [graph.call_function(aten.stack.default, (cols, 1))]  # (N * n, S, d_in)
    if mid:  # rows of one point are consecutive: (N, n, S, d_in) -> (N, S, n, d_in)
        made.append(graph.call_function(aten.reshape.default, (made[-1], [N, *mid, S, d_in])))
        made.append(graph.call_function(aten.movedim.int, (made[-1], 1, 2)))
    made.append(graph.call_function(aten.reshape.default, (made[-1], [N, S, *mid, d_in])))
    for n in made:
        layer.tag(n, layer.columns[0], "layer_input")
    return made[-1]


# the names before issue 31 (sites and taps) still work, with a DeprecationWarning
_OLD = {"LinearSite": "LinearLayer", "find_sites": "find_layers", "SitesPass": "LayerPass"}
__getattr__ = renamed_names(globals(), {**_OLD, "PinPass": "KeepInputsPass"})
