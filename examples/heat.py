"""Heat equation PINNs against exact solutions: (2+1)-d, and the (4+1)-d problem of the KFAC paper.

``--problem 2+1``: u_t = kappa (u_xx + u_yy) on [0, 1]^2 x [0, 1],
u = exp(-2 pi^2 kappa t) sin(pi x) sin(pi y) (zero walls, sine initial state).
``--problem 4+1`` (Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 4): u_t = 1/4 Δ_x u on
[0, 1]^4 x [0, 1], u = exp(-t) sum_i sin(2 x_i) (walls and initial state from it).
The residual is ONE taylorc operator in the field's notation (``"u_t - kappa*(u_xx + u_yy)"``);
the walls and the initial slice form one boundary term with target u*. Prints the
relative L2 error on 20,000 fresh points and saves a figure.

Optimiser: energy natural gradient (``taylorc.optim.ENGD``: the dense Gramian of the
449-parameter 5 -> 64 -> 1 net, λ = 1e-10, β = 0.3, backtracking) on N = 3000/500 points
redrawn every 100 steps, 120 s of training. Why ENGD: measured alone on the 2-core CPU,
120 s each (docs/kfac.md, "Every example on its optimiser"), it reaches 5.2e-7 where
KFAC* reaches 2.3e-4 and Adam 5.4e-3; at 90 s against every optimiser ("Every problem,
every optimiser": Adam + L-BFGS 4.0e-4, KFAC* 1.7e-4, ENGD 6.6e-7, ENGD-Woodbury 1.7e-5,
SPRING 1.6e-5), dense ENGD wins while its P = 449 is below the 3,500 rows. ``--optimizer kfac* | kfac | spring | engd-woodbury |
adam-lbfgs`` runs the others.

    python examples/heat.py [--problem 4+1 --optimizer engd --seconds S --figure heat.png]
"""

from __future__ import annotations

import math
import time

import torch

import taylorc
from taylorc_contrib.demos import common

PROBLEMS = {  # coordinates (time last), operator, kappa
    "2+1": ("x y t", "u_t - kappa*(u_xx + u_yy)"),
    "4+1": ("a b c d t", "u_t - kappa*(u_aa + u_bb + u_cc + u_dd)"),
}


def exact(xt: torch.Tensor, problem: str, kappa: float) -> torch.Tensor:
    """u* at ``(N, d + 1)`` points (time last) -> ``(N, 1)``."""
    x, t = xt[:, :-1], xt[:, -1:]
    if problem == "2+1":
        return torch.exp(-2 * math.pi**2 * kappa * t) * torch.sin(math.pi * x).prod(1, keepdim=True)
    return torch.exp(-t) * torch.sin(2 * x).sum(1, keepdim=True)


def sampler(args, D: int, gen: torch.Generator, dtype):
    """``() -> {"interior", "boundary"}``: uniform interior points; half walls, half t = 0."""

    def sample():
        xb = common.boundary_points(
            args.boundary - args.boundary // 2, D, dtype, gen, dims=range(D - 1)
        )
        x0 = torch.rand(args.boundary // 2, D, generator=gen, dtype=dtype)
        x0[:, -1] = 0
        xi = torch.rand(args.interior, D, generator=gen, dtype=dtype)
        return {"interior": xi, "boundary": torch.cat([xb, x0])}

    return sample


def parse_args(argv=None):
    p = common.pinn_arguments(
        __doc__.splitlines()[0],
        widths=[64],
        interior=3000,
        boundary=500,
        adam_steps=1500,
        lbfgs_steps=1000,
        lr=2e-3,
        figure="heat.png",
    )
    common.second_order_arguments(p, steps=100_000, seconds=120, optimizer="engd")
    p.add_argument("--problem", choices=list(PROBLEMS), default="4+1")
    p.add_argument("--kappa", type=float, default=None, help="default: 0.05 (2+1), 0.25 (4+1)")
    args = p.parse_args(argv)
    if args.kappa is None:
        args.kappa = 0.05 if args.problem == "2+1" else 0.25
    return args


def main(argv=None) -> float:
    return common.run_demo(parse_args(argv), _run)


def _run(args) -> float:
    """Train, report, plot (see :func:`main`)."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = torch.float64
    coords, spec = PROBLEMS[args.problem]
    D = len(coords.split())
    model = common.mlp(D, args.widths).to(dtype)
    heat = taylorc.compile(model, spec, coords=coords, params={"kappa": args.kappa})
    residuals = {
        "interior": heat,
        "boundary": lambda x: model(x) - exact(x, args.problem, args.kappa),
    }
    sample = sampler(args, D, gen, dtype)
    if args.optimizer == "adam-lbfgs":
        points = sample()

        def loss_fn():
            return sum(0.5 * f(points[k]).pow(2).mean() for k, f in residuals.items())

        common.train(
            model, loss_fn, args.adam_steps, args.lbfgs_steps, args.lr, args.quiet, args.seconds
        )
    else:
        opt = common.make_optimizer(args, model, residuals)
        common.train_second_order(opt, sample, args.steps, args.resample, args.seconds, args.quiet)
    xt = torch.rand(20_000, D, dtype=dtype, generator=gen)
    with torch.no_grad():
        err = common.relative_l2(model(xt), exact(xt, args.problem, args.kappa))
    print(f"relative L2 error: {err:.3e}  (20000 fresh points, {time.perf_counter() - t0:.0f} s)")
    if args.figure:
        plot(model, args, D, args.figure)
        print(f"figure saved to {args.figure}")
    return err


def plot(model, args, D: int, path: str) -> None:
    """PINN and |error| on the first two space coordinates (others 0.5) at t = 0, 0.5, 1."""
    plt = common.agg_figure()
    n = 81
    s = torch.linspace(0, 1, n, dtype=torch.float64)
    X, Y = torch.meshgrid(s, s, indexing="ij")
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for col, t in enumerate((0.0, 0.5, 1.0)):
        pts = torch.full((n * n, D), 0.5, dtype=torch.float64)
        pts[:, 0], pts[:, 1], pts[:, -1] = X.reshape(-1), Y.reshape(-1), t
        with torch.no_grad():
            pred = model(pts).reshape(n, n)
        ref = exact(pts, args.problem, args.kappa).reshape(n, n)
        for row, (data, name) in enumerate([(pred, "PINN"), ((pred - ref).abs(), "|error|")]):
            im = axes[row, col].imshow(data.T.numpy(), origin="lower", extent=[0, 1, 0, 1])
            axes[row, col].set_title(f"{name}, t = {t}")
            fig.colorbar(im, ax=axes[row, col])
    fig.suptitle(
        f"({args.problem})-d heat equation, kappa = {args.kappa}, {args.optimizer} "
        f"(taylorc operator {PROBLEMS[args.problem][1]!r})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
