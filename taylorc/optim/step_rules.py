"""Step rules shared by the optimisers: grid line search and the KFAC* 2x2 system.

Directions are dicts weight name -> block ``(d_out, d_in[+1])`` (bias last column),
the layout of :mod:`taylorc.optim.factors`.
"""

from __future__ import annotations

import math
import numbers

import torch

from .distributed import LocalReducer
from .linearization import Layer

# Dangel, Müller, Zeinhofer, NeurIPS 2024, App. (line search): α ∈ {2^-30, ..., 2^0}
GRID = tuple(2.0**-k for k in range(30, -1, -1))
LOCAL = LocalReducer()  # the reducer of a single-process caller: no collective


def check_damping_ema(damping, ema, name: str = "ema") -> None:
    """Refuse a damping λ or moving-average factor β that would give a silently wrong step.

    Args:
        damping: λ, added to the curvature (factors or Gramian): a finite real >= 0 (a
            Python or NumPy number, or a one-element tensor).
        ema: β of the moving average Â ← βÂ + (1 − β)A: in [0, 1) (β = 1 never leaves the
            initial identity; Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 3); SPRING's
            momentum μ has the same range.
        name: the name of ``ema`` in the message (``"momentum"`` for SPRING).

    Raises:
        ValueError: naming the value and the admissible range.
    """
    damping, ema = _real("damping", damping), _real(name, ema)
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    if not 0 <= ema < 1:
        raise ValueError(f"{name} must be in [0, 1), got {ema!r}")


def _real(name: str, value) -> float:
    """``value`` as a float if it is a real number or a one-element tensor, else ValueError."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def dot(u: dict, v: dict) -> torch.Tensor:
    """Σ over shared blocks of ⟨u, v⟩."""
    return sum((u[k] * v[k]).sum() for k in u if k in v)


def total_loss(residuals: dict, points: dict, counts: dict | None = None) -> float:
    """This rank's share Σ_t ½ Σ_n ||r_t,n||² / N_t of the loss, with the operators' fast
    graphs, no autograd: the sum over ranks is the loss on all points.

    ``counts``: term -> N_t over all ranks (None: this rank's points are all of them,
    Σ_t ½ mean_n ||r_t,n||²).
    """
    total = 0.0
    with torch.no_grad():
        for term, f in residuals.items():
            x = points[term]
            n = x.shape[0] if counts is None else counts[term]
            r2 = f(x).reshape(x.shape[0], -1).pow(2).sum(1)
            total += 0.5 * (r2.mean() if n == x.shape[0] else r2.sum() / n).item()
    return total


def _param_deltas(model, layers: dict[str, Layer], blocks: dict) -> list:
    """``[(parameter, delta)]`` of a block direction (W part, bias column)."""
    params = dict(model.named_parameters())
    out = []
    for name, X in blocks.items():
        layer = layers[name]
        W = params[layer.weight]
        out.append((W, X[:, : W.shape[1]].reshape(W.shape)))
        if layer.bias is not None:
            out.append((params[layer.bias], X[:, -1]))
    return out


@torch.no_grad()
def add_(model, layers: dict[str, Layer], blocks: dict, scale: float = 1.0) -> None:
    """θ ← θ + scale · blocks (in place)."""
    for p, d in _param_deltas(model, layers, blocks):
        p.add_(d.to(p.dtype), alpha=scale)


@torch.no_grad()
def line_search(
    model, layers, blocks: dict, loss_fn, current: float, grid=GRID, reducer=LOCAL
) -> float:
    """Grid line search: θ ← θ + α d with the α of ``grid`` of least loss; α = 0 when
    none improves on ``current``. Returns α. ``loss_fn()`` evaluates at the live θ and
    gives this rank's share of the loss; ``reducer`` sums the grid's values over the
    ranks in one collective (:mod:`taylorc.optim.distributed`). Müller & Zeinhofer,
    "Achieving High Accuracy with PINNs via Energy Natural Gradients" (ICML 2023)."""
    pairs = _param_deltas(model, layers, blocks)
    start = [p.detach().clone() for p, _ in pairs]
    losses = []
    for a in grid:
        _move(pairs, start, a)
        losses.append(loss_fn())
    losses = reducer.sum_values(losses)
    best, alpha = current, 0.0
    for a, loss in zip(grid, losses):
        if loss < best:
            best, alpha = loss, a
    _move(pairs, start, alpha)
    return alpha


@torch.no_grad()
def backtracking(model, layers, blocks: dict, loss_fn, current: float, reducer=LOCAL) -> float:
    """Backtracking: θ ← θ + α d with the first α of 1, 1/2, ..., 2⁻³⁰ whose loss is below
    ``current``; α = 0 (θ unchanged) when none is. Returns α.

    The grid line search's candidates, tried from the largest and stopped at the first
    decrease (Armijo's rule with no sufficient-decrease margin; Nocedal & Wright,
    "Numerical Optimization", Alg. 3.1): a natural-gradient step that its Gauss-Newton
    model predicts well costs one loss evaluation instead of the grid's 31. Distributed,
    each trial's loss is summed over the ranks (one collective per trial), so every rank
    takes the same α.
    """
    pairs = _param_deltas(model, layers, blocks)
    start = [p.detach().clone() for p, _ in pairs]
    for a in reversed(GRID):  # 1, 1/2, ..., the grid's smallest
        _move(pairs, start, a)
        if reducer.sum_values([loss_fn()])[0] < current:
            return a
    _move(pairs, start, 0.0)
    return 0.0


RULES = {"line_search": line_search, "backtracking": backtracking}


def check_lr(lr) -> None:
    """Raise ValueError unless ``lr`` names a step rule of :data:`RULES` or is a number."""
    if not (lr in RULES or isinstance(lr, (int, float)) and not isinstance(lr, bool)):
        raise ValueError(f"lr must be one of {sorted(RULES)} or a number, got {lr!r}")


def take_step(model, layers, blocks: dict, lr, loss_fn, current: float, reducer=LOCAL) -> None:
    """θ ← θ + α d: α by the step rule ``lr`` names (:data:`RULES`), or α = ``lr``."""
    if lr in RULES:
        RULES[lr](model, layers, blocks, loss_fn, current, reducer=reducer)
    else:
        add_(model, layers, blocks, float(lr))


def _move(pairs: list, start: list, a: float) -> None:
    """Every parameter to its start plus ``a`` times its delta."""
    for (p, d), p0 in zip(pairs, start):
        p.copy_(p0 + a * d.to(p.dtype))


def _gram_jvps(ju: list, jv: list | None, counts: list) -> torch.Tensor:
    """Σ_t 1/N_t ⟨J_t u, J_t v⟩ from the JVPs."""
    jv = ju if jv is None else jv
    return sum((a * b).sum() / n for a, b, n in zip(ju, jv, counts))


def kfac_star(
    lins, grad: dict, Delta: dict, prev: dict, damping: float, counts=None, reducer=LOCAL
):
    """(α, μ) of Martens & Grosse 2015, Sec. 7 ("KFAC*"): minimise the damped quadratic
    model m(αΔ + μδ) = gᵀ(αΔ + μδ) + ½ (αΔ + μδ)ᵀ(G + λI)(αΔ + μδ), i.e. solve
    [[ΔᵀGΔ + λΔᵀΔ, ΔᵀGδ + λΔᵀδ], [·, δᵀGδ + λδᵀδ]] (α, μ) = −(gᵀΔ, gᵀδ).

    ``counts``: each term's N_t over all ranks (None: this process's); ``reducer`` sums
    the three Gramian products over the ranks (g, Δ, δ are the same on every rank)."""
    both = [lin.jvp(Delta, prev) for lin in lins]  # two JVPs per term, one matmul
    jD, jP = [b[0] for b in both], [b[1] for b in both]
    counts = [lin.r.shape[0] for lin in lins] if counts is None else counts
    grams = [_gram_jvps(jD, None, counts), _gram_jvps(jD, jP, counts), _gram_jvps(jP, None, counts)]
    reducer.sum_(grams)
    a = grams[0] + damping * dot(Delta, Delta)
    b = grams[1] + damping * dot(Delta, prev)
    c = grams[2] + damping * dot(prev, prev)
    # one transfer to the host (a device sync on a GPU), not five
    a, b, c, r1, r2 = torch.stack([a, b, c, -dot(grad, Delta), -dot(grad, prev)]).tolist()
    if not all(math.isfinite(v) for v in (a, b, c, r1, r2)):
        raise FloatingPointError(
            "KFAC*: the quadratic model is not finite (the iterates diverged): increase damping"
        )
    return solve_2x2(a, b, c, r1, r2)


def solve_2x2(a: float, b: float, c: float, r1: float, r2: float) -> tuple[float, float]:
    """``(x, y)`` with ``[[a, b], [b, c]] (x, y) = (r1, r2)``, a symmetric positive
    semidefinite system (a, c ≥ 0), in float64 by Cramer's rule on the Jacobi-scaled
    system (unit diagonal, off-diagonal b / √(ac) = the cosine of the two directions in the
    Gramian's metric): the same bits in every process (not LAPACK's least squares,
    which MKL runs on alignment-dependent code paths: KFAC* amplifies last-bit
    differences). The scaling makes the singularity test
    independent of the directions' lengths (KFAC*'s second step has ‖δ‖ ≈ 1e-6 ‖Δ‖).
    Singular (δ ∥ Δ: 1 − cos² ≤ 64 ε) or a zero direction: the least-squares solution
    of least norm in the scaled coordinates (the best step along the common direction).
    """
    if a <= 0.0 or c <= 0.0:  # a zero direction (a, c are sums of squares): decoupled
        return (r1 / a if a > 0.0 else 0.0), (r2 / c if c > 0.0 else 0.0)
    sa, sc = math.sqrt(a), math.sqrt(c)
    cos, u, v = b / (sa * sc), r1 / sa, r2 / sc
    det = 1.0 - cos * cos
    if det > 64 * 2.0**-52:
        return (u - cos * v) / det / sa, (v - cos * u) / det / sc
    M = torch.tensor([[1.0, cos], [cos, 1.0]], dtype=torch.float64)
    rhs = torch.tensor([[u], [v]], dtype=torch.float64)
    sol = torch.linalg.lstsq(M, rhs, driver="gelsd").solution[:, 0]
    return sol[0].item() / sa, sol[1].item() / sc
