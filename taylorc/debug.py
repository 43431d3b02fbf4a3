"""Debug dumps and graph statistics.

With ``taylorc.compile(..., debug_dir=DIR)`` or ``TAYLORC_DEBUG_DIR=DIR``
every stage of the pipeline is written to DIR:

* ``NN_<pass>.py`` -- the graph as readable Python;
* ``NN_<pass>.txt`` -- a node table: name, op, target, shape, and the
  ``taylorc`` metadata (source node, order, collapsed, R);
* ``NN_<pass>.svg`` -- a picture, when pydot and graphviz's ``dot`` are installed;
* ``plan.txt`` -- the jet plan (directions, weights, coefficients);
* ``summary.json`` -- per pass: seconds, node counts by op, estimated FLOPs
  and coefficient bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.fx

from .ir import Tag, tag_of
from .ir.stats import graph_stats, node_flops, op_name  # noqa: F401 - read from here too

aten = torch.ops.aten


def node_table(gm: torch.fx.GraphModule) -> str:
    """A fixed-width table of the graph's nodes with shapes and ``taylorc`` metadata."""
    rows = [("name", "op", "target", "shape", "taylorc")]
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else ""
        tag = tag_of(n)
        rows.append(
            (
                n.name,
                n.op,
                op_name(n) if n.op == "call_function" else str(n.target),
                str(shape),
                json.dumps(tag.describe(), default=str) if tag else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return (
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)
        + "\n"
    )


_ORDER_COLORS = ["#ffffff", "#dbeafe", "#fde68a", "#fecaca", "#d9f99d", "#e9d5ff"]


def graph_picture(gm: torch.fx.GraphModule):
    """A ``pydot.Dot`` of the graph: one box per node (name, op, shape), coloured by Taylor order.

    Collapsed coefficients get a bold border. Requires pydot (and graphviz's ``dot`` to render).
    """
    import pydot

    dot = pydot.Dot(graph_type="digraph", rankdir="TB")
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        tag = tag_of(n) or Tag(None, 0)
        order = tag.order
        label = n.name + "\\n" + (op_name(n) if n.op == "call_function" else n.op)
        if isinstance(v, torch.Tensor):
            label += "\\n" + "x".join(map(str, v.shape))
        if tag_of(n) is not None:
            label += f"\\nk={order}" + (" collapsed" if tag.get("collapsed") else "")
        dot.add_node(
            pydot.Node(
                n.name,
                label=f'"{label}"',
                shape="box",
                style='"filled,bold"' if tag.get("collapsed") else "filled",
                fillcolor=_ORDER_COLORS[max(order, 0) % len(_ORDER_COLORS)],
            )
        )
        for a in n.all_input_nodes:
            dot.add_edge(pydot.Edge(a.name, n.name))
    return dot


class Dumper:
    """Writes every stage of a compilation to a directory.

    Args:
        directory: created if missing; files of an earlier dump are overwritten.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def stage(self, index: int, name: str, gm: torch.fx.GraphModule) -> None:
        """Write stage ``index`` (after pass ``name``): its code (``.py``), node table (``.txt``)
        and drawing (``.svg``, with the docs extra)."""
        stem = self.dir / f"{index:02d}_{name}"
        stem.with_suffix(".py").write_text(f"# taylorc stage {index}: {name}\n" + gm.code)
        stem.with_suffix(".txt").write_text(node_table(gm))
        self._svg(gm, stem.with_suffix(".svg"))

    def _svg(self, gm, path):
        if shutil.which("dot") is None:
            return
        try:
            path.write_bytes(graph_picture(gm).create_svg())
        except Exception:  # pydot missing or graphviz failing: the picture is optional
            pass

    def summary(self, ctx) -> None:
        """Write ``plan.txt`` and ``summary.json``: the jet plan and each pass's record."""
        (self.dir / "plan.txt").write_text(ctx.plan.describe() + "\n")
        summary = {
            "plan": {
                "D": ctx.plan.D,
                "K": ctx.plan.K,
                "R": ctx.plan.R,
                "G": ctx.plan.G,
                "collapsible": ctx.plan.collapsible,
                "coefficients_per_node": ctx.plan.coefficient_count(),
            },
            "passes": ctx.records,
        }
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def format_records(records: list[dict]) -> str:
    """Text table of pass records (used by ``CompiledOperator.explain``); ``-`` where a
    stage's estimates were not computed (they are, for every stage, when dumping)."""
    lines = [f"{'pass':<10}{'ms':>8}{'nodes':>7}{'MFLOP':>11}{'coeff MB':>10}"]
    for r in records:
        flops = f"{r['flops'] / 1e6:>11.2f}" if "flops" in r else f"{'-':>11}"
        mb = (
            f"{r['coefficient_bytes'] / 2**20:>10.2f}" if "coefficient_bytes" in r else f"{'-':>10}"
        )
        lines.append(f"{r['pass']:<10}{1e3 * r['seconds']:>8.1f}{r['nodes']:>7}{flops}{mb}")
    return "\n".join(lines)
