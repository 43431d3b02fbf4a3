"""Kirchhoff-Love plate PINN: biharmonic Delta^2 u = f on the unit square, simply supported.

f = 4 pi^4 sin(pi x) sin(pi y) with u = 0 and Delta u = 0 on the boundary (Navier
conditions of a simply supported plate) has the exact deflection
u = sin(pi x) sin(pi y). One taylorc propagation returns u, its Laplacian and its
exact biharmonic (collapsed 4th-order Taylor mode, 4 directions in 2-d).
Prints the relative L2 error on 10,000 fresh points and saves a figure.

    python examples/plate.py [--adam-steps N --lbfgs-steps N --figure plate.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc_contrib.demos.common import (
    agg_figure,
    boundary_points,
    mlp,
    pinn_arguments,
    relative_l2,
    train,
)


def exact(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) -> (N, 1)."""
    return (torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1]))[:, None]


def main(argv=None) -> float:
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
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    dtype = torch.float64
    model = mlp(2, args.widths).to(dtype)
    ops = taylorc.compile(model, {"u": "u", "lap": "laplacian", "bih": "biharmonic"})
    xi = torch.rand(args.interior, 2, dtype=dtype)
    xb = boundary_points(args.boundary, 2, dtype)
    scale = 4 * math.pi**4  # residuals of order one
    f = scale * exact(xi)

    def loss_fn():
        interior, boundary = ops(xi), ops(xb)
        return (
            ((interior["bih"] - f) / scale).pow(2).mean()
            + boundary["u"].pow(2).mean()
            + (boundary["lap"] / (2 * math.pi**2)).pow(2).mean()
        )

    train(model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet)
    xt = torch.rand(10_000, 2, dtype=dtype)
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
