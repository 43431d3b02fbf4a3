"""Linear sites: where the Taylor graph applies a weight, column by column (the contract KFAC reads).

In the Taylor graph of a network, every linear layer ``z = h W^T + b`` is applied to
S coefficient columns that share W: the value, each direction of each order below
the top, and the top (collapsed: one column per collapse-weight row; standard: one
per direction). A :class:`LinearSite` records, for one use of a weight in the
captured graph (``addmm(b, h, permute(W))`` or ``mm(h, permute(W))``), the input and
output node of every column. Kronecker-factored curvature for PINN losses needs
exactly these (Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature
for Physics-Informed Neural Networks", NeurIPS 2024, Sec. 3): A from the inputs Z,
B from ``g = dr/dz`` per column, read through zero-valued taps on the outputs.

The sites pipeline (:func:`taylorc.api.CompiledOperator.taylor_graph`) is taylor,
:class:`PinPass`, collapse and :class:`SitesPass`, without the cleanup pass: zero
pruning would cut known-zero columns out of the graph (their g is not zero), and
a plain CSE would merge equal columns of different orders (one tap could not tell
their g apart). So every column's per-sample input and pre-activation output is
its own node. :class:`SitesPass` hoists batch broadcasts out of matmuls (the
first layer's direction columns: the output stays per sample as an ``expand``,
the input columns stay as they were), adds one tap input per site (or returns
the output columns), returns every site's input columns, and runs a CSE that
keeps every output column apart, then DCE. Method of the graph:
Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode AD" (NeurIPS 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from .. import ir
from ..ir import annotate_shapes
from ..ir.zeros import known_zero, known_zeros  # noqa: F401 - known_zero: read from here too
from .cleanup import hoist_broadcast_matmuls
from .factored import Factored, factor_inputs, factor_outputs
from .patterns import linear_use
from .propagate import depends_on

aten = torch.ops.aten


@dataclass
class Column:
    """One coefficient column of a linear site.

    Attributes:
        kind: ``"value"`` (order 0, the plain forward), ``"direction"`` (order k,
            direction r) or ``"top"`` (the collapsed top order, collapse-weight row g).
        order: the Taylor order k.
        index: the direction r (``"direction"``) or the row g (``"top"`` with several
            rows); None for the value and a single-row top.
        input: the node holding the input coefficient: ``(M, d_in)`` for value/top,
            ``(R, M, d_in)`` (take ``[index]``) for a direction, ``(G, M, d_in)`` for a
            top of G rows. None: known zero and not in the graph, or held by a
            :class:`~taylorc.passes.factored.Factored` input of the site.
        output: the node holding the pre-activation output coefficient, same layout
            with ``d_out``. None: it does not reach the result (g = 0 there), or its g
            is held by a :class:`~taylorc.passes.factored.Factored` output of the site.
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
class LinearSite:
    """One use of a weight in a linear layer of the captured model, over all its columns.

    Attributes:
        name: unique among the graph's sites: the module's name, ``"#<i>"`` appended
            for the i-th further use of the same weight.
        module: qualified name of the module that owns the weight (``"net.0"``).
        weight: qualified parameter name of W ``(d_out, d_in)``.
        bias: qualified parameter name of b ``(d_out,)``, or None (no bias, or a bias
            added outside the matmul, which is then not part of this site).
        source: the ``addmm``/``mm`` node of the captured graph.
        columns: the S columns, in the order of ``Z``'s and the tap's axis 1: the value,
            then order 1..K-1 (each: directions 0..R-1), then the top.
        rows_per_point: input rows per point (1, or n for a layer applied to ``(B, n, d)``).
        collapse_weights: the plan's top weights ``(G, R)`` (None for standard Taylor).
        tap, z: nodes of the sites graph: the tap placeholder and the stacked inputs
            (without the columns of ``factored`` inputs).
        factored: columns held as products (:class:`~taylorc.passes.factored.Factored`; graphs without taps only).
    """

    name: str
    module: str
    weight: str
    bias: str | None
    source: torch.fx.Node
    columns: list[Column] = field(default_factory=list)
    rows_per_point: int = 1
    collapse_weights: torch.Tensor | None = None
    tap: torch.fx.Node | None = None
    z: torch.fx.Node | None = None
    factored: list[Factored] = field(default_factory=list)

    @property
    def S(self) -> int:
        """Number of coefficient columns."""
        return len(self.columns)

    def parameters(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The live ``(W, b)`` tensors of ``model`` (b None without a bias)."""
        params = dict(model.named_parameters())
        return params[self.weight], params[self.bias] if self.bias is not None else None

    def references(self):
        """Every node of the sites graph this site names, as ``(where, node)`` pairs."""
        for s, c in enumerate(self.columns):
            for what, n in (("input", c.input), ("output", c.output)):
                if n is not None:
                    yield f"sites[{self.name}].columns[{s}].{what}", n
        for what, n in (("tap", self.tap), ("z", self.z)):
            if n is not None:
                yield f"sites[{self.name}].{what}", n
        for i, f in enumerate(self.factored):
            for what, n in (("P", f.P), ("Q", f.Q)):
                if n is not None:
                    yield f"sites[{self.name}].factored[{i}].{what}", n

    def tag(self, node: torch.fx.Node, column: Column, role: str) -> None:
        """Tag a node the sites pipeline made for ``column`` of this site (``role``: what
        it is, e.g. ``"tap"``, ``"site_input"``, ``"factor"``)."""
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
        self.tap = fn(self.tap) if self.tap is not None else None
        self.z = fn(self.z) if self.z is not None else None
        for f in self.factored:
            f.P = fn(f.P) if f.P is not None else None
            f.Q = fn(f.Q) if f.Q is not None else None


def _columns(h_jet, z_jet, K: int, R: int, G: int, collapsed: bool, zeros: set) -> list[Column]:
    """The columns of one site from the jets of its input and output (``zeros``: the
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


def find_sites(
    gm: torch.fx.GraphModule, param_names: list[str], plan, coord: str = "x"
) -> list[LinearSite]:
    """The linear sites of a Taylor graph (taylor or collapsed, before any fusing pass).

    Args:
        gm: the graph, with its :class:`~taylorc.ir.GraphInfo` (jets by source node).
        param_names: qualified parameter names in the order of the captured graph's
            first placeholders (:attr:`taylorc.capture.Captured.param_names`).
        plan: the :class:`~taylorc.operators.plan.JetPlan`.
        coord: the name capture gave the coordinates' placeholder.

    Returns:
        one site per use of a weight whose input depends on the coordinates (layers
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
    sites, uses = [], {}
    for node in info.source.graph.nodes:
        use = linear_use(node, params)
        if use is None or use[0] not in varying:
            continue
        h, w, b = use
        weight = params[w]
        module = weight.rsplit(".", 1)[0] if weight.endswith(".weight") else weight
        i = uses[weight] = uses.get(weight, -1) + 1
        cols = _columns(info.jet(h), info.jet(node), info.K, info.R, info.G, collapsed, zeros)
        site = LinearSite(
            module + (f"#{i}" if i else ""), module, weight, params.get(b), node, cols
        )
        site.collapse_weights = weights
        site.rows_per_point = max(1, h.meta["val"].shape[0] // points)
        sites.append(site)
    return sites


class SitesPass:
    """Find the linear sites and open them: one tap input per site, every site's inputs returned.

    The graph gains, after its placeholders, one tap placeholder per site, shaped
    ``(N, S, d_out)`` (``(N, S, n, d_out)`` for layers applied to ``(N, n, d)``), whose
    column s is added to the site's output column s; and its output becomes
    ``(*terms, *Z)`` with ``Z`` per site shaped like the tap with ``d_in``. Zero taps
    leave the result unchanged; the gradient of the result with respect to a tap is
    ``g = dr/dz`` per point and column. Sites land in ``GraphInfo.sites``.

    With ``taps=False`` the graph has no tap inputs and returns, after the Z's, every
    site's distinct output nodes (:func:`column_groups`, site by site), then ``P, Q``
    of each :class:`~taylorc.passes.factored.Factored` block of each site: the gradient of the result with
    respect to those intermediate tensors is the same g (for a factored output block,
    ``dr/dP ⊙ Q``), without the adds on the forward and the scatter into one tap per
    site on the reverse pass (what :mod:`taylorc.optim` runs). Its Z's leave out the
    columns of factored input blocks.

    Args:
        param_names: qualified parameter names in captured-placeholder order.
        taps: add the tap inputs (True) or return the output columns (False).
    """

    name = "sites"
    requires = ("taylor",)
    forbids = ("clean",)  # pruning and a plain CSE would merge or drop columns
    ensures = ("sites",)

    def __init__(self, param_names: list[str], taps: bool = True):
        self.param_names, self.taps = param_names, taps

    def __call__(self, gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
        annotate_shapes(gm)
        if hoist_broadcast_matmuls(gm):  # per-sample outputs stay: the expand is the column
            annotate_shapes(gm)
        info = ir.info(gm)
        info.sites = find_sites(gm, self.param_names, ctx.plan, ctx.coord)
        graph = gm.graph
        out = next(n for n in graph.nodes if n.op == "output")
        first = next(n for n in graph.nodes if n.op != "placeholder")
        coord = next(n for n in graph.nodes if n.op == "placeholder" and n.name == ctx.coord)
        N, zs, columns = coord.meta["val"].shape[0], [], []
        if not self.taps:  # before anything reads the blocks: pins and stacks are not uses
            out.args = (tuple(out.args[0][: len(ctx.plan.terms)]),)
            for site in info.sites:
                site.factored = factor_inputs(graph, site, N)
            for site in info.sites:
                site.factored += factor_outputs(gm, site, N)
        for i, site in enumerate(info.sites):
            d_in, d_out = _width(site, "input"), _width(site, "output")
            mid = [site.rows_per_point] if site.rows_per_point > 1 else []
            if self.taps:
                with graph.inserting_before(first):
                    site.tap = graph.placeholder(f"tap_{i}")
                with FakeTensorMode():
                    site.tap.meta["val"] = torch.empty([N, site.S, *mid, d_out], dtype=ctx.dtype)
                _attach_taps(graph, site, N)
            else:
                columns += [z for z, _ in column_groups(site)]
            with graph.inserting_before(out):
                site.z = _stack_inputs(graph, site, N, mid, d_in, ctx.dtype)
            zs.append(site.z)
        terms = out.args[0][: len(ctx.plan.terms)]  # without PinPass's pins (tapped: read now)
        factors = [n for site in info.sites for f in site.factored for n in (f.P, f.Q)]
        out.args = (tuple(terms) + tuple(zs) + tuple(columns) + tuple(factors),)
        # CSE that keeps every node whose g is read apart (it must keep exactly its own
        # users), then DCE of what only the pins read
        read = {c.output for s in info.sites for c in s.columns if c.output is not None}
        read |= {f.P for s in info.sites for f in s.factored if f.side == "output"}
        ir.cse(gm, keep=read)
        ir.dce(gm)
        return gm


class PinPass:
    """Keep every linear site's input coefficients alive until :class:`SitesPass` reads them.

    The Laplacian's graph never reads the last layer's first-order inputs, and the
    collapse pass drops them; KFAC counts them in its input factor (Dangel, Müller,
    Zeinhofer 2024). This pass appends them to the graph's outputs (orders below the
    top, all orders without collapse); :class:`SitesPass` removes them again.
    """

    name = "pin_sites"
    requires = ("taylor",)
    forbids = ("collapsed", "clean")  # the collapse drops what it pins
    ensures = ("pinned",)

    def __init__(self, param_names: list[str], collapsing: bool):
        self.param_names, self.collapsing = param_names, collapsing

    def __call__(self, gm: torch.fx.GraphModule, ctx) -> torch.fx.GraphModule:
        info = ir.info(gm)
        placeholders = [n for n in info.source.graph.nodes if n.op == "placeholder"]
        params = dict(zip(placeholders, self.param_names))
        top = ctx.plan.K if self.collapsing and ctx.plan.collapsible else ctx.plan.K + 1
        pins = []
        for node in info.source.graph.nodes:
            use = linear_use(node, params)
            if use is not None:
                pins += [n for n in info.jet(use[0])[:top] if n is not None]
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (tuple(out.args[0]) + tuple(pins),)
        return gm


def _width(site: LinearSite, what: str) -> int:
    """d_in or d_out of a site, from any column's input or output node."""
    node = next(getattr(c, what) for c in site.columns if getattr(c, what) is not None)
    return node.meta["val"].shape[-1]


def column_groups(site: LinearSite) -> list[tuple[torch.fx.Node, list[int]]]:
    """The site's distinct output nodes, each with the columns s it holds, in column order.

    A node holds one column (``(M, d_out)``, ``Column.index`` None) or a block
    (``(R, M, d_out)``, column s at ``[site.columns[s].index]``).

    Raises:
        taylorc.ir.IRError: columns of several orders share one node (their g could not
            be told apart).
    """
    groups: dict[torch.fx.Node, list[int]] = {}
    for s, c in enumerate(site.columns):
        if c.output is not None:
            groups.setdefault(c.output, []).append(s)
    for z, cols in groups.items():
        if len({site.columns[s].order for s in cols}) > 1:
            raise ir.IRError(f"site {site.name}: columns of several orders share the node {z.name}")
    return list(groups.items())


def _attach_taps(graph: torch.fx.Graph, site: LinearSite, N: int) -> None:
    """``z + tap[:, s]`` for each output column s (a block's R columns at once)."""
    for z, cols in column_groups(site):
        shape = list(z.meta["val"].shape)
        column = site.columns[cols[0]]
        with graph.inserting_before(z.next):
            if column.index is None:  # one column: (M, d_out)
                piece = graph.call_function(aten.select.int, (site.tap, 1, cols[0]))
                made = [piece]
            else:  # a block of columns: (R, M, d_out)
                piece = graph.call_function(aten.slice.Tensor, (site.tap, 1, cols[0], cols[-1] + 1))
                made = [piece]
                piece = graph.call_function(aten.movedim.int, (piece, 1, 0))
                made.append(piece)
            made.append(graph.call_function(aten.reshape.default, (made[-1], shape)))
            tapped = graph.call_function(aten.add.Tensor, (z, made[-1]))
        for n in made + [tapped]:
            site.tag(n, column, "tap")
        # not ir.replace: the site keeps naming the untapped output z
        z.replace_all_uses_with(tapped, delete_user_cb=lambda u, t=tapped: u is not t)


def _stack_inputs(graph, site: LinearSite, N: int, mid: list[int], d_in: int, dtype):
    """``Z (N, S', *mid, d_in)``: the input columns stacked (known zeros made explicit),
    without the ``S - S'`` columns of factored inputs."""
    cols, factored = [], site.factored_columns("input")
    for s, c in enumerate(site.columns):
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
            site.tag(col, c, "site_input")
    S = len(cols)
    made = [graph.call_function(aten.stack.default, (cols, 1))]  # (N * n, S, d_in)
    if mid:  # rows of one point are consecutive: (N, n, S, d_in) -> (N, S, n, d_in)
        made.append(graph.call_function(aten.reshape.default, (made[-1], [N, *mid, S, d_in])))
        made.append(graph.call_function(aten.movedim.int, (made[-1], 1, 2)))
    made.append(graph.call_function(aten.reshape.default, (made[-1], [N, S, *mid, d_in])))
    for n in made:
        site.tag(n, site.columns[0], "site_input")
    return made[-1]
