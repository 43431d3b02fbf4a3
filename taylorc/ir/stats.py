"""Graph statistics: node counts by op, estimated FLOPs and coefficient bytes.

Read by the pass manager's records (every stage when dumping) and by the debug dump
(:mod:`taylorc.debug`).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.fx

from .facts import having
from .schema import tag_of
from .shapes import ensure_shapes

FREE = {op._schema.name.split("::")[1] for op in having("free")}  # views: no data moved


def op_name(node: torch.fx.Node) -> str:
    """The ATen name of a node's target (``"sum.dim_IntList"``; no overload for ``default``)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1] + (
            "" if t._overloadname == "default" else "." + t._overloadname
        )
    return str(getattr(t, "__name__", t))


def node_flops(node: torch.fx.Node) -> int:
    """Estimated floating-point operations of one node (2 per multiply-add; 1 per elementwise output)."""
    if node.op != "call_function" or not isinstance(node.meta.get("val"), torch.Tensor):
        return 0
    out = node.meta["val"]
    base = op_name(node).split(".")[0]
    if base in FREE:
        return 0
    if base in ("mm", "bmm", "matmul", "addmm"):
        a = node.args[1] if base == "addmm" else node.args[0]
        inner = a.meta["val"].shape[-1] if isinstance(a, torch.fx.Node) and "val" in a.meta else 1
        return 2 * out.numel() * inner
    if base == "einsum":
        sizes = [a.meta["val"].numel() for a in node.all_input_nodes if "val" in a.meta]
        return 2 * max(sizes, default=0)
    if base in ("sum", "mean"):
        a = node.args[0]
        return (
            a.meta["val"].numel()
            if isinstance(a, torch.fx.Node) and "val" in a.meta
            else out.numel()
        )
    return out.numel()


def graph_stats(gm: torch.fx.GraphModule) -> dict:
    """Node counts by op, estimated FLOPs and coefficient bytes of a graph.

    Shapes come from ``meta["val"]`` (annotated by fake-tensor propagation when
    missing). Coefficient bytes count the materialised (non-view) tensors the
    taylor pass created for orders >= 1.
    """

    ensure_shapes(gm)
    counts = Counter(op_name(n) for n in gm.graph.nodes if n.op == "call_function")
    flops = sum(node_flops(n) for n in gm.graph.nodes)
    coeff_bytes = 0
    for n in gm.graph.nodes:
        tag = tag_of(n)
        v = n.meta.get("val")
        if (
            tag is not None
            and tag.order >= 1
            and isinstance(v, torch.Tensor)
            and op_name(n).split(".")[0] not in FREE
        ):
            coeff_bytes += v.numel() * v.element_size()
    return {
        "nodes": len(gm.graph.nodes),
        "ops": dict(sorted(counts.items())),
        "flops": int(flops),
        "coefficient_bytes": int(coeff_bytes),
    }
