"""PRDP against fixed iteration counts: cumulative solver iterations, wall time, final validation error.

Trains the neural-hybrid heat emulator of ``taylorc_contrib.demos.heat_emulator`` (a conv net
learning the forcing of backward-Euler heat steps, trained through taylorc.prdp's solver)
with three schedules -- PRDP (``Refiner.scaled(K_eps)``), fixed K_eps, fixed K_eps/2 -- in
unrolled and implicit mode, for several seeds, on

- ``2d``: 64^2 nodes, Jacobi (K_eps estimated for a relative residual of 1e-6);
- ``3d``: 33^3 nodes (31^3 unknowns inside the Dirichlet boundary: multigrid needs
  2^k + 1 nodes per axis), multigrid V(2,2)-cycles.

Each seed's data are generated once and shared by all its runs; runs are sequential
on one torch thread. Writes ``bench/results/prdp-<machine>.json`` with every run's
per-epoch record and, per problem and mode, the medians over seeds of
``final_val(PRDP) / final_val(K_eps)`` and the savings in iterations and wall time.
Bhatia, Koehler, Thuerey, "Progressively Refined Differentiable Physics", ICLR 2025.

    python bench/prdp.py [--problems 2d 3d] [--seeds 0 1 2] [--epochs 20] [--train 24]
    python bench/prdp.py --plot bench/results/prdp-cpu-x86_64.json   # docs/img/prdp.png
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from taylorc_contrib.demos.heat_emulator import Config, make_data, train

PROBLEMS = {
    "2d": dict(dim=2, n=64, method="jacobi", channels=8),
    "3d": dict(dim=3, n=33, method="mg", channels=4),
}
SCHEDULES = ["prdp", "k_eps", "k_eps/2"]


def summarize(runs: list[dict]) -> dict:
    """Per (problem, mode): medians over seeds of the PRDP and K_eps/2 ratios to fixed K_eps."""
    out = {}
    keys = {(r["problem"], r["mode"]) for r in runs}
    for problem, mode in sorted(keys):
        by = {}
        for r in runs:
            if (r["problem"], r["mode"]) == (problem, mode):
                by.setdefault(r["seed"], {})[r["schedule"]] = r
        entry = {}
        for sched in ("prdp", "k_eps/2"):
            pairs = [(s[sched], s["k_eps"]) for s in by.values() if sched in s and "k_eps" in s]
            if not pairs:
                continue
            entry[sched] = {
                "val_ratio": statistics.median(a["final_val"] / b["final_val"] for a, b in pairs),
                "iteration_saving": statistics.median(
                    1 - a["iterations"] / b["iterations"] for a, b in pairs
                ),
                "wall_saving": statistics.median(1 - a["wall_s"] / b["wall_s"] for a, b in pairs),
                "seeds": len(pairs),
            }
        out[f"{problem}/{mode}"] = entry
    return out


def plot(results: dict, path: Path, seed: int = 0) -> None:
    """K and the validation nMSE against epochs for one seed: a row per problem, both modes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if r["seed"] == seed]
    problems = sorted({r["problem"] for r in runs})
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 3.6 * len(problems)), squeeze=False)
    for row, problem in zip(axes, problems):
        for r in runs:
            if r["problem"] != problem:
                continue
            style = "-" if r["mode"] == "unrolled" else "--"
            label = f"{r['schedule']} ({r['mode']})"
            ep = [e["epoch"] for e in r["epochs"]]
            row[0].plot(ep, [e["K"] for e in r["epochs"]], style, label=label)
            row[1].semilogy(ep, [e["val"] for e in r["epochs"]], style, label=label)
        row[0].set_title(f"{problem}: solver iterations K per solve")
        row[1].set_title(f"{problem}: 2-step validation nMSE (converged solver)")
        for ax in row:
            ax.set_xlabel("epoch")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=["2d", "3d"], choices=sorted(PROBLEMS))
    p.add_argument("--modes", nargs="+", default=["unrolled", "implicit"])
    p.add_argument("--schedules", nargs="+", default=SCHEDULES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train", type=int, default=24, help="training trajectories")
    p.add_argument("--train-3d", type=int, default=16, help="training trajectories in 3-d")
    p.add_argument("--epochs-3d", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of other problems/seeds already in --out",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--plot", default=None, help="only plot an existing JSON to docs/img/prdp.png")
    args = p.parse_args(argv)
    if args.plot:
        img = Path(__file__).parent.parent / "docs" / "img" / "prdp.png"
        plot(json.loads(Path(args.plot).read_text()), img)
        print(f"wrote {img}")
        return
    torch.set_num_threads(1)
    machine = f"cpu-{platform.machine()}"
    out = Path(args.out or Path(__file__).parent / "results" / f"prdp-{machine}.json")
    results = {
        "machine": machine,
        "threads": 1,
        "note": "2-core machine shared with other jobs; runs sequential",
        "args": vars(args),
        "runs": [],
    }
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        rerun = {(p, s) for p in args.problems for s in args.seeds}
        results["runs"] = [r for r in old["runs"] if (r["problem"], r["seed"]) not in rerun]
        results["args_before"] = old.get("args")
    for problem in args.problems:
        is3 = problem == "3d"
        base = dict(
            PROBLEMS[problem],
            epochs=(args.epochs_3d or args.epochs) if is3 else args.epochs,
            train=args.train_3d if is3 else args.train,
        )
        for seed in args.seeds:
            cfg = Config(**base, seed=seed)
            data = make_data(cfg, torch.Generator().manual_seed(1000 + seed))
            for mode in args.modes:
                for sched in args.schedules:
                    t0 = time.perf_counter()
                    r = train(Config(**base, seed=seed, mode=mode), sched, args.quiet, data)
                    r.update(problem=problem, config={**base, "mode": mode})
                    results["runs"].append(r)
                    print(
                        f"{problem} seed {seed} {mode:8s} {sched:8s} K_eps {r['k_eps']:4d} "
                        f"iterations {r['iterations']:7d} wall {r['wall_s']:7.1f} s "
                        f"final val nMSE {r['final_val']:.3e} ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
                    results["summary"] = summarize(results["runs"])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
