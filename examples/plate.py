"""Kirchhoff-Love plate PINN: biharmonic Delta^2 u = f on the unit square, simply supported.

f = 4 pi^4 sin(pi x) sin(pi y) with u = 0 and Delta u = 0 on the boundary (Navier
conditions of a simply supported plate) has the exact deflection
u = sin(pi x) sin(pi y). One taylorc propagation returns u, its Laplacian and its
exact biharmonic (collapsed 4th-order Taylor mode, 4 directions in 2-d).
Prints the relative L2 error on 10,000 fresh points and saves a figure.

Optimiser: energy natural gradient (``taylorc.optim.ENGD``: dense Gramian, λ = 1e-10,
β = 0.3, backtracking) on 2,000 interior and 400 boundary points (two residual rows each,
u and Δu) redrawn every 100 steps, 240 s of training on two threads; the tanh MLP
2 -> 32 x 3 -> 1 has 2,241 parameters, so the Gramian is cheap. Why ENGD: measured alone on
the 2-core CPU (docs/kfac.md, "Every example on its optimiser"), it reaches 1.7e-7 in
241 s where Adam + L-BFGS stopped at 4.2e-4 in 247 s (KFAC* not yet measured here).
``--optimizer kfac* | spring | engd-woodbury | adam-lbfgs`` runs the others.

    python examples/plate.py [--seconds S --optimizer NAME --figure plate.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc_contrib.demos.common import (
    agg_figure,
    boundary_points,
    make_optimizer,
    mlp,
    pinn_arguments,
    relative_l2,
    run_demo,
    second_order_arguments,
    train,
    train_second_order,
)


def exact(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) -> (N, 1)."""
    return (torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1]))[:, None]


def parse_args(argv=None):
    """The demo's options: network, points, optimiser (ENGD by default), time budget."""
    p = pinn_arguments(
        __doc__.splitlines()[0],
        widths=[32, 32, 32],
        interior=2000,
        boundary=400,
        adam_steps=1500,
        lbfgs_steps=1000,
        lr=2e-3,
        figure="plate.png",
    )
    second_order_arguments(p, steps=100_000, seconds=240, optimizer="engd")
    p.set_defaults(threads=2)  # the Gramian's GEMMs (2.8k rows, 2.2k parameters) use both
    return p.parse_args(argv)


def main(argv=None) -> float:
    """Train, print the relative L2 error, save the figure; returns the error."""
    return run_demo(parse_args(argv), _run)


def _run(args) -> float:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = torch.float64
    model = mlp(2, args.widths).to(dtype)
    ops = taylorc.compile(model, {"u": "u", "lap": "laplacian", "bih": "biharmonic"})
    scale = 4 * math.pi**4  # residuals of order one

    def interior(x):
        return ops(x)["bih"] / scale - exact(x)

    def boundary(x):  # two rows per point: u and Δu (scaled like the exact Δu)
        d = ops(x)
        return torch.cat([d["u"], d["lap"] / (2 * math.pi**2)], 1)

    residuals = {"interior": interior, "boundary": boundary}

    def sample():
        return {
            "interior": torch.rand(args.interior, 2, dtype=dtype, generator=gen),
            "boundary": boundary_points(args.boundary, 2, dtype, gen),
        }

    if args.optimizer == "adam-lbfgs":
        points = sample()

        def loss_fn():
            return sum(f(points[t]).pow(2).mean() for t, f in residuals.items())

        train(model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet, args.seconds)
    else:
        opt = make_optimizer(args, model, residuals)
        train_second_order(opt, sample, args.steps, args.resample, args.seconds, args.quiet)
    xt = torch.rand(10_000, 2, dtype=dtype, generator=gen)
    with torch.no_grad():
        err = relative_l2(model(xt), exact(xt))
    print(f"relative L2 error: {err:.3e}  (10000 fresh points, {time.perf_counter() - t0:.0f} s)")
    if args.figure:
        plt = agg_figure()
        n = 101
        s = torch.linspace(0, 1, n, dtype=torch.float64)
        X, Y = torch.meshgrid(s, s, indexing="ij")
        pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
        with torch.no_grad():
            pred = model(pts).reshape(n, n)
        ref = exact(pts).reshape(n, n)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, data, title in zip(
            axes, [pred, ref, (pred - ref).abs()], ["PINN", "exact", "|error|"]
        ):
            im = ax.imshow(data.T.numpy(), origin="lower", extent=[0, 1, 0, 1])
            ax.set_title(title)
            fig.colorbar(im, ax=ax)
        fig.suptitle(
            "simply supported plate, $\\Delta^2 u = f$ (taylorc exact collapsed biharmonic)"
        )
        fig.tight_layout()
        fig.savefig(args.figure, dpi=110)
        plt.close(fig)
        print(f"figure saved to {args.figure}")
    return err


if __name__ == "__main__":
    main()
