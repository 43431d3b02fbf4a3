"""The IR schema: the node tag (:class:`Tag`), the graph description (:class:`GraphInfo`)
and the check of their invariants (:func:`validate`).

Every node a Taylor-mode pass creates carries a :class:`Tag` in
``node.meta["taylorc"]``; every graph the pipeline returns carries one
:class:`GraphInfo` in ``gm.meta["taylorc"]``, filled in the same shape by every
method (``taylor``, ``collapsed``, ``stochastic``, ``zcs``, ``stein``, ``mlp``).
The description refers to nodes by object, never by their generated names: the
source node of a tag is a node of the captured graph (``GraphInfo.source``),
and the coefficient nodes of ``GraphInfo.jets`` are nodes of the graph itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from ..deprecation import renamed

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
        """Read a field like a dict (``tag.get("role")``; ``default`` for an unknown key)."""
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
        layers: the linear layers (:class:`taylorc.passes.layers.LinearLayer`), filled by
            :func:`taylorc.passes.layers.find_layers` in the layer pipeline (``sites``:
            the old name, deprecated).
        options: what else the method records (Stein's samples, the MLP match).
    """

    method: str
    source: torch.fx.GraphModule | None = None
    K: int = 0
    R: int = 0
    G: int = 0
    jets: dict[torch.fx.Node, list[Any]] = field(default_factory=dict)
    inputs: dict[str, list[torch.fx.Node]] = field(default_factory=dict)
    layers: list = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    sites = renamed("GraphInfo.sites", "layers")

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
        for layer in self.layers:
            yield from layer.references()

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
        for layer in self.layers:
            layer.remap(fn)


def info(gm: torch.fx.GraphModule) -> GraphInfo | None:
    """The graph's :class:`GraphInfo`, or None (a graph not made by taylorc's passes)."""
    out = getattr(gm, "meta", {}).get(META)
    return out if isinstance(out, GraphInfo) else None


def set_info(gm: torch.fx.GraphModule, description: GraphInfo) -> GraphInfo:
    """Write the description on ``gm.meta["taylorc"]`` and return it."""
    gm.meta[META] = description
    return description


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
