"""Training losses for randomized operators."""

from __future__ import annotations

from collections.abc import Callable

import torch


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


__all__ = ["unbiased_squared_residual"]
