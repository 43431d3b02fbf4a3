"""Process-wide switches that are not part of an operator's meaning (tests, diagnostics).

``CONFIG.lower_everywhere`` lowers Taylor steps to the fused ``torch.library`` ops on the
CPU too, where they run their PyTorch references (the kernel tests use it);
``CONFIG.whole_mlp`` lets a matching MLP's Laplacian become one ``mlp_laplacian`` call;
``CONFIG.dynamic_batch`` lets one graph serve every batch size; ``CONFIG.contention`` runs
CPU calls with fewer threads while other processes keep the cores busy.
Each :class:`~taylorc.api.CompiledOperator` copies ``CONFIG`` when it is made and may be
changed on its own (``op.config.lower_everywhere = True``). ``BUILD_COUNT`` counts the
graphs built (cache misses of ``graph_for``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _flag(name: str) -> bool:
    """An on-by-default switch from the environment: off for ``0``, ``false``, ``no``, ``off``."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _compile_after() -> int | None:
    """``TAYLORC_AUTO_COMPILE_AFTER``: a number of calls, or ``never`` (default 10).

    Raises:
        ValueError: neither a non-negative integer nor ``never``.
    """
    value = os.environ.get("TAYLORC_AUTO_COMPILE_AFTER", "10").strip().lower()
    if value in ("never", "none"):
        return None
    if not value.isdigit():
        raise ValueError(f"TAYLORC_AUTO_COMPILE_AFTER={value!r}: a number of calls or 'never'")
    return int(value)


CONTENTION_MODES = ("auto", "off", "busy")


def _contention() -> str:
    """``TAYLORC_CONTENTION``: one of :data:`CONTENTION_MODES` (default ``auto``).

    Raises:
        ValueError: another value.
    """
    value = os.environ.get("TAYLORC_CONTENTION", "auto").strip().lower()
    if value not in CONTENTION_MODES:
        raise ValueError(f"TAYLORC_CONTENTION={value!r}: one of {CONTENTION_MODES}")
    return value


@dataclass
class Config:
    """Switches of the pipeline (see the module docstring).

    Attributes:
        lower_everywhere: lower to the fused ops on every device, not CUDA only.
        whole_mlp: lower a matching MLP's Laplacian to one kernel call (``passes.mlp``).
        dynamic_batch: one graph for every batch size where
            :func:`taylorc.runtime.batch_size.generalize` proves it; False keys every graph
            on the full input shape (for benchmarks). Default:
            on, unless the environment variable ``TAYLORC_DYNAMIC_BATCH=0``.
        dynamic_compile: compile a graph that serves every batch size once, its batch
            dim dynamic (inductor's dynamic-shape compile costs about 2-3x a static one,
            ``bench/results/first-call-*.json``); False compiles it per batch size with
            static shapes (no retrace: the graph is shared; each new B recompiles).
        auto_compile_after: with ``backend="auto"`` (the default), a graph runs eagerly
            for this many calls, then is compiled (inductor, batch dim dynamic, the CPU's
            float32 ``tanh`` rewritten as with ``backend="taylorc"``); None: never.
            Default: 10, or the environment variable ``TAYLORC_AUTO_COMPILE_AFTER`` (a
            number, or ``never``). ``taylorc.optim.KFAC``/``ENGD`` with ``backend="auto"`` read
            it too: their linearisations compile after this many calls per points shape
            (static shapes, no ``tanh`` rewrite; :mod:`taylorc.optim.compiled`).
        background_compile: with ``backend="auto"``, compile in a background thread while
            the eager graph serves the calls (no call waits for inductor); False: the call
            that starts the compile waits for it. Default: on, unless
            ``TAYLORC_BACKGROUND_COMPILE=0``.
        tune_allocator: with ``backend="auto"`` on the CPU, call
            :func:`taylorc.runtime.cpu.auto_tune` (glibc ``mallopt`` once per process, skipped
            where the user configured the allocator). Default: on, unless
            ``TAYLORC_TUNE_ALLOCATOR=0``.
        contention: a CPU call's thread count beside busy neighbours
            (:mod:`taylorc.runtime.threads`): ``"auto"`` runs the call with fewer threads (one
            on 2 cores) while other processes keep the cores busy (``/proc/stat``, Linux),
            restoring the caller's count after it; ``"off"`` never changes the count;
            ``"busy"`` always runs CPU calls on one thread. Default: ``"auto"``, or the
            environment variable ``TAYLORC_CONTENTION``.
    """

    lower_everywhere: bool = False
    whole_mlp: bool = True
    dynamic_batch: bool = field(default_factory=lambda: _flag("TAYLORC_DYNAMIC_BATCH"))
    dynamic_compile: bool = True
    auto_compile_after: int | None = field(default_factory=lambda: _compile_after())
    background_compile: bool = field(default_factory=lambda: _flag("TAYLORC_BACKGROUND_COMPILE"))
    tune_allocator: bool = field(default_factory=lambda: _flag("TAYLORC_TUNE_ALLOCATOR"))
    contention: str = field(default_factory=lambda: _contention())


CONFIG = Config()
BUILD_COUNT = [0]  # graphs built by the passes, for tests and diagnostics
