"""2+1-d heat equation PINN: u_t = kappa (u_xx + u_yy) on [0, 1]^2 x [0, 1], against the exact solution.

u(x, y, t) = exp(-2 pi^2 kappa t) sin(pi x) sin(pi y) with zero boundary data and
u(x, y, 0) = sin(pi x) sin(pi y). The residual is ONE taylorc operator written in
the field's notation, ``"u_t - kappa*(u_xx + u_yy)"`` with ``coords="x y t"``.
Prints the relative L2 error on 20,000 fresh points and saves a figure.

    python examples/heat.py [--kappa 0.05 --adam-steps N --lbfgs-steps N --figure heat.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc.demos.common import (
    agg_figure,
    boundary_points,
    mlp,
    pinn_arguments,
    relative_l2,
    train,
)


def exact(xyt: torch.Tensor, kappa: float) -> torch.Tensor:
    """(N, 3) -> (N, 1)."""
    x, y, t = xyt.unbind(1)
    return (
        torch.exp(-2 * math.pi**2 * kappa * t) * torch.sin(math.pi * x) * torch.sin(math.pi * y)
    )[:, None]


def main(argv=None) -> float:
    p = pinn_arguments(
        __doc__.splitlines()[0],
        widths=[32, 32, 32],
        interior=3000,
        boundary=600,
        adam_steps=1500,
        lbfgs_steps=1000,
        lr=2e-3,
        figure="heat.png",
    )
    p.add_argument("--kappa", type=float, default=0.05)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    dtype = torch.float64
    model = mlp(3, args.widths).to(dtype)
    heat = taylorc.compile(
        model, "u_t - kappa*(u_xx + u_yy)", coords="x y t", params={"kappa": args.kappa}
    )
    xi = torch.rand(args.interior, 3, dtype=dtype)
    xb = boundary_points(args.boundary, 3, dtype, dims=[0, 1])  # walls in x and y
    x0 = torch.rand(args.boundary, 3, dtype=dtype) * torch.tensor([1.0, 1.0, 0.0], dtype=dtype)
    u0 = exact(x0, args.kappa)

    def loss_fn():
        return heat(xi).pow(2).mean() + model(xb).pow(2).mean() + (model(x0) - u0).pow(2).mean()

    train(model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet)
    xt = torch.rand(20_000, 3, dtype=dtype)
    with torch.no_grad():
        err = relative_l2(model(xt), exact(xt, args.kappa))
    print(f"relative L2 error: {err:.3e}  (20000 fresh points, {time.perf_counter() - t0:.0f} s)")
    if args.figure:
        plot(model, args.kappa, args.figure)
        print(f"figure saved to {args.figure}")
    return err


def plot(model, kappa, path):
    plt = agg_figure()
    n = 81
    s = torch.linspace(0, 1, n, dtype=torch.float64)
    X, Y = torch.meshgrid(s, s, indexing="ij")
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for col, t in enumerate((0.0, 0.5, 1.0)):
        pts = torch.stack(
            [X.reshape(-1), Y.reshape(-1), torch.full((n * n,), t, dtype=torch.float64)], 1
        )
        with torch.no_grad():
            pred = model(pts).reshape(n, n)
        ref = exact(pts, kappa).reshape(n, n)
        for row, (data, name) in enumerate([(pred, "PINN"), ((pred - ref).abs(), "|error|")]):
            im = axes[row, col].imshow(data.T.numpy(), origin="lower", extent=[0, 1, 0, 1])
            axes[row, col].set_title(f"{name}, t = {t}")
            fig.colorbar(im, ax=axes[row, col])
    fig.suptitle(f"heat equation, kappa = {kappa} (taylorc operator 'u_t - kappa*(u_xx + u_yy)')")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
