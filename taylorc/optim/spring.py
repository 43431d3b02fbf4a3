"""``SPRING``: natural gradient with momentum in sample space (Woodbury).

Goldshlager, Abrahamsen, Lin, "A Kaczmarz-inspired approach to accelerate the optimization
of neural network wavefunctions" (J. Comput. Phys. 2024), adapted to PINNs by Guzmán-Cordero,
Dangel, Goldshlager, Zeinhofer, "Improving Energy Natural Gradient Descent through Woodbury,
Momentum, and Randomization" (NeurIPS 2025, Sec. 4):
``φ_k = μ φ_(k-1) + Ĵᵀ (Ĵ Ĵᵀ + λI)⁻¹ (r̂ − μ Ĵ φ_(k-1))``, ``θ ← θ − η φ_k``, with the
kernel matrix ``K = Ĵ Ĵᵀ`` read from the layer inputs and pre-activation gradients of the
Taylor graph's linear layers (:mod:`taylorc.optim.woodbury`).
The step size η: a grid line search (as ENGD and KFAC here), backtracking or a fixed
number. Data-parallel under ``torch.distributed``: the kernel matrix spans the residual
rows of all ranks (:mod:`taylorc.optim.sample_space`). ``solve="nystrom"`` replaces K by
its randomized rank-ℓ Nyström approximation (same paper; :mod:`taylorc.optim.nystrom`).
"""

from __future__ import annotations

import torch

from .base import LossTermOptimizer
from .gramian import layout
from .nystrom import make_solver
from .step_rules import check_damping_ema, check_lr, take_step, total_loss
from .woodbury import sample_space_step


class SPRING(LossTermOptimizer):
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
        process_group: as :class:`taylorc.optim.KFAC`'s: under ``torch.distributed`` each
            rank passes its shard of the points (any sizes); the residual rows of all
            ranks are all-gathered into one kernel matrix
            (:func:`~taylorc.optim.woodbury.sample_space_step`), the losses and the step
            rule's losses are all-reduced, and rank 0's φ is broadcast, so a step equals
            the step on the union of the shards (up to rounding) on every rank alike.
        backend: how the linearisations run after the first, as :class:`taylorc.optim.KFAC`'s.
        solve: ``"woodbury"`` (the default: the exact R x R solve) or ``"nystrom"`` (K
            replaced by its randomized rank-``sketch_size`` Nyström approximation,
            :class:`~taylorc.optim.nystrom.NystromSolver`, O(ℓ R P) a step; needs
            ``damping`` > 0).
        sketch_size: ℓ, the sketch's columns (``solve="nystrom"`` only; clamped to R).
        generator: the ``torch.Generator`` of the sketches (``solve="nystrom"`` only;
            None: a CPU generator seeded with 0); its state is in ``state_dict``.

    Raises:
        ValueError: unknown ``lr``, ``backend`` or ``solve``; ``damping`` not finite and
            >= 0; ``momentum`` outside [0, 1); ``solve="nystrom"`` without a positive
            integer ``sketch_size`` or with ``damping`` = 0; ``sketch_size`` or
            ``generator`` with ``solve="woodbury"``; (at ``step``) no points for a term;
            (distributed, at ``step``) a rank without points of a term (on every rank).
        taylorc.errors.KFACError: a parameter used outside the linear layers; ``model``
            wrapped in ``DistributedDataParallel``; with ``backend="inductor"``, a term
            whose linearisation cannot be compiled (single-process; distributed, that
            rank warns and runs it eagerly).
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
        solve: str = "woodbury",
        sketch_size: int | None = None,
        generator: torch.Generator | None = None,
    ):
        check_lr(lr)
        check_damping_ema(damping, momentum, "momentum")
        if solve not in ("woodbury", "nystrom"):
            raise ValueError(f"solve must be 'woodbury' or 'nystrom', got {solve!r}")
        self._nystrom = make_solver(solve, sketch_size, generator, damping)
        super().__init__(
            model,
            residuals,
            dict(lr=lr, damping=damping, momentum=momentum, step=0),
            process_group,
            backend,
        )

    def step(self, points: dict) -> dict[str, float]:
        """One SPRING step on ``points``; returns term name -> ½ mean ||r||² before it."""
        group, reducer, terms = self.param_groups[0], self._reducer, list(self.residuals)
        # this rank's shares N_t,r / N_t of the global means, and the global N_t
        weigh, counts = reducer.weighting({t: points.get(t) for t in terms})
        lins = list(self.linearize(points).values())
        loss = [weigh(t, lin.loss) for t, lin in zip(terms, lins)]
        reducer.sum_(loss)
        losses = {t: v.item() for t, v in zip(terms, loss)}
        state = self.state[group["params"][0]]
        phi = sample_space_step(
            lins,
            group["damping"],
            group["momentum"],
            state.get("phi"),
            reducer,
            self._nystrom,
            state,
        )
        state["phi"] = phi
        by_name = {ref.weight: ref for ref in layout(lins, self.model)}
        direction = {name: -block for name, block in phi.items()}
        loss_fn = lambda: total_loss(self.residuals, points, counts)  # noqa: E731
        current = sum(losses.values())
        take_step(self.model, by_name, direction, group["lr"], loss_fn, current, reducer)
        group["step"] += 1
        return losses
