"""Cost of a dict of operators against its most expensive single entry (one propagation).

The Burgers residual needs u, u_t, u_x, u_xx; taylorc computes all four from one
propagation sharing the value and the first-order coefficients. This benchmark
times, in one run and on the same network and points (in round robin), each single entry
and the dict, evaluation and training step (forward + backward of the mean squared
outputs), and reports dict / max(single). Writes ``bench/results/operators-<device>.json``.

    python bench/operators.py [--batch 8192] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import taylorc
from taylorc.demos.common import mlp

ENTRIES = {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}


def round_robin(fns: dict, repeats: int) -> dict:
    """(median, min) seconds per function, timed in rotating order (load changes hit all alike)."""
    for fn in fns.values():
        fn()
        fn()
    names, times = list(fns), {k: [] for k in fns}
    for i in range(repeats):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(t), min(t)) for k, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--widths", type=int, nargs="+", default=[32] * 5)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = mlp(2, args.widths).to(dtype)
    xt = torch.rand(args.batch, 2, dtype=dtype)
    specs = {**{k: {k: v} for k, v in ENTRIES.items()}, "dict": ENTRIES}
    results = {
        "device": f"cpu-{platform.machine()}",
        "batch": args.batch,
        "widths": args.widths,
        "runs": {},
    }
    evals, steps = {}, {}
    for name, spec in specs.items():
        op = taylorc.compile(model, spec, coords="x t")

        def evaluate(op=op):
            with torch.no_grad():
                return op(xt)

        def step(op=op):
            model.zero_grad(set_to_none=True)
            sum(v.pow(2).mean() for v in op(xt).values()).backward()

        evals[name], steps[name] = evaluate, step
    eval_s, train_s = round_robin(evals, args.repeats), round_robin(steps, args.repeats)
    for name in specs:
        results["runs"][name] = {
            "eval_s": eval_s[name][0],
            "train_s": train_s[name][0],
            "eval_min_s": eval_s[name][1],
            "train_min_s": train_s[name][1],
        }
        print(
            f"{name:6s} eval {1e3 * eval_s[name][0]:8.2f} ms (min {1e3 * eval_s[name][1]:6.2f})"
            f"   train {1e3 * train_s[name][0]:8.2f} ms (min {1e3 * train_s[name][1]:6.2f})"
        )
    for mode in ("eval", "train"):
        for stat in ("s", "min_s"):
            key = f"{mode}_{stat}"
            worst = max(results["runs"][k][key] for k in ENTRIES)
            ratio = results["runs"]["dict"][key] / worst
            label = "median" if stat == "s" else "min"
            results[f"dict_over_max_single_{mode}" + ("" if stat == "s" else "_min")] = ratio
            print(f"{mode} ({label}): dict / most expensive single entry = {ratio:.2f}")
    out = Path(__file__).parent / "results" / f"operators-{results['device']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
