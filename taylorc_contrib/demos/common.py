"""Pieces every PINN demo shares: the network, the Adam-then-L-BFGS loop, the error metric."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress

import torch
from torch import nn

from taylorc.optim import ENGD, KFAC, SPRING


def mlp(
    d_in: int, widths: list[int], d_out: int = 1, activation: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """``d_in -> widths -> d_out`` MLP with the activation between layers."""
    layers, d = [], d_in
    for w in widths:
        layers += [nn.Linear(d, w), activation()]
        d = w
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def pinn_arguments(
    description: str,
    *,
    widths: list[int],
    interior: int,
    boundary: int,
    adam_steps: int,
    lbfgs_steps: int,
    lr: float,
    figure: str,
) -> argparse.ArgumentParser:
    """The options every PINN demo takes, with the demo's defaults; add your own to the parser."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--widths", type=int, nargs="+", default=widths)
    p.add_argument("--interior", type=int, default=interior, help="interior collocation points")
    p.add_argument("--boundary", type=int, default=boundary, help="boundary (and initial) points")
    p.add_argument("--adam-steps", type=int, default=adam_steps)
    p.add_argument("--lbfgs-steps", type=int, default=lbfgs_steps)
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default=figure, help="where to save the figure ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    adam_steps: int,
    lbfgs_steps: int,
    lr: float = 1e-3,
    quiet: bool = False,
    seconds: float | None = None,
) -> float:
    """Adam with cosine decay, then L-BFGS (strong Wolfe line search); returns the final loss.

    The usual PINN recipe (Raissi et al. 2019; the KFAC-for-PINNs baselines):
    Adam leaves the bad initial region, L-BFGS converges. Progress goes to tqdm.
    ``seconds``: a training budget for both (None: the step counts alone); Adam stops
    when it is spent, and L-BFGS stops at its first loss evaluation after it.
    """
    from tqdm import tqdm

    over = _budget(seconds)
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(adam, max(adam_steps, 1), eta_min=lr / 20)
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(adam_steps), desc="adam", disable=quiet)
    for step in bar:
        adam.zero_grad()
        loss = loss_fn()
        loss.backward()
        adam.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.2e}")
        if over():
            break
    if lbfgs_steps > 0 and not over():
        _lbfgs(model, loss_fn, lbfgs_steps, over, quiet)
        loss = loss_fn()
    return loss.item()


def _lbfgs(model: nn.Module, loss_fn, steps: int, over: Callable[[], bool], quiet: bool):
    """L-BFGS (strong Wolfe) for ``steps`` loss evaluations or until ``over()``; a stop
    within a line search leaves the parameters of the lowest loss it evaluated."""
    from tqdm import tqdm

    lbfgs = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=steps,
        history_size=50,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )
    bar = tqdm(total=steps, desc="lbfgs", disable=quiet)
    best = [float("inf"), None]  # a stop mid line search leaves a trial point

    def closure():
        if over():  # L-BFGS has no time limit of its own
            raise _BudgetSpent
        lbfgs.zero_grad()
        value = loss_fn()
        value.backward()
        if value.item() < best[0]:
            best[:] = value.item(), [p.detach().clone() for p in model.parameters()]
        bar.update(1)
        bar.set_postfix(loss=f"{value.item():.2e}")
        return value

    with suppress(_BudgetSpent):
        lbfgs.step(closure)
        best[1] = None  # finished within the budget: keep where L-BFGS stopped
    if best[1] is not None:
        with torch.no_grad():
            for p, v in zip(model.parameters(), best[1]):
                p.copy_(v)
    bar.close()


class _BudgetSpent(Exception):
    """Raised in L-BFGS's closure when the training budget is spent."""


def _budget(seconds: float | None) -> Callable[[], bool]:
    """``() -> True`` once ``seconds`` of wall time have passed (never for None)."""
    t0 = time.perf_counter()
    return lambda: seconds is not None and time.perf_counter() - t0 > seconds


def boundary_points(
    n: int, D: int, dtype, gen: torch.Generator | None = None, dims=None
) -> torch.Tensor:
    """n uniform points on the faces of [0, 1]^D: one of ``dims`` (default all) pinned to 0 or 1.

    ``dims`` excludes coordinates without walls (time: its initial slice is sampled apart).
    """
    dims = torch.arange(D) if dims is None else torch.as_tensor(dims)
    x = torch.rand(n, D, generator=gen, dtype=dtype)
    face = dims[torch.randint(0, len(dims), (n,), generator=gen)]
    x[torch.arange(n), face] = torch.randint(0, 2, (n,), generator=gen).to(dtype)
    return x


def residual_adaptive_points(
    pool: torch.Tensor,
    residual: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    gen: torch.Generator | None = None,
    k: float = 1.0,
    c: float = 1.0,
) -> torch.Tensor:
    """``n`` of the candidate points ``pool (M, D)`` drawn without replacement with probability
    ``∝ |r|^k / mean(|r|^k) + c`` (RAD: Wu, Zhu, Tan, Kartha, Lu, "A comprehensive study of
    non-adaptive and residual-based adaptive sampling for physics-informed neural networks",
    CMAME 2023, Eq. 2), ``r = residual(pool)`` of shape ``(M, 1)``. ``c = 1`` keeps half of the
    draw near uniform; the other half gathers where the residual is large (Burgers' shock).

    Raises:
        ValueError: ``n`` > ``M``.
    """
    if n > len(pool):
        raise ValueError(f"cannot draw {n} points from a pool of {len(pool)}")
    with torch.no_grad():
        r = residual(pool).abs().reshape(len(pool), -1).sum(1) ** k
    weight = r / r.mean() + c
    return pool[torch.multinomial(weight, n, replacement=False, generator=gen)]


def relative_l2(pred: torch.Tensor, exact: torch.Tensor) -> float:
    """``||pred - exact||_2 / ||exact||_2`` over all entries."""
    return ((pred - exact).norm() / exact.norm()).item()


def agg_figure():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Tight layout, save to ``path``, close (frees the figure's memory)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


OPTIMIZERS = ("kfac*", "kfac", "engd", "engd-woodbury", "spring", "adam-lbfgs")
# Best runs of the first 5-d Poisson sweep of the paper's code (Dangel, Müller, Zeinhofer
# 2024; kfac-pinns-experiments exp10 at commit 9c52f57): KFAC* λ = 2.7e-9, β = 0.937; KFAC
# λ = 3.5e-10, β = 0.19, μ = 0.63. The paper reports its later sweep's runs (KFAC* λ = 9.8e-13,
# β = 0.771), which did no better here across seeds (docs/kfac.md, "5-d Poisson by step").
SECOND_ORDER_DEFAULTS = {
    "kfac*": dict(damping=2.7e-9, ema=0.937, momentum=0.0),
    "kfac": dict(damping=3.5e-10, ema=0.19, momentum=0.63),
    # ENGD full: λ = 1e-10, β = 0.3; backtracking from α = 1 instead of the paper's 31-point
    # grid: one loss evaluation a step instead of 31, so about 3x the steps in a time budget
    # (5-d Poisson, 270 s: 7.8e-8 against 2.9e-7, docs/kfac.md)
    "engd": dict(damping=1e-10, ema=0.3, momentum=0.0, step_rule="backtracking"),
    # sample-space solves (issue 32): not tuned yet; ema is unused there
    "engd-woodbury": dict(damping=1e-8, ema=0.0, momentum=0.0, step_rule="line_search"),
    "spring": dict(damping=1e-8, ema=0.0, momentum=0.9, step_rule="line_search"),
}


def second_order_arguments(
    p: argparse.ArgumentParser, steps: int, seconds: float | None = None, optimizer="kfac*"
) -> None:
    """Add ``--optimizer`` (default ``optimizer``), ``--step-rule``, ``--steps``, ``--seconds``,
    ``--resample``, ``--damping``, ``--ema``, ``--momentum``, ``--sketch-size`` (None: the optimiser's default in
    ``SECOND_ORDER_DEFAULTS``), ``--backend`` (the optimiser's linearisation, compiled by
    default here), ``--threads``."""
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer)
    p.add_argument(
        "--step-rule",
        choices=["line_search", "backtracking"],
        default=None,
        help="ENGD's step size: the paper's 31-point grid or backtracking from 1 (default: "
        "the optimiser's entry in SECOND_ORDER_DEFAULTS)",
    )
    p.add_argument("--steps", type=int, default=steps, help="KFAC/ENGD steps")
    p.add_argument(
        "--seconds",
        type=float,
        default=seconds,
        help="training budget in seconds, every optimiser (Adam + L-BFGS too)",
    )
    p.add_argument("--resample", type=int, default=100, help="new collocation points every k steps")
    for name in ("damping", "ema", "momentum"):
        p.add_argument(f"--{name}", type=float, default=None)
    p.add_argument(
        "--sketch-size",
        type=int,
        default=None,
        help="engd-woodbury / spring: solve with a rank-L randomized Nyström approximation of "
        "the kernel matrix instead of the exact one (pays for many rows; docs/kfac.md)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "eager", "inductor"],
        default="auto",
        help="KFAC/ENGD linearisation: compiled after 10 steps (auto), never, or from step 2 "
        "(the demos' residuals are functions of the points and the parameters)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (PINN-sized ops: more threads cost more than they save "
        "on a 2-core machine, much more when it is shared)",
    )


def make_optimizer(args, model: nn.Module, residuals: dict):
    """``taylorc.optim.KFAC`` (``"kfac*"``: lr="auto"; ``"kfac"``: line search), ``ENGD``
    (dense, or ``"engd-woodbury"``) or ``SPRING`` (``args.sketch_size``: their Nyström solve),
    with ``args.backend`` (the flag's default ``"auto"``: the demos' residuals are pure)."""
    opts = {
        k: getattr(args, k, None) if getattr(args, k, None) is not None else v
        for k, v in SECOND_ORDER_DEFAULTS[args.optimizer].items()
    }
    backend = getattr(args, "backend", "eager")  # callers without the flag: eager
    sketch = getattr(args, "sketch_size", None)
    if sketch is not None and args.optimizer not in ("engd-woodbury", "spring"):
        raise ValueError(
            "--sketch-size is an option of the sample-space solves: engd-woodbury, spring"
        )
    if args.optimizer in ("engd", "engd-woodbury", "spring"):
        shared = dict(lr=opts["step_rule"], damping=opts["damping"], backend=backend)
        if sketch is not None:  # the randomized Nyström solve (taylorc.optim.nystrom)
            shared.update(solve="nystrom", sketch_size=sketch)
        if args.optimizer == "spring":
            return SPRING(model, residuals, momentum=opts["momentum"], **shared)
        shared.setdefault("solve", "woodbury" if args.optimizer == "engd-woodbury" else "dense")
        return ENGD(model, residuals, ema=opts["ema"], **shared)
    lr = "auto" if args.optimizer == "kfac*" else "line_search"
    return KFAC(model, residuals, lr=lr, backend=backend, **opts)


def train_second_order(
    opt,
    sample: Callable[[], dict],
    steps: int,
    resample: int = 100,
    seconds: float | None = None,
    quiet: bool = False,
    after_step: Callable[[], None] | None = None,
) -> float:
    """``opt.step(points)`` for ``steps`` steps (or ``seconds``), new points from ``sample()``
    every ``resample`` steps (the paper's data regime), ``after_step()`` after each (e.g. a
    parameter average's update); returns the last loss. tqdm shows it."""
    from tqdm import tqdm

    bar = tqdm(range(steps), desc=type(opt).__name__, disable=quiet)
    over, loss, points = _budget(seconds), float("nan"), None
    for step in bar:
        if step % resample == 0:
            points = sample()
        loss = sum(opt.step(points).values())
        if after_step is not None:
            after_step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.2e}", step=step)
        if over():
            break
    bar.close()
    return loss


def run_demo(args, run: Callable):
    """``run(args)`` with ``args.threads`` torch intra-op threads, restored after."""
    with torch_threads(args.threads):
        return run(args)


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads (restored after: demos also run in tests)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
