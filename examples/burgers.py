"""Viscous Burgers PINN: u_t + u u_x = (0.01/pi) u_xx, checked against the Cole-Hopf solution.

The standard PINN benchmark (Raissi, Perdikaris, Karniadakis 2019): x in [-1, 1],
t in [0, 1], u(x, 0) = -sin(pi x), u(+-1, t) = 0. The residual needs u, u_t,
u_x and u_xx: one taylorc propagation returns all four. The reference is the
Cole-Hopf formula (Basdevant et al. 1986)

    u(x, t) = - int sin(pi (x - s)) F(x - s) G(s) ds / int F(x - s) G(s) ds,
    F(y) = exp(-cos(pi y) / (2 pi nu)),  G(s) = exp(-s^2 / (4 nu t)),

evaluated by quadrature (in log space: F spans 40 orders of magnitude) on a
256 x 100 grid. Prints the relative L2 error and saves a figure.

    python examples/burgers.py [--adam-steps N --lbfgs-steps N --figure burgers.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc_contrib.demos.common import agg_figure, mlp, pinn_arguments, relative_l2, train

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


def main(argv=None) -> float:
    p = pinn_arguments(
        __doc__.splitlines()[0],
        widths=[32] * 5,
        interior=6000,
        boundary=200,
        adam_steps=2000,
        lbfgs_steps=4000,
        lr=2e-3,
        figure="burgers.png",
    )
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    dtype = torch.float64
    model = mlp(2, args.widths).to(dtype)
    terms = taylorc.compile(
        model, {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}, coords="x t"
    )

    # collocation points (x, t): interior, initial line, the two walls
    xt = torch.rand(args.interior, 2, dtype=dtype) * torch.tensor(
        [2.0, 1.0], dtype=dtype
    ) - torch.tensor([1.0, 0.0], dtype=dtype)
    x0 = torch.linspace(-1, 1, args.boundary, dtype=dtype)
    init = torch.stack([x0, torch.zeros_like(x0)], 1)
    tb = torch.rand(args.boundary, dtype=dtype)
    walls = torch.cat(
        [torch.stack([-torch.ones_like(tb), tb], 1), torch.stack([torch.ones_like(tb), tb], 1)]
    )
    u0 = -torch.sin(math.pi * x0)[:, None]

    def loss_fn():
        d = terms(xt)
        residual = d["u_t"] + d["u"] * d["u_x"] - NU * d["u_xx"]
        return (
            residual.pow(2).mean() + (model(init) - u0).pow(2).mean() + model(walls).pow(2).mean()
        )

    train(model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet)

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
