"""What KFAC, ENGD and SPRING share: :class:`LossTermOptimizer`, an optimiser of a PINN
loss written as named residual terms, each linearised through the Taylor graph.

The loss is ``L(θ) = Σ_t 1/(2N_t) Σ_n ||r_t(x_t,n; θ)||²`` over the terms t (interior,
boundary, ...); a step takes points for every term (Dangel, Müller, Zeinhofer, NeurIPS
2024, Sec. 2). The optimisers differ in the curvature they build from the terms'
linearisations; the setup (parameters, data-parallel reducer, per-term
:class:`~taylorc.optim.linearizer.Linearizer`) and the linearisation of a batch are here.
"""

from __future__ import annotations

import torch

from .distributed import model_reducer, resolve
from .linearization import Linearization
from .linearizer import Linearizer


class LossTermOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` over the trainable parameters of ``model`` whose loss is a
    dict of residual terms (the base of :class:`~taylorc.optim.KFAC`,
    :class:`~taylorc.optim.ENGD` and :class:`~taylorc.optim.SPRING`).

    Args:
        model: the ``nn.Module``; its parameters with ``requires_grad`` are optimised.
        residuals: term name -> residual ``f(x) -> r``, points ``(N_t, *in)`` to residuals
            ``(N_t, *out)``, calling compiled operators of ``model``.
        defaults: the param group's settings (``torch.optim.Optimizer``'s ``defaults``).
        process_group: as :func:`~taylorc.optim.distributed.resolve` (None: the default
            group when ``torch.distributed`` is initialised, else one process).
        backend, approx: the :class:`~taylorc.optim.linearizer.Linearizer`'s. Distributed,
            a term that cannot be compiled warns instead of raising (a compile failing on
            one rank alone must not raise there while the others wait in a collective).

    Raises:
        ValueError, KFACError: as :func:`~taylorc.optim.distributed.resolve` and the
            linearizer.
    """

    def __init__(self, model, residuals: dict, defaults: dict, process_group, backend, approx=None):
        group = resolve(process_group, model)
        super().__init__([p for p in model.parameters() if p.requires_grad], defaults)
        self.model, self.residuals = model, dict(residuals)
        self._reducer = model_reducer(group, model)  # one process: a LocalReducer
        strict = self._reducer.world == 1  # distributed: a rank's compile failure warns
        self._linearizer = Linearizer(model, backend=backend, approx=approx, strict=strict)

    def linearize(self, points: dict) -> dict[str, Linearization]:
        """Every term's :class:`~taylorc.optim.linearization.Linearization` at ``points``
        (term name -> ``(N_t, *in)``).

        Raises:
            ValueError: no points for a term.
        """
        missing = set(self.residuals) - set(points)
        if missing:
            raise ValueError(f"no points for the terms {sorted(missing)}")
        return {t: self._linearizer(t, f, points[t]) for t, f in self.residuals.items()}
