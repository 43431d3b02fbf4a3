"""Process-wide switches that are not part of an operator's meaning (tests, diagnostics).

``CONFIG.lower_everywhere`` lowers Taylor steps to the fused ``torch.library`` ops on the
CPU too, where they run their PyTorch references (the kernel tests use it);
``CONFIG.whole_mlp`` lets a matching MLP's Laplacian become one ``mlp_laplacian`` call;
``CONFIG.dynamic_batch`` lets one graph serve every batch size.
Each :class:`~taylorc.api.CompiledOperator` copies ``CONFIG`` when it is made and may be
changed on its own (``op.config.lower_everywhere = True``). ``BUILD_COUNT`` counts the
graphs built (cache misses of ``graph_for``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Config:
    """Switches of the pipeline (see the module docstring).

    Attributes:
        lower_everywhere: lower to the fused ops on every device, not CUDA only.
        whole_mlp: lower a matching MLP's Laplacian to one kernel call (``passes.mlp``).
        dynamic_batch: one graph for every batch size where
            :func:`taylorc.passes.batch_size.generalize` proves it; False keys every graph
            on the full input shape (the behaviour before issue 17; benchmarks). Default:
            on, unless the environment variable ``TAYLORC_DYNAMIC_BATCH=0``.
        dynamic_compile: compile a graph that serves every batch size once, its batch
            dim dynamic (inductor's dynamic-shape compile costs about 2-3x a static one,
            ``bench/results/first-call-*.json``); False compiles it per batch size with
            static shapes (no retrace: the graph is shared; each new B recompiles).
        auto_compile_after: with ``backend="auto"`` (the default), a graph runs eagerly
            for this many calls, then is compiled (inductor, batch dim dynamic, the CPU's
            float32 ``tanh`` rewritten as with ``backend="taylorc"``); None: never.
        tune_allocator: with ``backend="auto"`` on the CPU, call
            :func:`taylorc.cpu.auto_tune` (glibc ``mallopt`` once per process, skipped
            where the user configured the allocator).
    """

    lower_everywhere: bool = False
    whole_mlp: bool = True
    dynamic_batch: bool = os.environ.get("TAYLORC_DYNAMIC_BATCH", "1") != "0"
    dynamic_compile: bool = True
    auto_compile_after: int | None = 10
    tune_allocator: bool = True


CONFIG = Config()
BUILD_COUNT = [0]  # graphs built by the passes, for tests and diagnostics
