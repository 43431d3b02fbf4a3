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
from ..ir.coupling import check_batch_independence
from ..ir.stats import graph_stats
from ..operators.plan import JetPlan
from ..rules.define import elementwise


class Pass(Protocol):
    """A graph pass in the torch.fx style: ``result = pass_(gm, ctx)``.

    Attributes:
        name: the stage's name (dump files, records).
        requires: stage facts that must hold before the pass runs (``"captured"``,
            ``"operator"``: the graph computes the operators, ``"taylor"``,
            ``"collapsed"``, ``"clean"``, ...).
        forbids: stage facts that must NOT hold yet (the collapse needs the chain that
            cleanup prunes).
        ensures: stage facts that hold after it.

    Returns:
        a :class:`PassResult` (the graph and what the pass did), or just the graph.
    """

    name: str
    requires: tuple[str, ...]
    forbids: tuple[str, ...]
    ensures: tuple[str, ...]

    def __call__(
        self, gm: torch.fx.GraphModule, ctx: PassContext
    ) -> PassResult | torch.fx.GraphModule: ...


@dataclass
class PassResult:
    """What a pass returns: the new graph and a summary of what it did (``{"lowered": [...]}``).

    The pass manager records ``done`` with the stage (``ctx.records[i]["done"]``)
    instead of the pass keeping it in attributes.
    """

    gm: torch.fx.GraphModule
    done: dict[str, Any] = field(default_factory=dict)


class PassOrderError(ValueError):
    """A pipeline runs a pass before what it requires or after what it forbids."""


def check_order(passes: list, facts: set[str] | None = None) -> set[str]:
    """Raise :class:`PassOrderError` unless each pass's requirements hold in order.

    Returns:
        the stage facts after the last pass.
    """
    facts = set(facts if facts is not None else {"captured"})
    for p in passes:
        missing = set(getattr(p, "requires", ())) - facts
        present = set(getattr(p, "forbids", ())) & facts
        if missing or present:
            raise PassOrderError(
                f"the {p.name} pass needs {sorted(missing)} first"
                if missing
                else f"the {p.name} pass must run before what ensured {sorted(present)}"
            )
        facts |= set(getattr(p, "ensures", ()))
    return facts


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
        final: the pipeline's last graph (set by the pass manager).
        probe_inputs: real tensors for the source graph's placeholders (parameters,
            buffers, arguments), for the exact batch-coupling probe
            (:func:`taylorc.ir.probe.probe_rows`); None: the graph analysis decides.
        latency: seconds of the first call's stages (``"capture"``, ``"passes"``,
            ``"batch check"``, ``"compile"``), set by :class:`~taylorc.api.CompiledOperator`.
        batch: whether the graph serves every batch size, or why it is specialised to one.
        inference: a faster callable of the graph's inputs for calls that record no autograd
            graph (:class:`taylorc.passes.mlp.InferenceMLP`: the CPU whole-MLP kernel), or None.
        built_batch: the batch size the graph was built at, when it serves every batch
            size (its shapes still hold that count, e.g. a placeholder's fake value); None
            for a graph specialised to one.
    """

    plan: JetPlan
    source: torch.fx.GraphModule
    coord: str
    dtype: torch.dtype
    device: torch.device
    records: list[dict[str, Any]] = field(default_factory=list)
    batch_axis: int | None = 0
    probe_inputs: list | None = None
    final: Any = None
    latency: dict[str, float] = field(default_factory=dict)
    batch: str = ""
    built_batch: int | None = None
    inference: Any = None

    def warn(self, message: str) -> None:
        """Issue ``message`` as a ``UserWarning`` (a pass's finding: a non-smooth op, a fallback)."""
        warnings.warn(message, UserWarning, stacklevel=4)

    def check_batch(self, gm: torch.fx.GraphModule) -> int | None:
        """Raise if the captured ``gm`` couples batch rows; the output's batch axis.

        :func:`taylorc.ir.coupling.check_batch_independence` with this context's
        coordinates and probe inputs; the rule registry's elementwise ops count as
        pointwise (:func:`taylorc.rules.define.elementwise`).
        """
        return check_batch_independence(gm, self.coord, self.probe_inputs, elementwise)


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
        """Run the passes on ``gm``; raises :class:`PassOrderError` for a misordered pipeline."""
        check_order(self.passes)
        self._record(gm, ctx, "capture", 0.0)
        for p in self.passes:
            t0 = time.perf_counter()
            out = p(gm, ctx)
            gm, done = (out.gm, out.done) if isinstance(out, PassResult) else (out, {})
            gm.graph.lint()
            gm.recompile()
            if self.check:
                try:
                    ir.validate(gm)
                except ir.IRError as e:
                    raise ir.IRError(f"after the {p.name} pass: {e}") from None
            self._record(gm, ctx, p.name, time.perf_counter() - t0)
            if done:
                ctx.records[-1]["done"] = done
        if self.dump is not None:
            self.dump.summary(ctx)
        ctx.final = gm
        return gm

    def _record(self, gm, ctx, name, seconds):
        # later passes (unstack, cpu_tanh, cleanup) read the shapes of the nodes a pass made;
        # the FLOP and memory estimates only the dump (explain() estimates the final graph)
        ir.ensure_shapes(gm)
        stats = graph_stats(gm) if self.dump is not None else {"nodes": len(gm.graph.nodes)}
        ctx.records.append({"pass": name, "seconds": seconds, **stats})
        if self.dump is not None:
            self.dump.stage(len(ctx.records) - 1, name, gm)
