"""Inverse problem through a multigrid solve: recover a diffusion coefficient network kappa(x, y).

Observations are solutions of ``u - kappa(x, y) (u_xx + u_yy) = f`` (zero Dirichlet data,
33^2 nodes) for 16 random smooth sources f, solved exactly with scipy; kappa_true is a
bump on 0.02. A small MLP kappa(x, y) = 0.02 exp(net(x, y)) is fitted by Adam to the
observations, differentiating through ``taylorc.prdp.Solver(assemble(spec,
coefficients={"kappa": net}), "mg", "implicit")`` (the adjoint solve gives the gradient
w.r.t. the matrix values, the chain rule carries it to the network). Two runs: PRDP (K
raised by ``Refiner.scaled(K_eps)`` on the held-out misfit) and fixed K_eps. Prints the
relative L2 error of kappa on the interior nodes and the cumulative V-cycles of each run;
saves a figure.

    python examples/prdp_inverse.py [--epochs 30 --steps 10 --n 33]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.sparse.linalg as sla
import torch
from torch import nn

from taylorc.operators import grid_nodes
from taylorc.prdp import Refiner, Solver, assemble, estimate_k_eps
from taylorc_contrib.demos.common import agg_figure, mlp, save_figure

SPEC = "u - kappa*(u_xx + u_yy)"


def kappa_true(x: torch.Tensor) -> torch.Tensor:
    """``(N, 2) -> (N,)``: 0.02 (1 + 0.8 exp(-|x - (0.6, 0.4)|^2 / 0.04))."""
    r2 = ((x - torch.tensor([0.6, 0.4], dtype=x.dtype)) ** 2).sum(1)
    return 0.02 * (1 + 0.8 * torch.exp(-r2 / 0.04))


class Kappa(nn.Module):
    """``kappa(x) = 0.02 exp(net(x))``: positive, 0.02 at initialisation scale."""

    def __init__(self):
        super().__init__()
        self.net = mlp(2, [16, 16]).double()
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return 0.02 * torch.exp(self.net(x)[:, 0])


def sources(count: int, n: int, gen) -> torch.Tensor:
    """``(count, n*n)`` smooth random fields, zero on the boundary (Dirichlet data)."""
    s = torch.linspace(0, 1, n, dtype=torch.float64)
    f = torch.zeros(count, n, n, dtype=torch.float64)
    for k in range(1, 5):
        for m in range(1, 5):
            a = torch.randn(count, 1, 1, generator=gen, dtype=torch.float64) / (k + m)
            f += a * torch.sin(math.pi * k * s)[:, None] * torch.sin(math.pi * m * s)[None]
    return f.reshape(count, -1)


def fit(schedule, grid, f, u_obs, f_val, u_val, args, quiet):
    """Fit kappa; returns (model, record of (epoch, K, val misfit), iterations, seconds)."""
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    kappa = Kappa()
    opt = torch.optim.Adam(kappa.parameters(), lr=args.lr)

    def system():
        return assemble(SPEC, grid, coords="x y", coefficients={"kappa": kappa})

    with torch.no_grad():
        k_eps = estimate_k_eps(Solver(system(), "mg"), tol=1e-8, iters=12)
    refiner = Refiner.scaled(k_eps) if schedule == "prdp" else None
    K = refiner.k if refiner else k_eps
    record, iterations, t0 = [], 0, time.perf_counter()
    for epoch in tqdm(range(args.epochs), desc=schedule, disable=quiet):
        for _ in range(args.steps):
            u = Solver(system(), "mg", "implicit")(f, iters=K)
            loss = ((u - u_obs) ** 2).sum() / (u_obs**2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            iterations += K
        with torch.no_grad():
            uv = Solver(system(), "mg")(f_val, iters=k_eps)
            val = (((uv - u_val) ** 2).sum() / (u_val**2).sum()).item()
        record.append((epoch, K, val))
        if refiner is not None:
            K = refiner.step(val)
    return kappa, record, iterations, time.perf_counter() - t0, k_eps


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="Adam steps per epoch")
    p.add_argument("--n", type=int, default=33, help="nodes per axis (2^k + 1)")
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default="prdp_inverse.png", help="where to save ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    grid = [torch.linspace(0, 1, args.n, dtype=torch.float64)] * 2
    nodes = grid_nodes(grid)
    gen = torch.Generator().manual_seed(args.seed)
    f_all = sources(20, args.n, gen)
    A = assemble(SPEC, grid, coords="x y", coefficients={"kappa": kappa_true}).to_scipy().tocsc()
    u_all = torch.from_numpy(sla.splu(A).solve(f_all.numpy().T).T.copy())
    f, u_obs, f_val, u_val = f_all[:16], u_all[:16], f_all[16:], u_all[16:]
    inner = ((nodes > 0) & (nodes < 1)).all(1)
    truth = kappa_true(nodes)[inner]
    results = {}
    for schedule in ("prdp", "k_eps"):
        kappa, record, its, secs, k_eps = fit(
            schedule, grid, f, u_obs, f_val, u_val, args, args.quiet
        )
        with torch.no_grad():
            err = ((kappa(nodes)[inner] - truth).norm() / truth.norm()).item()
        results[schedule] = dict(kappa=kappa, record=record, iterations=its, seconds=secs, err=err)
        print(
            f"{schedule:6s}: kappa relative L2 error {err:.3e}, {its} V-cycles (K_eps = {k_eps}), "
            f"final K {record[-1][1]}, held-out misfit {record[-1][2]:.2e}, {secs:.1f} s"
        )
    r, ref = results["prdp"], results["k_eps"]
    print(
        f"relative L2 error: {r['err']:.3e}  (kappa with PRDP, {r['iterations']} V-cycles; fixed "
        f"K_eps: {ref['err']:.3e}, {ref['iterations']} V-cycles)"
    )
    if args.figure:
        plot(results, nodes, args.n, args.figure)
        print(f"figure saved to {args.figure}")
    return r["err"]


def plot(results, nodes, n, path):
    plt = agg_figure()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    with torch.no_grad():
        est = results["prdp"]["kappa"](nodes).reshape(n, n)
    true = kappa_true(nodes).reshape(n, n)
    for ax, data, title in [
        (axes[0], true, "kappa true"),
        (axes[1], est, "kappa recovered (PRDP)"),
        (axes[2], (est - true).abs(), "|error|"),
    ]:
        im = ax.imshow(data.T.numpy(), origin="lower", extent=[0, 1, 0, 1])
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    for name, r in results.items():
        rec = np.array(r["record"])
        axes[3].plot(rec[:, 0], rec[:, 1], label=f"{name}: K")
    axes[3].set_xlabel("epoch")
    axes[3].set_title("V-cycles per solve")
    axes[3].legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
