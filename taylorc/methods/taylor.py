"""Taylor mode: ``Collapsed`` (the default) and ``Taylor`` (standard), and their pipelines.

Method: Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic
Differentiation" (NeurIPS 2025); standard Taylor mode after Griewank & Walther,
"Evaluating Derivatives" (2008), ch. 13.
"""

from __future__ import annotations

from ..passes.cleanup import CleanupPass
from ..passes.collapse import CollapsePass
from ..passes.cpu_tanh import CPUTanhPass
from ..passes.lower import LowerPass
from ..passes.mlp import MLPPass
from ..passes.taylor import TaylorPass
from ..passes.unstack import UnstackPass
from .base import Method


def finish(op, passes: list, *, unstack: bool) -> list:
    """The passes every Taylor-graph pipeline ends with: cleanup, then the CPU's."""
    passes = passes + [CleanupPass()]
    if unstack:
        passes.append(UnstackPass())  # a no-op off the CPU and for many directions
    if op.backend == "taylorc":
        passes.append(CPUTanhPass())  # a no-op off the CPU and for float64
    return passes


class Taylor(Method):
    """Standard Taylor mode: every order propagated along every direction, summed at the output."""

    name = "taylor"
    collapse = False

    def passes(self, op, cap, ctx, x) -> list:
        cfg = op.config
        passes = [TaylorPass()] + ([CollapsePass()] if self.collapse else [])
        lower = op.backend == "taylorc" or cfg.lower_everywhere
        if lower:
            passes.append(LowerPass(force=cfg.lower_everywhere))
            whole = MLPPass(force=cfg.lower_everywhere)
            if self.collapse and cfg.whole_mlp and whole.match(cap.gm, ctx):
                passes = [whole]  # one kernel for the whole network replaces the layered passes
        return finish(op, passes, unstack=True)


class Collapsed(Taylor):
    """Collapsed Taylor mode: the top order propagated summed over directions (the default)."""

    name = "collapsed"
    collapse = True
