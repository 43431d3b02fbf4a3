"""PRDP on a 2-d heat neural emulator: train through a Jacobi solve with progressively refined K.

The model is ``u^{n+1} = Solve_K(A, u^n + net(u^n))`` with ``A`` the backward-Euler heat
matrix of ``"u - 1e-3*u_xx - 1e-3*u_yy"`` on 64^2 nodes (taylorc.prdp.assemble); the conv
net learns an unknown forcing from reference trajectories (exact sparse LU solves; see
``taylorc/demos/heat_emulator.py``). Three runs with the same data and epochs: PRDP
(``Refiner.scaled(K_eps)``), fixed K_eps (the converged solve) and a fixed small K.
Prints each run's 2-step validation nMSE (converged solver) and relative L2 error against
the reference trajectories, the cumulative solver iterations and the wall time, and saves
a figure of K and the validation metric against epochs.

    python examples/prdp_heat.py [--epochs 20 --n 64 --train 24 --mode unrolled|implicit]
"""

from __future__ import annotations

import argparse
import math

import torch

from taylorc_contrib.demos.common import agg_figure, save_figure
from taylorc_contrib.demos.heat_emulator import Config, make_data, train


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n", type=int, default=64, help="nodes per axis")
    p.add_argument("--train", type=int, default=24, help="training trajectories")
    p.add_argument("--mode", default="unrolled", choices=["unrolled", "implicit"])
    p.add_argument("--small-k", type=int, default=20, help="the fixed small K to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default="prdp_heat.png", help="where to save ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # sparse products this size gain nothing from threads
    cfg = Config(n=args.n, epochs=args.epochs, train=args.train, mode=args.mode, seed=args.seed)
    data = make_data(cfg, torch.Generator().manual_seed(1000 + args.seed))
    runs = {}
    for sched in ("prdp", "k_eps", args.small_k):
        r = runs[str(sched)] = train(cfg, sched, args.quiet, data)
        print(
            f"{str(sched):6s}: 2-step val nMSE {r['final_val']:.3e}, relative L2 error (its root) "
            f"{math.sqrt(r['final_val']):.3e}, {r['iterations']} solver iterations, "
            f"{r['wall_s']:.1f} s (K_eps = {r['k_eps']})"
        )
    prdp, ref = runs["prdp"], runs["k_eps"]
    print(
        f"relative L2 error: {math.sqrt(prdp['final_val']):.3e}  (PRDP; fixed K_eps "
        f"{math.sqrt(ref['final_val']):.3e}; iterations -{1 - prdp['iterations'] / ref['iterations']:.0%}, "
        f"wall -{1 - prdp['wall_s'] / ref['wall_s']:.0%})"
    )
    if args.figure:
        plot(runs, args.figure)
        print(f"figure saved to {args.figure}")
    return math.sqrt(prdp["final_val"])


def plot(runs: dict, path: str) -> None:
    """K, validation nMSE and cumulative iterations against epochs, one line per run."""
    plt = agg_figure()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, r in runs.items():
        ep = [e["epoch"] for e in r["epochs"]]
        label = {"prdp": "PRDP", "k_eps": f"fixed K_eps = {r['k_eps']}"}.get(
            name, f"fixed K = {name}"
        )
        axes[0].plot(ep, [e["K"] for e in r["epochs"]], label=label)
        axes[1].semilogy(ep, [e["val"] for e in r["epochs"]], label=label)
        axes[2].plot(ep, [e["iterations"] for e in r["epochs"]], label=label)
    for ax, title in zip(
        axes, ["solver iterations K", "2-step validation nMSE", "cumulative iterations"]
    ):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
