"""``ENGD``: energy natural gradient descent with the dense Gramian (small nets).

Müller & Zeinhofer, "Achieving High Accuracy with PINNs via Energy Natural Gradient
Descent" (ICML 2023): d = −(Ĝ + λI)⁺ ∇L by least squares, Ĝ ← βĜ + (1 − β)G a moving
average from the identity of the exact Gauss-Newton matrix G of the PINN loss
(:func:`taylorc.optim.gramian`; at β = 0, plain ENGD), then the same grid line search
as KFAC (Dangel, Müller, Zeinhofer, NeurIPS 2024, use it as their baseline). Costs
O(P²) memory and O(P³) time per step: a reference for nets of a few thousand parameters.
``solve="woodbury"`` solves the same system in sample space instead, O(R² P + R³) for R
residual rows (Guzmán-Cordero, Dangel, Goldshlager, Zeinhofer, NeurIPS 2025; the kernel
matrix K = J Jᵀ from the layer inputs and pre-activation gradients,
:mod:`taylorc.optim.woodbury`). Both run data-parallel under ``torch.distributed``
(:mod:`taylorc.optim.distributed`; the Woodbury solve gathers the rows of all ranks,
:mod:`taylorc.optim.sample_space`). ``solve="nystrom"`` replaces the kernel matrix by a
rank-ℓ randomized Nyström approximation from the sketch K Ω, O(ℓ R P) instead of R² P
(same paper; :mod:`taylorc.optim.nystrom`).
"""

from __future__ import annotations

import torch

from .base import LossTermOptimizer
from .factors import from_vector, to_vector
from .gramian import dense_gramian, layout, size
from .nystrom import make_solver
from .step_rules import check_damping_ema, check_lr, take_step, total_loss
from .woodbury import damped_solve, sample_space_step

SOLVES = ("dense", "woodbury", "auto", "nystrom")


class ENGD(LossTermOptimizer):
    """Energy natural gradient descent on L = Σ_t 1/(2N_t) Σ_n ||r_t,n||².

    Same residuals and ``step(points)`` as :class:`taylorc.optim.KFAC`.

    Args:
        model: the ``nn.Module``.
        residuals: term name -> residual callable.
        lr: ``"line_search"`` (the grid α ∈ {2⁻³⁰..2⁰}, the paper's), ``"backtracking"``
            (the first α of 1, 1/2, ... that lowers the loss) or a float.
        damping: λ added to the Gramian's diagonal.
        ema: β of the Gramian's moving average, started at the identity (the baselines of
            Dangel, Müller, Zeinhofer 2024 use 0.3: the identity regularises the first
            steps, where the exact Gramian of a fresh net is nearly singular). Default
            (None): 0.3 for the dense solve, 0 for the Woodbury one (which has no P x P
            matrix to average; it must be 0 there).
        solve: ``"dense"`` (the default: the P x P Gramian), ``"woodbury"`` (the R x R
            kernel of the R residual rows; ``damping`` > 0 keeps it positive definite) or
            ``"auto"`` (Woodbury when R < P at a step, dense otherwise; ``ema`` is 0 then,
            on the dense steps too) or ``"nystrom"`` (the Woodbury step with K replaced by
            its randomized rank-``sketch_size`` Nyström approximation,
            :class:`~taylorc.optim.nystrom.NystromSolver`; needs ``damping`` > 0). R
            counts the rows of all ranks, so that every rank takes the same branch.
        process_group: as :class:`taylorc.optim.KFAC`'s: under ``torch.distributed``,
            the loss, gradient, Gramian and line-search losses are all-reduced (Woodbury:
            the residual rows of all ranks are all-gathered into one R x R kernel
            matrix, :func:`~taylorc.optim.woodbury.sample_space_step`), so a step on
            several ranks with a shard each equals the step on the union of the shards
            (up to rounding); rank 0's direction is broadcast at every step.
        backend: ``"eager"`` (the default), ``"auto"`` or ``"inductor"``: how the
            linearisations run after the first, as :class:`taylorc.optim.KFAC`'s.
        sketch_size: ℓ, the sketch's columns (``solve="nystrom"`` only; clamped to R).
        generator: the ``torch.Generator`` of the sketches (``solve="nystrom"`` only;
            None: a CPU generator seeded with 0); its state is in ``state_dict``.

    Raises:
        ValueError: unknown ``lr``, ``backend`` or ``solve``; ``damping`` not finite and
            >= 0 or ``ema`` outside [0, 1); ``ema`` > 0 with ``solve="woodbury"``,
            ``"auto"`` or ``"nystrom"``; ``solve="nystrom"`` without a positive integer
            ``sketch_size`` or with ``damping`` = 0; ``sketch_size`` or ``generator``
            with another solve; (at ``step``) no points for a term; (distributed, at ``step``) a
            rank without points of a term (on every rank).
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
        damping=0.0,
        ema=None,
        process_group=None,
        backend: str = "eager",
        solve: str = "dense",
        sketch_size: int | None = None,
        generator: torch.Generator | None = None,
    ):
        check_lr(lr)
        if solve not in SOLVES:
            raise ValueError(f"solve must be one of {SOLVES}, got {solve!r}")
        ema = (0.3 if solve == "dense" else 0.0) if ema is None else ema
        check_damping_ema(damping, ema)
        if solve != "dense" and ema != 0:
            raise ValueError(
                f"solve={solve!r} has no Gramian to average: ema must be 0, got {ema!r}"
            )
        self._nystrom = make_solver(solve, sketch_size, generator, damping)
        self.solve = solve
        super().__init__(
            model, residuals, dict(lr=lr, damping=damping, ema=ema, step=0), process_group, backend
        )

    def step(self, points: dict) -> dict[str, float]:
        """One ENGD step on ``points``; returns term name -> ½ mean ||r||² before it."""
        group, reducer, terms = self.param_groups[0], self._reducer, list(self.residuals)
        # this rank's shares N_t,r / N_t of the global means, and the global N_t
        weigh, counts = reducer.weighting({t: points.get(t) for t in terms})
        lins = list(self.linearize(points).values())
        loss = [weigh(t, lin.loss) for t, lin in zip(terms, lins)]
        layers = layout(lins, self.model)
        if self._woodbury(lins, layers, counts):
            reducer.sum_(loss)
            phi = self._sample_space(lins)
            return self._update({n: -b for n, b in phi.items()}, layers, points, counts, loss)
        grad = self._gradient(lins, layers, weigh)
        G = dense_gramian(lins, layers, lambda i, G_t: weigh(terms[i], G_t))
        reducer.sum_([*loss, grad, G])  # one all-reduce (sum) of every mean over points
        G = self._average(G.double(), group["ema"])
        d = damped_solve(G, -grad.double(), group["damping"])
        reducer.broadcast_([d])  # rank 0's direction: the ranks stay bitwise in lockstep
        blocks, i = {}, 0
        for ref in layers:
            blocks[ref.weight] = from_vector(d[i : i + size(ref)].to(grad.dtype), ref)
            i += size(ref)
        return self._update(blocks, layers, points, counts, loss)

    def _gradient(self, lins, layers, weigh) -> torch.Tensor:
        """∇L as one vector in the order of :func:`~taylorc.optim.gramian.jacobian`, each
        term's part ``weigh``'d (this rank's share of the global mean)."""
        terms = list(self.residuals)
        return torch.cat(
            [
                to_vector(
                    sum(
                        weigh(t, lin.gradient(ref.weight))
                        for t, lin in zip(terms, lins)
                        if ref.weight in lin.layers
                    ),
                    ref,
                )
                for ref in layers
            ]
        )

    def _woodbury(self, lins, layers, counts) -> bool:
        """Whether this step solves in sample space (``solve``; "auto": rows < parameters,
        the rows of all ranks, ``counts`` the global N_t: every rank decides alike)."""
        if self.solve != "auto":
            return self.solve in ("woodbury", "nystrom")
        rows = sum(counts[t] * lin.r.shape[1] for t, lin in zip(self.residuals, lins))
        return rows < sum(size(ref) for ref in layers)

    def _sample_space(self, lins) -> dict:
        """φ of the Woodbury step (exact, or Nyström with the sketch generator's state
        kept in the optimiser's state)."""
        state = self.state[self.param_groups[0]["params"][0]]
        damping = self.param_groups[0]["damping"]
        return sample_space_step(
            lins, damping, reducer=self._reducer, solver=self._nystrom, state=state
        )

    def _update(self, blocks, layers, points, counts, loss) -> dict[str, float]:
        """θ ← θ + α d (the step rule ``lr`` names, or α = lr); returns the losses before it."""
        group = self.param_groups[0]
        losses = {t: v.item() for t, v in zip(self.residuals, loss)}
        by_name = {ref.weight: ref for ref in layers}
        loss_fn = lambda: total_loss(self.residuals, points, counts)  # noqa: E731
        current = sum(losses.values())
        take_step(self.model, by_name, blocks, group["lr"], loss_fn, current, self._reducer)
        group["step"] += 1
        return losses

    def _average(self, G: torch.Tensor, beta: float) -> torch.Tensor:
        """Ĝ ← βĜ + (1 − β)G, Ĝ = I before the first step (kept in the optimiser's state)."""
        st = self.state[self.param_groups[0]["params"][0]]
        old = st.get("gramian")
        if old is None or old.shape != G.shape:
            old = torch.eye(len(G), dtype=G.dtype, device=G.device)
        st["gramian"] = beta * old + (1 - beta) * G
        return st["gramian"]
