"""``SPRING``: natural gradient with momentum in sample space (Woodbury).

Goldshlager, Abrahamsen, Lin, "A Kaczmarz-inspired approach to accelerate the optimization
of neural network wavefunctions" (J. Comput. Phys. 2024), adapted to PINNs by Guzmán-Cordero,
Dangel, Goldshlager, Zeinhofer, "Improving Energy Natural Gradient Descent through Woodbury,
Momentum, and Randomization" (NeurIPS 2025, Sec. 4):
``φ_k = μ φ_(k-1) + Ĵᵀ (Ĵ Ĵᵀ + λI)⁻¹ (r̂ − μ Ĵ φ_(k-1))``, ``θ ← θ − η φ_k``, with the
kernel matrix ``K = Ĵ Ĵᵀ`` read from the layer inputs and pre-activation gradients of the
Taylor graph's linear layers (:mod:`taylorc.optim.woodbury`).
The step size η: a grid line search (as ENGD and KFAC here) or a fixed number.
"""

from __future__ import annotations

import torch

from ..api import compile as _compile
from .distributed import resolve
from .gramian import layout
from .linearizer import Linearizer
from .step_rules import check_damping_ema, check_lr, take_step, total_loss
from .woodbury import sample_space_step


class SPRING(torch.optim.Optimizer):
    """SPRING on L = Σ_t 1/(2N_t) Σ_n ||r_t,n||²; ``momentum=0`` is ENGD with the Woodbury solve.

    Same residuals and ``step(points)`` as :class:`taylorc.optim.KFAC`. Each step costs
    O(R² P + R³) for R = Σ_t N_t M_t residual rows: it pays where the rows are fewer than
    the parameters (dense ENGD costs O(P³)).

    Args:
        model: the ``nn.Module``.
        residuals: term name -> residual callable.
        lr: ``"line_search"`` (the grid η ∈ {2⁻³⁰..2⁰}), ``"backtracking"`` (the first η
            of 1, 1/2, ... that lowers the loss) or a float.
        damping: λ > 0 added to the kernel matrix's diagonal (λ = 0 solves by least squares).
        momentum: μ in [0, 1).
        backend: how the linearisations run after the first, as :class:`taylorc.optim.KFAC`'s.

    Raises:
        ValueError: unknown ``lr`` or ``backend``; ``damping`` not finite and >= 0;
            ``momentum`` outside [0, 1); a ``torch.distributed`` process group (SPRING runs
            in one process); (at ``step``) no points for a term.
        taylorc.errors.KFACError: a parameter used outside the linear layers.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        residuals: dict,
        lr="line_search",
        damping=1e-8,
        momentum=0.9,
        process_group=None,
        backend: str = "eager",
    ):
        check_lr(lr)
        check_damping_ema(damping, momentum, "momentum")
        if resolve(process_group, model) is not None:
            raise ValueError("SPRING runs in one process: no torch.distributed process group")
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, dict(lr=lr, damping=damping, momentum=momentum, step=0))
        self.model, self.residuals = model, dict(residuals)
        self._linearizer = Linearizer(model, _compile(model, "u"), backend)

    def step(self, points: dict) -> dict[str, float]:
        """One SPRING step on ``points``; returns term name -> ½ mean ||r||² before it."""
        group = self.param_groups[0]
        missing = set(self.residuals) - set(points)
        if missing:
            raise ValueError(f"no points for the terms {sorted(missing)}")
        lins = [self._linearizer(t, f, points[t]) for t, f in self.residuals.items()]
        losses = {t: lin.loss.item() for t, lin in zip(self.residuals, lins)}
        state = self.state[group["params"][0]]
        phi = sample_space_step(lins, group["damping"], group["momentum"], state.get("phi"))
        state["phi"] = phi
        by_name = {ref.weight: ref for ref in layout(lins, self.model)}
        direction = {name: -block for name, block in phi.items()}
        loss_fn = lambda: total_loss(self.residuals, points)  # noqa: E731
        take_step(self.model, by_name, direction, group["lr"], loss_fn, sum(losses.values()))
        group["step"] += 1
        return losses
