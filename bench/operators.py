"""Cost of a dict of operators against its most expensive single entry (one propagation).

The Burgers residual needs u, u_t, u_x, u_xx; taylorc computes all four from one
propagation sharing the value and the first-order coefficients. This benchmark
times, in one run and on the same network and points (in round robin), each single entry
and the dict, evaluation and training step (forward + backward of the mean squared
outputs), and reports dict / max(single) as the median of the per-round ratios (each
round times every spec once, back to back) next to the ratio of medians and of minima. Writes ``bench/results/operators-<device>.json``.

    python bench/operators.py [--batch 8192] [--repeats 31] [--backend eager]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from functools import partial
from pathlib import Path

import torch
from timing import round_robin, wall_time

import taylorc
from taylorc_contrib.demos.common import mlp

ENTRIES = {"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--widths", type=int, nargs="+", default=[32] * 5)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=5, help="calls per timed sample")
    p.add_argument("--backend", default="eager", choices=["eager", "inductor", "taylorc"])
    p.add_argument("--default-allocator", action="store_true", help="skip tune_allocator()")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        taylorc.runtime.cpu.tune_allocator()  # as recommended on the CPU (bench/cpu_peers.py)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = mlp(2, args.widths).to(dtype)
    xt = torch.rand(args.batch, 2, dtype=dtype)
    specs = {**{k: {k: v} for k, v in ENTRIES.items()}, "dict": ENTRIES}
    results = {
        "device": f"cpu-{platform.machine()}",
        "batch": args.batch,
        "widths": args.widths,
        "backend": args.backend,
        "repeats": args.repeats,
        "calls_per_sample": args.calls,
        "threads": args.threads,
        "allocator": "glibc default"
        if args.default_allocator
        else "taylorc.runtime.cpu.tune_allocator",
        "runs": {},
    }
    evals, steps = {}, {}
    for name, spec in specs.items():
        op = taylorc.compile(model, spec, coords="x t", backend=args.backend)

        def evaluate(op=op):
            with torch.no_grad():
                return op(xt)

        def step(op=op):
            model.zero_grad(set_to_none=True)
            sum(v.pow(2).mean() for v in op(xt).values()).backward()

        evals[name], steps[name] = evaluate, step
    timings = {
        "eval": round_robin(evals, args.repeats, partial(wall_time, calls=args.calls)),
        "train": round_robin(steps, args.repeats, partial(wall_time, calls=args.calls)),
    }
    for name in specs:
        results["runs"][name] = {
            f"{mode}_{stat}": fn(timings[mode][name])
            for mode in timings
            for stat, fn in (("s", statistics.median), ("min_s", min))
        }
        r = results["runs"][name]
        print(
            f"{name:6s} eval {1e3 * r['eval_s']:8.2f} ms (min {1e3 * r['eval_min_s']:6.2f})"
            f"   train {1e3 * r['train_s']:8.2f} ms (min {1e3 * r['train_min_s']:6.2f})"
        )
    for mode, times in timings.items():
        worst = max(ENTRIES, key=lambda k: statistics.median(times[k]))
        paired = [d / w for d, w in zip(times["dict"], times[worst])]
        summary = {
            "most_expensive_single": worst,
            "ratio_of_medians": statistics.median(times["dict"]) / statistics.median(times[worst]),
            "ratio_of_mins": min(times["dict"]) / min(times[worst]),
            "median_paired_ratio": statistics.median(paired),
            "paired_ratio_quartiles": statistics.quantiles(paired, n=4),
        }
        results[f"dict_over_max_single_{mode}"] = summary
        print(
            f"{mode}: dict / {worst}: median of per-round ratios {summary['median_paired_ratio']:.3f}"
            f" (quartiles {summary['paired_ratio_quartiles'][0]:.3f}-"
            f"{summary['paired_ratio_quartiles'][2]:.3f}), ratio of medians"
            f" {summary['ratio_of_medians']:.3f}, of minima {summary['ratio_of_mins']:.3f}"
        )
    out = Path(__file__).parent / "results" / f"operators-{results['device']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
