"""``KFAC``: Kronecker-factored curvature for PINN losses, read from the Taylor graph.

Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature for
Physics-Informed Neural Networks" (NeurIPS 2024). Per loss term t and linear layer,
Kronecker factors A_t ⊗ B_t of the Gauss-Newton block (input covariance A, gradient
covariance B; :mod:`taylorc.optim.factors`), averaged over steps Â ← βÂ + (1 − β)A (from
identity), damped Ā = Â + λI, and the terms' sum solved exactly per layer
(:mod:`taylorc.optim.kronecker`):
Δ = −(Σ_t Ā_t ⊗ B̄_t)⁻¹ ∇L. Step rules: ``lr="auto"`` (KFAC*: Martens & Grosse,
"Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015,
Sec. 7), ``"line_search"`` (momentum, then a grid line search), or a float.
"""

from __future__ import annotations

import torch

from .base import LossTermOptimizer
from .distributed import factorise
from .factors import APPROX, layer_factors
from .gramian import layout
from .linearization import linearize
from .step_rules import add_, check_damping_ema, kfac_star, line_search, total_loss

RULES = ("auto", "line_search")


class KFAC(LossTermOptimizer):
    """KFAC for PINN losses L = Σ_t 1/(2N_t) Σ_n ||r_t(x_t,n)||².

    Example::

        lap = taylorc.compile(model, "laplacian")
        opt = taylorc.optim.KFAC(model, residuals={
            "interior": lambda x: -lap(x) - f(x),
            "boundary": lambda x: model(x) - g(x)}, lr="auto")
        for step in range(3000):
            losses = opt.step({"interior": xi, "boundary": xb})  # {term: ½ mean r²}

    A residual is any callable of its points ``(N, *in) -> (N,)`` or ``(N, M)`` that
    calls compiled operators of ``model`` (method ``"collapsed"`` or ``"taylor"``; any
    operator: Laplacian, heat, biharmonic, a dict such as Burgers' {u, u_t, u_x, u_xx})
    and ``model`` itself, and may be nonlinear in them (the Gauss-Newton matrix
    linearises r). Every trainable parameter that a residual depends on must be the
    weight or in-layer bias of a linear layer (``nn.Linear``, ``x @ W.T``).

    Args:
        model: the ``nn.Module`` (float32 or float64; factors are solved in float64).
        residuals: term name -> residual callable.
        lr: ``"auto"`` (KFAC*: (α, μ) from the 2x2 quadratic model with exact
            Gramian-vector products; the first step uses ``initial_lr``),
            ``"line_search"`` (δ̂ ← μδ̂ + Δ, α ∈ {2⁻³⁰..2⁰} minimising the loss on the
            batch, 0 if none decreases it), or a float (δ̂ ← μδ̂ + Δ, step lr·δ̂).
        damping: λ added to every factor, in float64 (and to the 2x2 system of ``"auto"``).
        ema: β of the factors' moving average (0: this step's factors only).
        momentum: μ of ``"line_search"`` and float ``lr`` (ignored by ``"auto"``).
        approx: ``"expand"`` (the paper's) or ``"reduce"``.
        update_every: recompute the factors every k steps.
        invert_every: re-factor the solves every k steps. With ``lr="auto"`` and a
            small fixed damping, stale factors (k > 1) can make KFAC* diverge
            (docs/kfac.md, "Options"); the defaults refresh every step.
        initial_lr: α of KFAC*'s first step (no previous direction yet).
        process_group: data parallelism over ``torch.distributed`` (docs/distributed.md).
            ``None``: the default group when ``torch.distributed`` is initialized with
            more than one rank, else single-process; or a ``ProcessGroup`` (of one rank:
            single-process). Distributed, each rank passes its own shard of every term's
            points (any sizes, at least one point each) and every mean over points
            (loss, gradient, factors, Gramian products, line-search losses) is
            all-reduced: a step equals the single-process step on the union of the
            shards, up to rounding. Rank 0's parameters are broadcast at construction
            and rank 0's update at every step (the ranks stay bitwise equal).
        split_inversion: distributed, factorise each layer's Kronecker sum on one rank
            and broadcast it (``None``: on when distributed); off: every rank
            factorises every layer. Same result either way.
        backend: how each term's linearisation (the residual with its layers' inputs,
            the reverse pass for the pre-activation gradients, the Kronecker factors, the
            gradient and KFAC*'s JVPs) runs after its first, checked call: ``"eager"``
            (the default), ``"auto"`` (eager for
            ``taylorc.runtime.config.CONFIG.auto_compile_after`` = 10 calls per points
            shape, then traced and compiled with inductor; docs/kfac.md) or
            ``"inductor"`` (compiled from the second call); :class:`~taylorc.optim.linearizer.Linearizer`. Compile only a residual
            that is a function of its points and the model's parameters: a compiled
            residual is a trace, and Python values it reads are those of the trace
            (names it reads that are rebound are caught and send the term back to
            eager with a warning; attributes and container entries are not).

    Raises:
        ValueError: unknown ``lr`` rule, ``approx`` or ``backend``, non-positive counts,
            ``damping`` not finite and >= 0 or ``ema`` outside [0, 1); (distributed,
            at ``step``, on every rank) a rank without points of a term.
        taylorc.errors.KFACError: (at the first step of each term) a parameter used
            outside the linear layers of the Taylor graph, named; ``model`` wrapped in
            ``DistributedDataParallel`` (pass ``ddp.module``: KFAC reduces by itself);
            with ``backend="inductor"``, a term whose linearisation cannot be compiled
            (single-process; distributed, that rank warns and runs the term eagerly:
            raising on one rank alone would leave the others waiting).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        residuals: dict,
        lr="auto",
        damping: float = 1e-9,
        ema: float = 0.95,
        momentum: float = 0.0,
        approx: str = "expand",
        update_every: int = 1,
        invert_every: int = 1,
        initial_lr: float = 1e-6,
        process_group=None,
        split_inversion: bool | None = None,
        backend: str = "eager",
    ):
        if not (lr in RULES or isinstance(lr, (int, float)) and not isinstance(lr, bool)):
            raise ValueError(f"lr must be one of {RULES} or a number, got {lr!r}")
        if approx not in APPROX:
            raise ValueError(f"approx must be one of {APPROX}, got {approx!r}")
        if update_every < 1 or invert_every < 1:
            raise ValueError("update_every and invert_every must be positive")
        check_damping_ema(damping, ema)
        if not residuals:
            raise ValueError("residuals is empty: give at least one loss term")
        defaults = dict(
            lr=lr,
            damping=damping,
            ema=ema,
            momentum=momentum,
            approx=approx,
            update_every=update_every,
            invert_every=invert_every,
            initial_lr=initial_lr,
            step=0,
        )
        super().__init__(model, residuals, defaults, process_group, backend, approx)
        self._solvers: dict | None = None
        self.last: dict = {}  # the last step's vectors (for tests and diagnostics)
        # the split inversion factorises each layer on one rank (in one process: here)
        self._factorise = self._reducer.solvers if split_inversion is not False else factorise

    # -- one step -------------------------------------------------------------------

    def step(self, points: dict) -> dict[str, float]:
        """One KFAC step on the batch ``points`` (term name -> ``(N_t, *in)``).

        Returns:
            term name -> ½ mean ||r||² at the parameters before the step.
        """
        group, reducer = self.param_groups[0], self._reducer
        # this rank's shares N_t,r / N_t of the global means, and the global N_t
        weigh, counts = reducer.weighting({t: points.get(t) for t in self.residuals})
        self._names = dict(self.model.named_parameters())  # for _param, this step
        lins = self.linearize(points)
        layers = {layer.weight: layer for layer in layout(list(lins.values()), self.model)}
        k = group["step"]
        refresh = k % group["update_every"] == 0
        factors = self._factors(lins, group, weigh) if refresh else {}
        loss = {t: weigh(t, lin.loss) for t, lin in lins.items()}
        grad = {
            w: sum(weigh(t, lin.gradient(w)) for t, lin in lins.items() if w in lin.layers)
            for w in layers
        }
        # one all-reduce (sum) of every mean over points
        reducer.sum_([*loss.values(), *grad.values(), *(F for AB in factors.values() for F in AB)])
        losses = {t: v.item() for t, v in loss.items()}
        if refresh:
            self._average(factors, group)
        if k % group["invert_every"] == 0:
            self._invert(group)
        elif self._solvers is None:  # restored between inversions: the last inversion's pairs
            self._invert(group, stored=True)
        Delta = {w: -self._solvers[w].solve(grad[w]) for w in layers}
        self.last = dict(grad=grad, Delta=Delta)
        update = self._direction(
            group, lins, layers, grad, Delta, sum(losses.values()), points, counts
        )
        for w, d in update.items():
            self.state[self._param(w)]["delta"] = d
        self.last["update"] = update
        group["step"] = k + 1
        return losses

    def _direction(self, group, lins, layers, grad, Delta, current, points, counts) -> dict:
        """Apply the step rule; returns the update's momentum state (δ or δ̂).

        ``counts``: term -> N_t over all ranks."""
        prev = {w: self.state[self._param(w)].get("delta") for w in layers}
        lr = group["lr"]
        if lr == "auto":
            if any(v is None for v in prev.values()):
                alpha, mu, prev = group["initial_lr"], 0.0, {}
            else:
                alpha, mu = kfac_star(
                    list(lins.values()),
                    grad,
                    Delta,
                    prev,
                    group["damping"],
                    counts=[counts[t] for t in lins],
                    reducer=self._reducer,
                )
            delta = {w: alpha * Delta[w] + (mu * prev[w] if w in prev else 0) for w in Delta}
            self._reducer.broadcast_(delta.values())  # rank 0's: the ranks stay bitwise equal
            add_(self.model, layers, delta)
            self.last.update(alpha=alpha, mu=mu)
            return delta
        mu = group["momentum"]
        delta = {w: Delta[w] + (mu * prev[w] if prev[w] is not None else 0) for w in Delta}
        self._reducer.broadcast_(delta.values())  # (see Reducer.broadcast_)
        if lr == "line_search":

            def loss_fn():
                return total_loss(self.residuals, points, counts)

            alpha = line_search(self.model, layers, delta, loss_fn, current, reducer=self._reducer)
        else:
            alpha = float(lr)
            add_(self.model, layers, delta, alpha)
        self.last.update(alpha=alpha, mu=mu)
        return delta

    # -- curvature ------------------------------------------------------------------

    def _param(self, weight: str) -> torch.Tensor:
        """The parameter named ``weight``, from the name dict made at the start of the
        step (not built per call: a measurable part of a small net's step, bench/notes.md)."""
        names = self.__dict__.get("_names")
        if names is None or weight not in names:
            names = self._names = dict(self.model.named_parameters())
        return names[weight]

    def _factors(self, lins: dict, group, weigh) -> dict:
        """``{(term, weight): (A, B)}``, the Kronecker factors of this batch, each
        ``weigh(term, ·)``'d (this rank's shares of the global means, summed by the caller)."""
        out = {}
        for term, lin in lins.items():
            for w in lin.layers:
                A, B = lin.kronecker_factors(w, group["approx"])
                out[term, w] = (weigh(term, A), weigh(term, B))
        return out

    def _average(self, factors: dict, group) -> None:
        """Â ← βÂ + (1 − β)A for every term and layer (identity before the first update)."""
        beta = group["ema"]
        for (term, w), (A, B) in factors.items():
            st = self.state[self._param(w)]
            for key, F in (("A", A), ("B", B)):
                old = st.setdefault(key, {}).get(term)
                if old is None:
                    old = torch.eye(F.shape[0], dtype=F.dtype, device=F.device)
                st[key][term] = beta * old + (1 - beta) * F

    def _invert(self, group, stored: bool = False) -> None:
        """Damp the averaged Kronecker factors and prepare one Kronecker-sum solver per layer.

        Damping is added in float64 (in a float32 factor, λ below its rounding would
        vanish). The factors inverted are kept in the state (``"inverted"``):
        ``stored`` rebuilds the solvers from them, so a restored optimiser solves with
        the factors of the last inversion until the next one, as the uninterrupted run
        does."""
        damping, pairs = group["damping"], {}
        for name, p in self.model.named_parameters():
            st = self.state.get(p, {})
            if "A" not in st:
                continue
            if not (stored and "inverted" in st):
                st["inverted"] = [(st["A"][term], st["B"][term]) for term in st["A"]]
            pairs[name] = [(_damped(A, damping), _damped(B, damping)) for A, B in st["inverted"]]
        self._solvers = self._factorise(pairs)

    # -- state ----------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore factors, momentum and step count; the solvers are rebuilt at the next
        step from the factors of the last inversion (``invert_every`` > 1 resumes the
        uninterrupted run)."""
        super().load_state_dict(state_dict)
        self._solvers = None


def _damped(F: torch.Tensor, damping: float) -> torch.Tensor:
    """``F + λI`` in float64, for a Kronecker factor F and damping λ."""
    eye = torch.eye(F.shape[0], dtype=torch.float64, device=F.device)
    return F.double() + damping * eye


def kfac_factors(model, residuals: dict, points: dict, approx: str = "expand") -> dict:
    """The Kronecker factors (input covariance A, gradient covariance B) of every loss
    term at the current parameters.

    Args:
        model: the ``nn.Module`` whose compiled operators the residuals call.
        residuals: term name -> callable ``x (N, *in) -> r (N,) or (N, M)``; the
            residual may call :func:`taylorc.compile`'d operators of ``model`` (method
            ``"collapsed"`` or ``"taylor"``) and ``model`` itself.
        points: term name -> points ``(N, *in)``.
        approx: ``"expand"`` (the paper's) or ``"reduce"``.

    Returns:
        ``{term: {weight name: (A, B)}}``, A ``(d_in+1, d_in+1)`` (``d_in`` without a
        bias), B ``(d_out, d_out)``, in the points' dtype (formulas: module docstring).

    Raises:
        taylorc.errors.KFACError: as :func:`taylorc.optim.linearization.linearize`.
    """
    out = {}
    for term, residual in residuals.items():
        lin = linearize(model, residual, points[term], check=True)
        out[term] = {w: layer_factors(layer, approx) for w, layer in lin.layers.items()}
    return out
