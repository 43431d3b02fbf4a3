"""The graph IR schema: one node tag, one graph description, one way to rewrite, one check.

Every node a Taylor-mode pass creates carries a :class:`Tag` in
``node.meta["taylorc"]``; every graph the pipeline returns carries one
:class:`GraphInfo` in ``gm.meta["taylorc"]``, filled in the same shape by every
method (``taylor``, ``collapsed``, ``stochastic``, ``zcs``, ``stein``, ``mlp``).
The description refers to nodes by object, never by their generated names: the
source node of a tag is a node of the captured graph (``GraphInfo.source``),
and the coefficient nodes of ``GraphInfo.jets`` are nodes of the graph itself.

Passes that replace nodes go through :func:`replace` (it keeps tags and updates
every reference of the description) and delete dead nodes with :func:`dce`;
:func:`validate` checks the invariants and runs after every pass when the pass
manager checks (the test suite, the debug dump). Method: Dangel, Siebert,
Zeinhofer, Walther, "Collapsing Taylor Mode Automatic Differentiation" (NeurIPS 2025).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils._pytree import tree_flatten

# value: order 0 (shape S); block: (R, *S), one slice per direction; direction: one
# direction r of a block (shape S); top: the collapsed top order (S, or (G, *S) by row)
LAYOUTS = ("value", "block", "direction", "top")
META = "taylorc"


class IRError(AssertionError):
    """A graph breaks an invariant of the IR (see :func:`validate`)."""


@dataclass(frozen=True)
class Tag:
    """What one node of a Taylor graph computes.

    Attributes:
        source: the node of the captured graph it derives from (None: created for the
            graph as a whole, e.g. the output reads).
        order: the Taylor order k (0 for values and constants; -1 for output reads).
        layout: one of :data:`LAYOUTS`.
        R: number of directions of the plan.
        direction: the direction r, for layout ``"direction"``.
        row: the collapse-weight row g of a ``"top"`` node read per row (None: all rows).
        role: None for coefficients; ``"constant"``, ``"seed"``, ``"contract_top"``,
            ``"extract"``, ``"lowered"``, ``"stack"``, ``"zcs_shift"``, ``"mlp"``, ...
        coefficient: whether the node computes (part of) a Taylor coefficient.
    """

    source: torch.fx.Node | None
    order: int
    layout: str = "value"
    R: int = 0
    direction: int | None = None
    row: int | None = None
    role: str | None = None
    coefficient: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def collapsed(self) -> bool:
        """Whether the node holds (part of) the collapsed top coefficient."""
        return self.layout == "top"

    def get(self, key: str, default=None):
        """Read a field like a dict (``tag.get("role")``): kept for readers of the old dict tags."""
        return getattr(self, key, default) if key in _FIELDS or key == "collapsed" else default

    def replace(self, **changes) -> Tag:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The tag as a small JSON-able dict (the debug dump's node table)."""
        out = {"source": self.source.name if self.source is not None else None}
        out.update({k: getattr(self, k) for k in _FIELDS if k != "source"})
        out = {k: v for k, v in out.items() if v is not None and v is not False}
        return {**out, "collapsed": self.collapsed}


_FIELDS = tuple(f.name for f in dataclasses.fields(Tag))


def layout_of(k: int, collapsed: bool = False) -> str:
    """The layout of an order-k coefficient: value, per-direction block, or collapsed top."""
    return "value" if k == 0 else "top" if collapsed else "block"


def tag_of(node: torch.fx.Node) -> Tag | None:
    """The node's :class:`Tag`, or None."""
    tag = node.meta.get(META)
    return tag if isinstance(tag, Tag) else None


def set_tag(node: torch.fx.Node, tag: Tag) -> None:
    """Write ``tag`` on ``node.meta["taylorc"]``."""
    node.meta[META] = tag


def tag_new(nodes, like: Tag | None, **changes) -> None:
    """Give each untagged node of ``nodes`` the tag ``like`` (with ``changes``); None: nothing."""
    if like is None:
        return
    tag = like.replace(**changes) if changes else like
    for n in nodes:
        if tag_of(n) is None:
            set_tag(n, tag)


@dataclass
class GraphInfo:
    """The description every method writes on ``gm.meta["taylorc"]``, in one shape.

    Attributes:
        method: ``"taylor"``, ``"collapsed"``, ``"zcs"``, ``"stein"`` or ``"mlp"``.
        source: the captured graph the nodes' tags refer to.
        K, R, G: top order, directions and collapse-weight rows of the plan (0 where
            the method has none).
        jets: source node -> its coefficient nodes ``[x_0, ..., x_K]`` in this graph
            (None: known zero, dead or never computed; a tuple of R nodes: a block the
            unstack pass split per direction, None for a dead direction). Empty for ZCS,
            Stein, MLP.
        inputs: named extra placeholders of the method (``"zcs_shift"``: the D shifts;
            ``"noise"``: Stein's samples).
        sites: the linear sites (:class:`taylorc.passes.sites.LinearSite`), filled by
            :func:`taylorc.passes.sites.find_sites` in the sites pipeline.
        options: what else the method records (Stein's samples, the MLP match).
    """

    method: str
    source: torch.fx.GraphModule | None = None
    K: int = 0
    R: int = 0
    G: int = 0
    jets: dict[torch.fx.Node, list[Any]] = field(default_factory=dict)
    inputs: dict[str, list[torch.fx.Node]] = field(default_factory=dict)
    sites: list = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def jet(self, source: torch.fx.Node) -> list[Any]:
        """The coefficient nodes of a source node ([] when it has none)."""
        return self.jets.get(source, [])

    def references(self):
        """Every graph node the description names, as ``(where, node)`` pairs."""
        for src, nodes in self.jets.items():
            for k, n in enumerate(nodes):
                for m in n if isinstance(n, tuple) else (n,):
                    if m is not None:
                        yield f"jets[{src.name}][{k}]", m
        for role, nodes in self.inputs.items():
            for n in nodes:
                yield f"inputs[{role}]", n
        for site in self.sites:
            yield from site.references()

    def remap(self, fn) -> None:
        """Replace every referenced node n by ``fn(n)`` (a node, or None for gone)."""

        def one(n):
            if isinstance(n, tuple):  # per-direction pieces; a dead piece becomes None
                return tuple(fn(m) if m is not None else None for m in n)
            return fn(n) if n is not None else None

        for nodes in self.jets.values():
            nodes[:] = [one(n) for n in nodes]
        for role, nodes in self.inputs.items():
            self.inputs[role] = [m for m in map(fn, nodes) if m is not None]
        for site in self.sites:
            site.remap(fn)


def info(gm: torch.fx.GraphModule) -> GraphInfo | None:
    """The graph's :class:`GraphInfo`, or None (a graph not made by taylorc's passes)."""
    out = getattr(gm, "meta", {}).get(META)
    return out if isinstance(out, GraphInfo) else None


def set_info(gm: torch.fx.GraphModule, description: GraphInfo) -> GraphInfo:
    """Write the description on ``gm.meta["taylorc"]`` and return it."""
    gm.meta[META] = description
    return description


def replace(gm: torch.fx.GraphModule, old: torch.fx.Node, new: torch.fx.Node) -> None:
    """Replace every use of ``old`` by ``new``, keeping tags and the graph description.

    ``new`` inherits ``old``'s tag when it has none, and every reference of the
    description to ``old`` now names ``new``. ``old`` is left in the graph (dead:
    :func:`dce` or the caller erases it).
    """
    tag = tag_of(old)
    if tag is not None and tag_of(new) is None:
        set_tag(new, tag)
    old.replace_all_uses_with(new)
    description = info(gm)
    if description is not None:
        description.remap(lambda n: new if n is old else n)


def dce(gm: torch.fx.GraphModule) -> None:
    """Dead-code elimination that also drops the description's references to erased nodes."""
    gm.graph.eliminate_dead_code()
    forget_dead(gm)


def forget_dead(gm: torch.fx.GraphModule) -> None:
    """Drop the references of the description to nodes no longer in the graph."""
    description = info(gm)
    if description is None:
        return
    alive = set(gm.graph.nodes)
    description.remap(lambda n: n if n in alive else None)


_RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "randperm", "normal"}
_RANDOM |= {"bernoulli", "dropout", "native_dropout", "multinomial", "poisson"}


def cse(gm: torch.fx.GraphModule, keep=frozenset()) -> int:
    """Common-subexpression elimination in place, through :func:`replace`; returns the count.

    Two ``call_function``/``call_module`` nodes with the same target and the same
    arguments (after earlier merges) are merged into the first; random ops never are.
    Nodes in ``keep`` are neither merged away nor merged into (a node whose gradient
    is read must keep exactly its own users). The graph must be functional
    (taylorc's graphs are).
    """
    seen: dict = {}
    merged = 0
    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_module") or n in keep:
            continue
        packet = getattr(n.target, "overloadpacket", None)
        if packet is not None and packet.__name__ in _RANDOM:
            continue
        args, spec = tree_flatten((n.args, n.kwargs))
        key = (n.op, n.target, spec, tuple((type(a), a) for a in args))
        try:
            first = seen.setdefault(key, n)
        except TypeError:  # an unhashable literal: leave the node alone
            continue
        if first is not n:
            replace(gm, n, first)
            gm.graph.erase_node(n)
            merged += 1
    return merged


# ops that make one tensor share another's storage with no alias mark on the source
_SHARES_STORAGE = {torch.ops.aten.set_.source_Tensor, torch.ops.aten.set_.source_Storage}


def carries_derivatives(value) -> bool:
    """False for a boolean or integer tensor (masks, indices): its derivatives are zero;
    True for a floating-point or complex tensor and for anything that is no tensor."""
    return not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex()


def aliases(graph: torch.fx.Graph) -> tuple[dict, list]:
    """Which nodes of an ATen graph may share memory, and which are written in place.

    Two nodes are in one alias class when an op's schema says its result aliases an
    argument (every view, and the result of an in-place or ``out=`` op), with the
    argument given positionally, by keyword or in a list, or through ``getitem`` of
    such a list; ``set_`` joins its source too (its schema does not mark it).

    Returns:
        ``(klass, writes)``: ``klass`` maps every node to its class's representative;
        ``writes`` lists ``(op node, argument node)`` for every argument a schema marks
        written (in place, ``out=``), in graph order.
    """
    parent: dict = {}

    def root(n):
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    def join(a, b):
        parent[root(a)] = root(b)

    def nodes(v):
        if isinstance(v, torch.fx.Node):
            return [v]
        return [x for x in v if isinstance(x, torch.fx.Node)] if isinstance(v, list | tuple) else []

    writes = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem or node.target in _SHARES_STORAGE:
            for arg in nodes(node.args):  # no schema marks these aliases
                join(node, arg)
            if node.target is operator.getitem:
                continue
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            continue
        for i, spec in enumerate(schema.arguments):
            value = node.args[i] if i < len(node.args) else node.kwargs.get(spec.name)
            if spec.alias_info is None or value is None:
                continue
            for arg in nodes(value):
                join(node, arg)
                if spec.alias_info.is_write:
                    writes.append((node, arg))
    return {n: root(n) for n in graph.nodes}, writes


def written(graph: torch.fx.Graph) -> set:
    """The nodes whose memory an in-place op of ``graph`` may write: every argument a
    schema marks written and every node aliasing one (bases and views alike), by
    :func:`aliases`."""
    klass, writes = aliases(graph)
    hit = {klass[arg] for _, arg in writes}
    return {n for n in graph.nodes if klass[n] in hit}


def validate(gm: torch.fx.GraphModule) -> None:
    """Check the IR invariants of a graph made by taylorc's passes.

    1. Every node the description references is alive in this graph.
    2. Every tag is a :class:`Tag` whose source (if any) is a node of the captured
       graph ``GraphInfo.source``.
    3. In Taylor graphs (methods ``taylor``/``collapsed``), every ``call_function``
       and ``get_attr`` node is tagged (so every coefficient node of ``jets`` is).

    Raises:
        IRError: naming the first broken invariant. Graphs without a description
            (hand-written, or before the first pass) pass unchecked.
    """
    description = info(gm)
    if description is None:
        return
    alive = set(gm.graph.nodes)
    for where, n in description.references():
        if n not in alive:
            raise IRError(f"{description.method} graph: {where} names a node not in the graph")
    sources = set(description.source.graph.nodes) if description.source is not None else None
    for n in gm.graph.nodes:
        raw = n.meta.get(META)
        if raw is not None and not isinstance(raw, Tag):
            raise IRError(f"node {n.name}: meta['taylorc'] is a {type(raw).__name__}, not a Tag")
        if raw is not None and sources is not None and raw.source not in (None, *sources):
            raise IRError(f"node {n.name}: its tag's source is not a node of the captured graph")
    if description.method not in ("taylor", "collapsed"):
        return
    for n in gm.graph.nodes:
        if n.op in ("call_function", "get_attr") and tag_of(n) is None:
            raise IRError(f"taylor graph: node {n.name} ({n.target}) carries no tag")


def annotate_shapes(gm: torch.fx.GraphModule) -> None:
    """Set ``meta["val"]`` (fake tensors) on every node by fake-tensor propagation."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    inputs = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta["val"]
            with mode:
                inputs.append(
                    torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
                )
    FakeTensorProp(gm, mode).propagate(*inputs)


def ensure_shapes(gm: torch.fx.GraphModule) -> None:
    """Annotate ``meta["val"]`` where a node lacks it (a pass's new nodes); never raises."""
    if any("val" not in n.meta for n in gm.graph.nodes if n.op != "output"):
        try:
            annotate_shapes(gm)
        except Exception:  # noqa: BLE001 - shapes are an aid; a graph that fake mode cannot run still runs
            pass
