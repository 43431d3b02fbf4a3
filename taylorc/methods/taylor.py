"""Taylor mode: ``Collapsed`` (the default) and ``Taylor`` (standard), and their pipelines.

Method: Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic
Differentiation" (NeurIPS 2025); standard Taylor mode after Griewank & Walther,
"Evaluating Derivatives" (2008), ch. 13.
"""

from __future__ import annotations

from ..deprecation import renamed, renamed_keyword
from ..passes.cleanup import CleanupPass
from ..passes.collapse import CollapsePass
from ..passes.cpu_linear import CPULinearPass
from ..passes.cpu_tanh import CPUTanhPass
from ..passes.layers import KeepInputsPass, LayerPass
from ..passes.lower import LowerPass
from ..passes.mlp import MLPPass, cpu_inference
from ..passes.taylor import TaylorPass
from ..passes.unstack import UnstackPass
from .base import Method


def finish(op, passes: list, *, unstack: bool) -> list:
    """The passes every Taylor-graph pipeline ends with: cleanup, then the CPU's."""
    passes = passes + [CleanupPass()]
    if unstack:
        passes.append(UnstackPass())  # a no-op off the CPU and for many directions
    if op.backend == "taylorc":
        passes.append(CPULinearPass())  # a no-op off the CPU and for float64
        passes.append(CPUTanhPass())  # the same
    return passes


class Taylor(Method):
    """Standard Taylor mode: every order propagated along every direction, summed at the output."""

    name = "taylor"
    collapse = False

    def passes(self, op, cap, ctx, x) -> list:
        cfg = op.config
        passes = [TaylorPass()] + ([CollapsePass()] if self.collapse else [])
        if self.collapse and cfg.whole_mlp:  # the C kernel for calls without autograd
            ctx.inference = cpu_inference(cap.gm, ctx)
        lower = op.backend == "taylorc" or cfg.lower_everywhere
        if lower:
            passes.append(LowerPass(force=cfg.lower_everywhere))
            whole = MLPPass(force=cfg.lower_everywhere)
            if self.collapse and cfg.whole_mlp and whole.match(cap.gm, ctx):
                passes = [whole]  # one kernel for the whole network replaces the layered passes
        return finish(op, passes, unstack=True)

    def with_layers(self, perturbations: bool = True, taps: bool | None = None) -> LayerVariant:
        """This method's graph that keeps every linear layer's coefficient columns (KFAC's);
        ``taps=``: the old name of ``perturbations=`` (deprecated)."""
        return LayerVariant(self, renamed_keyword(perturbations, taps, "taps", "perturbations"))


class Collapsed(Taylor):
    """Collapsed Taylor mode: the top order propagated summed over directions (the default)."""

    name = "collapsed"
    collapse = True


class LayerVariant(Method):
    """The graph of a Taylor method with every linear layer's columns kept and returned.

    The pipeline: taylor, :class:`~taylorc.passes.layers.KeepInputsPass`, collapse (for
    ``collapsed``), :class:`~taylorc.passes.layers.LayerPass`; no cleanup, unstacking,
    lowering or whole-MLP kernel, so every column's input and output stays its own
    per-point node: Kronecker-factored curvature reads them (Dangel, Müller, Zeinhofer,
    "Kronecker-Factored Approximate Curvature for Physics-Informed Neural Networks",
    NeurIPS 2024, Sec. 3). Built and cached by the operator's graph cache like every
    method (one graph for every batch size where the proof holds); never compiled by
    the operator's backend (consumers trace and compile what they run).

    Args:
        base: the :class:`Taylor` or :class:`Collapsed` method it varies.
        perturbations: the graph takes one zero perturbation per layer use, added to its
            output columns (True), or returns the output columns instead (False).
    """

    compiled_by_backend = False
    taps = renamed("LayerVariant.taps", "perturbations")

    def __init__(self, base: Taylor, perturbations: bool = True):
        self.base, self.perturbations, self.name = base, perturbations, base.name

    def key(self) -> tuple:
        return self.base.key() + (("layers", self.perturbations),)

    def passes(self, op, cap, ctx, x) -> list:
        passes = [TaylorPass(), KeepInputsPass(cap.param_names, self.base.collapse)]
        passes += [CollapsePass()] if self.base.collapse else []
        return passes + [LayerPass(cap.param_names, self.perturbations)]  # no cleanup: see there
