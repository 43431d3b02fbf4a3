"""Physics-informed DeepONet for diffusion-reaction, trained with taylorc's ZCS derivatives.

The operator-learning benchmark of Wang, Wang, Perdikaris (Sci. Adv. 2021), of
the ZCS paper (Leng et al., J. Comput. Phys. 2024, Sec. 4.2) and of DeepXDE's
PI-DeepONet examples: learn the map from the source f to the solution u of

    u_t = D u_xx + k u^2 + f(x),   (x, t) in [0, 1]^2,   u(x, 0) = 0,  u(0, t) = u(1, t) = 0,

with D = k = 0.01 and f drawn from a Gaussian random field (squared-exponential
kernel, length scale 0.2) sampled at 50 sensors. No solution data is used:
the loss is the mean squared PDE residual over M functions x N collocation
points per step; the initial and boundary data are built into the network
(u = x (1 - x) t * DeepONet(f)(x, t)). The residual's terms u, u_t, u_xx come
from ONE compiled operator (``method="zcs"``, ``wrt=1``). The reference for
held-out functions is a Crank-Nicolson finite-difference solver written here
(the second-order u_xx matrix from ``taylorc.operators.discretize``). Prints the
relative L2 error on the test functions and saves a figure.

Optimiser: Adam with cosine decay, the one this model has. The natural-gradient
optimisers (KFAC, ENGD, SPRING) read their curvature from the layers of the Taylor
graph, and the branch MLP, applied to the M functions rather than the N points, is not
one of them (they stop with a typed error naming ``net.branch.*``); at this batch the
sample-space kernel would also cost R² P ≈ 3e12 multiply-adds a step (R = 10,000 rows,
P = 28,417). docs/kfac.md, "Every example on its optimiser".

    python examples/deeponet_diffusion_reaction.py [--steps 8000 --functions 20 --points 500]
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

import taylorc
from taylorc_contrib.demos.common import agg_figure, relative_l2
from taylorc_contrib.models import DeepONet

DIFFUSION, REACTION = 0.01, 0.01


def gaussian_random_field(n: int, grid: torch.Tensor, length: float, gen) -> torch.Tensor:
    """n samples of a zero-mean GRF with kernel exp(-|x-y|^2 / (2 length^2)) on ``grid``: (n, G)."""
    d = grid[:, None] - grid[None, :]
    K = torch.exp(-0.5 * (d / length) ** 2) + 1e-10 * torch.eye(len(grid), dtype=grid.dtype)
    L = torch.linalg.cholesky(K)
    return torch.randn(n, len(grid), dtype=grid.dtype, generator=gen) @ L.T


def interpolate(values: torch.Tensor, grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values (M, G)`` on a uniform ``grid`` at ``x (N,)``: (M, N)."""
    h = grid[1] - grid[0]
    i = ((x - grid[0]) / h).floor().clamp(0, len(grid) - 2).long()
    w = (x - grid[i]) / h
    return values[:, i] * (1 - w) + values[:, i + 1] * w


def solve_fd(f: torch.Tensor, grid: torch.Tensor, steps: int, times: int) -> torch.Tensor:
    """Crank-Nicolson for diffusion, explicit reaction and source: ``f (M, G)`` -> ``u (M, times, G)``.

    Second order in space; the reaction term k u^2 is small (k = 0.01), so its
    first-order explicit treatment with ``steps`` time steps is far below the
    network's error.
    """
    G = len(grid)
    lap = taylorc.operators.discretize("u_xx", [grid], coords="x").to_dense()
    lap[[0, -1]] = 0.0  # boundary rows: u stays 0
    dt = 1.0 / steps
    eye = torch.eye(G, dtype=f.dtype)
    lhs = torch.linalg.lu_factor(eye - 0.5 * dt * DIFFUSION * lap)
    rhs = eye + 0.5 * dt * DIFFUSION * lap
    src = f.clone()
    src[:, [0, -1]] = 0.0
    u = torch.zeros_like(f)
    out = [u]
    every = steps // (times - 1)
    for n in range(1, steps + 1):
        b = u @ rhs.T + dt * (REACTION * u**2 + src)
        b[:, [0, -1]] = 0.0
        u = torch.linalg.lu_solve(*lhs, b.T).T
        if n % every == 0:
            out.append(u)
    return torch.stack(out, 1)


class HardConstrained(torch.nn.Module):
    """``u = x (1 - x) t * net(f)(x, t)``: zero initial and boundary data by construction."""

    def __init__(self, net: DeepONet):
        super().__init__()
        self.net = net

    def forward(self, sensors: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        x, t = points[:, 0], points[:, 1]
        return (x * (1 - x) * t) * self.net(sensors, points)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8000, help="Adam iterations")
    p.add_argument("--functions", type=int, default=20, help="M, functions per step")
    p.add_argument("--points", type=int, default=500, help="N, collocation points per step")
    p.add_argument("--train-functions", type=int, default=1000)
    p.add_argument("--test-functions", type=int, default=20)
    p.add_argument("--sensors", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method", default="zcs", help="zcs, collapsed, auto or nested (FuncLoop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default="deeponet_diffusion_reaction.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = torch.float32
    fine = torch.linspace(0, 1, 101, dtype=torch.float64)
    sensors = torch.linspace(0, 1, args.sensors, dtype=torch.float64)
    fields = gaussian_random_field(args.train_functions + args.test_functions, fine, 0.2, gen)
    train_f, test_f = fields[: args.train_functions], fields[args.train_functions :]

    model = HardConstrained(DeepONet(args.sensors, 2, width=64, depth=3, basis=64)).to(dtype)
    terms = taylorc.compile(
        model, {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}, coords="x t", wrt=1, method=args.method
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    bar = tqdm(range(args.steps), desc="PI-DeepONet", mininterval=2.0, disable=args.quiet)
    for _ in bar:
        idx = torch.randint(0, args.train_functions, (args.functions,), generator=gen)
        pts = torch.rand(args.points, 2, generator=gen, dtype=torch.float64)
        branch = interpolate(train_f[idx], fine, sensors).to(dtype)
        source = interpolate(train_f[idx], fine, pts[:, 0]).to(dtype)  # (M, N)
        d = terms(branch, pts.to(dtype))
        residual = d["u_t"] - DIFFUSION * d["u_xx"] - REACTION * d["u"] ** 2 - source
        loss = residual.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)

    # held-out functions against the finite-difference solution on the 101 x 101 grid
    reference = solve_fd(test_f, fine, steps=2000, times=101)  # (M, t, x)
    tt, xx = torch.meshgrid(fine, fine, indexing="ij")
    grid_pts = torch.stack([xx.reshape(-1), tt.reshape(-1)], 1)
    with torch.no_grad():
        pred = model(interpolate(test_f, fine, sensors).to(dtype), grid_pts.to(dtype))
    pred = pred.double().reshape(reference.shape)
    err = relative_l2(pred, reference)
    seconds = time.perf_counter() - t_start
    print(
        f"PI-DeepONet diffusion-reaction ({args.method}): relative L2 error: {err:.3e} on "
        f"{args.test_functions} held-out functions, {args.steps} steps in {seconds:.0f} s"
    )
    if args.figure:
        plt = agg_figure()
        fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
        for a, data, title in zip(
            ax,
            [reference[0], pred[0], (pred[0] - reference[0]).abs()],
            ["finite differences", "PI-DeepONet", "|error|"],
        ):
            im = a.imshow(data, origin="lower", extent=[0, 1, 0, 1], aspect="auto")
            a.set(title=title, xlabel="x", ylabel="t")
            fig.colorbar(im, ax=a)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
    return err


if __name__ == "__main__":
    main()
