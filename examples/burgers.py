"""Viscous Burgers PINN: u_t + u u_x = (0.01/pi) u_xx, checked against the Cole-Hopf solution.

The standard PINN benchmark (Raissi, Perdikaris, Karniadakis 2019): x in [-1, 1],
t in [0, 1], u(x, 0) = -sin(pi x), u(+-1, t) = 0. The residual needs u, u_t,
u_x and u_xx: one taylorc propagation returns all four. The reference is the
Cole-Hopf formula (Basdevant et al. 1986)

    u(x, t) = - int sin(pi (x - s)) F(x - s) G(s) ds / int F(x - s) G(s) ds,
    F(y) = exp(-cos(pi y) / (2 pi nu)),  G(s) = exp(-s^2 / (4 nu t)),

evaluated by quadrature (in log space: F spans 40 orders of magnitude) on a
256 x 100 grid. Prints the relative L2 error and saves a figure.

Optimiser: energy natural gradient (``taylorc.optim.ENGD``, dense Gramian, λ = 1e-10,
β = 0.3, backtracking) on the Gauss-Newton linearisation of the nonlinear residual
``u_t + u u_x - nu u_xx`` (Jacobians of u, u_x, u_t, u_xx from the Taylor graph), a tanh
MLP 2 -> 24 x 4 -> 1 (1,897 parameters: the Gramian is cheap), 240 s of training on two
threads. The interior points are redrawn every 10 steps by residual-based adaptive
sampling (RAD, Wu et al. 2023: 4,000 of 20,000 scrambled Sobol candidates, probability
∝ |r| / mean |r| + 1): the shock at x = 0 is about 0.003 wide, much thinner than the
spacing of 4,000 uniform points (about 0.02), and uniform draws leave the error
wandering between 5e-5 and 3e-4. Why this optimiser: measured alone on the 2-core CPU
(docs/kfac.md, "Every example on its optimiser"), ENGD reaches 2.6e-6 where Adam + L-BFGS stopped at 2.6e-3
after 847 s; at this example's 240 s, ENGD 9.6e-7 against 1.1e-3 for Adam + L-BFGS
("Every problem, every optimiser"; at 90 s the two are level, 9.2e-3 and 5.7e-3: RAD pays
later); ``--optimizer kfac* | spring | engd-woodbury | adam-lbfgs`` runs the others.

    python examples/burgers.py [--seconds S --optimizer NAME --figure burgers.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc_contrib.demos.common import (
    agg_figure,
    make_optimizer,
    mlp,
    pinn_arguments,
    relative_l2,
    residual_adaptive_points,
    run_demo,
    second_order_arguments,
    train,
    train_second_order,
)

NU = 0.01 / math.pi


def cole_hopf(x: torch.Tensor, t: torch.Tensor, nodes: int = 4001) -> torch.Tensor:
    """Exact u on the grid ``x (nx,)`` by ``t (nt,)`` -> ``(nt, nx)``, float64.

    The convolution in s is a trapezoid rule over ``|s| <= 10 sqrt(4 nu t)`` (the
    Gaussian is below 1e-43 beyond), with a log-sum-exp for the ratio.
    """
    out = torch.empty(len(t), len(x), dtype=torch.float64)
    for i, ti in enumerate(t.tolist()):
        if ti == 0:
            out[i] = -torch.sin(math.pi * x)
            continue
        width = 10 * math.sqrt(4 * NU * ti)
        s = torch.linspace(-width, width, nodes, dtype=torch.float64)
        y = x[:, None] - s[None, :]
        logw = -torch.cos(math.pi * y) / (2 * math.pi * NU) - s**2 / (4 * NU * ti)
        w = torch.exp(logw - logw.max(dim=1, keepdim=True).values)
        out[i] = -(torch.sin(math.pi * y) * w).sum(1) / w.sum(1)
    return out


def parse_args(argv=None):
    """The demo's options: network, points, optimiser (ENGD by default), time budget."""
    p = pinn_arguments(
        __doc__.splitlines()[0],
        widths=[24] * 4,
        interior=4000,
        boundary=200,
        adam_steps=2000,
        lbfgs_steps=4000,
        lr=2e-3,
        figure="burgers.png",
    )
    second_order_arguments(p, steps=100_000, seconds=240, optimizer="engd")
    p.add_argument(
        "--pool",
        type=int,
        default=5,
        help="RAD candidates per interior point (1: plain Sobol points, no adaptive draw)",
    )
    # RAD's draw goes stale as the shock sharpens; the Gramian of 4,400 rows gains from both
    # cores (a 2.2k x 4.4k GEMM per step)
    p.set_defaults(resample=10, threads=2)
    return p.parse_args(argv)


def main(argv=None) -> float:
    """Train, print the relative L2 error against Cole-Hopf, save the figure; returns the error."""
    return run_demo(parse_args(argv), _run)


def _run(args) -> float:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = torch.float64
    model = mlp(2, args.widths).to(dtype)
    terms = taylorc.compile(
        model, {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}, coords="x t"
    )

    def interior(xt):
        d = terms(xt)
        return d["u_t"] + d["u"] * d["u_x"] - NU * d["u_xx"]

    residuals = {
        "interior": interior,
        "initial": lambda xt: model(xt) + torch.sin(math.pi * xt[:, :1]),
        "walls": lambda xt: model(xt),
    }
    if args.optimizer == "adam-lbfgs":
        points = sample(args, gen, dtype)
        pts = {"interior": sobol(args.interior, gen, dtype), **points}

        def loss_fn():
            return sum(residuals[t](pts[t]).pow(2).mean() for t in residuals)

        train(model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet, args.seconds)
    else:

        def draw():
            pool = sobol(args.interior * args.pool, gen, dtype)
            xt = pool
            if args.pool > 1:
                xt = residual_adaptive_points(pool, interior, args.interior, gen)
            return {"interior": xt, **sample(args, gen, dtype)}

        opt = make_optimizer(args, model, residuals)
        train_second_order(opt, draw, args.steps, args.resample, args.seconds, args.quiet)

    x = torch.linspace(-1, 1, 256, dtype=dtype)
    t = torch.linspace(0, 1, 100, dtype=dtype)
    ref = cole_hopf(x, t)
    T, Xg = torch.meshgrid(t, x, indexing="ij")
    with torch.no_grad():
        pred = model(torch.stack([Xg.reshape(-1), T.reshape(-1)], 1)).reshape(len(t), len(x))
    err = relative_l2(pred, ref)
    print(
        f"relative L2 error: {err:.3e}  (256 x 100 grid against Cole-Hopf, {time.perf_counter() - t0:.0f} s)"
    )
    if args.figure:
        plot(x, t, pred, ref, args.figure)
        print(f"figure saved to {args.figure}")
    return err


def sobol(n: int, gen: torch.Generator, dtype) -> torch.Tensor:
    """``n`` scrambled Sobol points (x, t) in [-1, 1] x [0, 1], ``(n, 2)``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    u = torch.quasirandom.SobolEngine(2, scramble=True, seed=seed).draw(n, dtype=dtype)
    return u * torch.tensor([2.0, 1.0], dtype=dtype) - torch.tensor([1.0, 0.0], dtype=dtype)


def sample(args, gen: torch.Generator, dtype) -> dict:
    """Uniform points on the initial line t = 0 and on the walls x = +-1, ``(n, 2)`` each."""
    n = args.boundary
    x0 = torch.rand(n, generator=gen, dtype=dtype) * 2 - 1
    tb = torch.rand(n, generator=gen, dtype=dtype)
    side = torch.randint(0, 2, (n,), generator=gen).to(dtype) * 2 - 1
    return {
        "initial": torch.stack([x0, torch.zeros_like(x0)], 1),
        "walls": torch.stack([side, tb], 1),
    }


def plot(x, t, pred, ref, path):
    plt = agg_figure()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, data, title in zip(
        axes[:3], [ref, pred, (pred - ref).abs()], ["Cole-Hopf", "PINN", "|error|"]
    ):
        im = ax.imshow(
            data.numpy(),
            origin="lower",
            aspect="auto",
            extent=[-1, 1, 0, 1],
            cmap="RdBu_r" if title != "|error|" else "viridis",
        )
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("t")
        fig.colorbar(im, ax=ax)
    for ti in (25, 50, 75):
        axes[3].plot(x, ref[ti], "k-", lw=1)
        axes[3].plot(x, pred[ti], "--", label=f"t = {t[ti]:.2f}")
    axes[3].set_title("slices (black: reference)")
    axes[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
