"""Methods that draw random numbers at every call: ``Stochastic`` and ``Stein``, and
:func:`unbiased_squared_residual`, the training loss of their estimates.

Stochastic: randomized collapsed Taylor mode, Shi et al., "Stochastic Taylor Derivative
Estimator" (NeurIPS 2024). Stein: He et al., "Learning Physics-Informed Neural Networks
without Stacked Back-propagation" (AISTATS 2023).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..operators.stochastic import sample_directions, stochastic_plan
from ..passes.collapse import CollapsePass
from ..passes.stein import SteinPass, sigma_vector, stein_order
from ..passes.taylor import TaylorPass
from .base import Method, width
from .taylor import finish


def _check_samples(name: str, samples) -> None:
    if samples is None or samples < 1:
        raise ValueError(f"method={name!r} needs samples= (a positive number of samples)")


class Stochastic(Method):
    """Unbiased Laplacian or biharmonic from ``samples`` random directions, redrawn per call.

    Args:
        samples: S, the number of directions (>= 1).
        distribution: ``"rademacher"``, ``"normal"`` or ``"coordinate"``.
        generator: the ``torch.Generator`` drawn from (default: torch's global one).

    Raises:
        ValueError: samples missing or < 1; a backend other than eager (``auto`` runs
            eagerly); several operators.
    """

    name = "stochastic"
    compilable = False  # the directions buffer is reassigned per call: eager only

    def __init__(self, samples=None, distribution="rademacher", generator=None):
        _check_samples(self.name, samples)
        self.samples, self.distribution, self.generator = samples, distribution, generator

    def key(self):
        return (self.name, ("samples", self.samples), ("distribution", self.distribution))

    def check(self, op):
        if op.backend not in ("eager", "auto"):
            raise ValueError(
                "method='stochastic' redraws its directions per call: use backend='eager'"
            )

    def plan(self, op, D):
        if len(op.ops) != 1:
            raise ValueError("method='stochastic' takes one operator, not a dict")
        ((name, spec),) = op.ops.items()
        return stochastic_plan(name, spec, D, op.coords, self.samples, self.distribution)

    def passes(self, op, cap, ctx, x):
        return finish(op, [TaylorPass(), CollapsePass()], unstack=False)

    def inputs(self, x, gm, ctx):
        # a new tensor, not an in-place write: earlier draws stay saved for backward
        gm.directions = sample_directions(ctx.plan, self.generator, x.dtype, x.device)
        return []


class Stein(Method):
    """Derivatives of order <= 2 of the Gaussian-smoothed model by Stein's identity.

    Args:
        samples: Gaussian samples per point (>= 1).
        sigma: the smoothing width: a number, one per coordinate, or a dict by name.
        variance_reduction: antithetic pairs and the control variate g(x).
        generator: the ``torch.Generator`` drawn from.

    Raises:
        ValueError: samples or sigma missing.
    """

    name = "stein"
    dynamic_batch = False
    static_reason = (
        "Stein's graph evaluates the model on the replicated batch (2S+1)B and reshapes "
        "the result by B, so it is built per batch size"
    )

    def __init__(self, samples=None, sigma=None, variance_reduction=True, generator=None):
        _check_samples(self.name, samples)
        if sigma is None:
            raise ValueError(
                "method='stein' needs sigma= (the Gaussian smoothing width: a number, one per "
                "coordinate, or a dict by coordinate name)"
            )
        self.samples, self.sigma = samples, sigma
        self.variance_reduction, self.generator = variance_reduction, generator

    def key(self):
        return (
            self.name,
            ("samples", self.samples),
            ("sigma", repr(self.sigma)),
            ("variance_reduction", self.variance_reduction),
        )

    def evaluations(self) -> int:
        """Model evaluations per point: ``2 S + 1`` with variance reduction (S antithetic
        pairs and g(x), the control variate), else ``S`` (``samples``)."""
        return 2 * self.samples + 1 if self.variance_reduction else self.samples

    def plan(self, op, D):
        stein_order(op.ops, D, op.coords)
        return super().plan(op, D)

    def example(self, x, args):
        example = x.new_zeros((self.evaluations() * x.shape[0],) + tuple(x.shape[1:]))
        return example, (example,)

    def passes(self, op, cap, ctx, x):
        sigma = sigma_vector(self.sigma, ctx.plan.D, op.coords)
        stein = SteinPass(
            op.ops, op.coords, self.samples, sigma, self.variance_reduction, x.shape[0]
        )
        return finish(op, [stein], unstack=False)

    def inputs(self, x, gm, ctx):
        shape = (self.samples, x.shape[0], width(x))
        return [torch.randn(shape, generator=self.generator, dtype=x.dtype, device=x.device)]


__all__ = ["Stochastic", "Stein"]


def unbiased_squared_residual(residual: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """Unbiased estimate of ``mean(r(x)^2)`` from a residual ``r`` built on a random estimator.

    With a Monte Carlo operator (``method="stochastic"`` or ``"stein"``) the
    residual is ``r_hat = r + noise``, and ``mean(r_hat^2)`` is biased upward by
    the estimator's variance. The product of two independent estimates is not:
    ``E[r_hat_1 r_hat_2] = r^2`` (Hu, Shi, Karniadakis, Kawaguchi, "Hutchinson
    Trace Estimation for High-Dimensional and High-Order Physics-Informed Neural
    Networks", 2023, Sec. 3.2). ``residual`` is called twice; each call must draw
    fresh samples (the compiled random operators do).

    Args:
        residual: ``residual(*args) -> (B, ...)`` tensor, random per call.
        args: passed to both calls (e.g. the collocation points ``(B, D)``).

    Returns:
        a scalar, differentiable w.r.t. the model's parameters; it can be
        negative for a single draw (its expectation is the mean squared residual).
    """
    return (residual(*args) * residual(*args)).mean()
