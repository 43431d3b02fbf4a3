"""What a graph's values carry and share: derivatives (:func:`carries_derivatives`, by
dtype), memory (:func:`aliases`, the alias classes by the ops' schemas) and in-place
writes (:func:`written`)."""

from __future__ import annotations

import operator

import torch
import torch.fx

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
