"""Graph passes: each a small object with a ``name`` and ``__call__(gm, ctx) -> gm``.

The :class:`PassManager` runs them in order, lints and recompiles after each,
records time and node counts, and dumps every stage when debugging.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.fx

from .. import ir
from ..operators.plan import JetPlan


class Pass(Protocol):
    """A graph pass: ``gm = pass_(gm, ctx)``."""

    name: str

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule: ...


@dataclass
class PassContext:
    """What every pass may read: the plan, the captured source graph, and the records.

    Attributes:
        plan: the :class:`~taylorc.operators.plan.JetPlan` being compiled.
        source: the captured functional ATen graph (its nodes carry ``meta["val"]``).
        coord: name of the source placeholder that holds the coordinates x.
        dtype, device: of the coordinates; constants the passes create use them.
        records: one dict per pass run (name, seconds, node counts, FLOPs, bytes).
        batch_axis: the output axis that carries the coordinates' batch axis (set by
            the batch analysis; 1 for a DeepONet's ``(M, N)``), None if unknown.
        probe_inputs: real tensors for the source graph's placeholders (parameters,
            buffers, arguments), for the exact batch-coupling probe
            (:func:`taylorc.passes.batch.probe_rows`); None: the graph analysis decides.
    """

    plan: JetPlan
    source: torch.fx.GraphModule
    coord: str
    dtype: torch.dtype
    device: torch.device
    records: list[dict[str, Any]] = field(default_factory=list)
    batch_axis: int | None = 0
    probe_inputs: list | None = None

    def warn(self, message: str) -> None:
        warnings.warn(message, UserWarning, stacklevel=4)


def relink(order: list[torch.fx.Node]) -> None:
    """Put the graph's nodes in ``order`` (all of them, topologically sorted), moving only misplaced ones."""
    prev = None
    for node in order:
        if prev is not None and node.prev is not prev:
            prev.append(node)
        prev = node


def checking() -> bool:
    """Whether pass managers validate the IR after every pass by default.

    On when the environment variable ``TAYLORC_CHECK_IR`` is set to anything but
    ``""``/``"0"`` (``tests/conftest.py`` sets it for the test suite).
    """
    return os.environ.get("TAYLORC_CHECK_IR", "") not in ("", "0")


class PassManager:
    """Run passes in order; lint, recompile, record, and dump each stage.

    Args:
        passes: the passes, in order.
        dump: a :class:`taylorc.debug.Dumper` or None.
        check: run :func:`taylorc.ir.validate` after every pass (default: when
            dumping, or when :func:`checking`).

    Raises (from :meth:`run`):
        taylorc.ir.IRError: with ``check``, a pass broke an IR invariant (the message
            names the pass).
    """

    def __init__(self, passes: list[Pass], dump=None, check: bool | None = None):
        self.passes = passes
        self.dump = dump
        self.check = check if check is not None else (dump is not None or checking())

    def run(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        self._record(gm, ctx, "capture", 0.0)
        for p in self.passes:
            t0 = time.perf_counter()
            gm = p(gm, ctx)
            gm.graph.lint()
            gm.recompile()
            if self.check:
                try:
                    ir.validate(gm)
                except ir.IRError as e:
                    raise ir.IRError(f"after the {p.name} pass: {e}") from None
            self._record(gm, ctx, p.name, time.perf_counter() - t0)
        if self.dump is not None:
            self.dump.summary(ctx)
        return gm

    def _record(self, gm, ctx, name, seconds):
        from ..debug import graph_stats

        stats = graph_stats(gm)
        ctx.records.append({"pass": name, "seconds": seconds, **stats})
        if self.dump is not None:
            self.dump.stage(len(ctx.records) - 1, name, gm)
