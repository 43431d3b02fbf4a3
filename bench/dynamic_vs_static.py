"""Steady-state cost of the dynamic batch: the same compiled operator with one graph for every
batch size vs graphs specialised to the batch size (``config.dynamic_batch = False``).

``bench/laplacian.py``'s configs (PINN-sized MLP D=5 tanh 64x3 B=4096, the paper's D=50
768-768-512-512 B=128), float32, per backend (eager; taylorc: inductor, where the dynamic
graph's batch dim is unbacked-symbolic). Both operators live in one process on copies of
one model and are timed in round robin (``bench/timing.py``), so each round pairs samples
taken milliseconds apart; the figure is the median of the per-round ratios
dynamic / static, for an evaluation (``no_grad``) and a training step (backward of the
mean square). A ratio within a few percent of 1 is noise on the shared 2-core machine.
Writes ``bench/results/dynamic-vs-static-<device>.json``.

    python bench/dynamic_vs_static.py [--configs pinn paper] [--backends eager taylorc]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from pathlib import Path

from laplacian import build, make_step
from timing import round_robin

CONFIGS = {
    "pinn": {"D": 5, "widths": [64] * 3, "B": 4096},
    "paper": {"D": 50, "widths": [768, 768, 512, 512], "B": 128},
}


def run(config: str, backend: str, repeats: int) -> dict:
    import torch

    import taylorc

    model, x = build(CONFIGS[config], "cpu", torch.float32)  # seeds 0 itself
    steps = {}
    for kind in ("static", "dynamic"):
        m = copy.deepcopy(model)
        op = taylorc.compile(m, "laplacian", backend=backend)
        op.config.dynamic_batch = kind == "dynamic"
        steps[kind] = {mode: make_step("collapsed", op, m, x, mode) for mode in ("eval", "train")}
    out = {}
    for mode in ("eval", "train"):
        times = round_robin({k: v[mode] for k, v in steps.items()}, repeats, warmup=3)
        ratios = [a / b for a, b in zip(times["dynamic"], times["static"])]
        out[mode] = {
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "dynamic_over_static": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4),
        }
        print(
            f"{config:6s} {backend:8s} {mode:5s} static {out[mode]['median_s']['static'] * 1e3:8.2f} ms"
            f"  dynamic {out[mode]['median_s']['dynamic'] * 1e3:8.2f} ms"
            f"  dynamic/static x{out[mode]['dynamic_over_static']:.3f}",
            flush=True,
        )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--backends", nargs="+", default=["eager", "taylorc"])
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    import taylorc

    torch.set_num_threads(args.threads)
    taylorc.runtime.cpu.tune_allocator()
    results = {f"{c}/{b}": run(c, b, args.repeats) for c in args.configs for b in args.backends}
    device = f"cpu-{platform.machine()}"
    path = Path(args.out or Path(__file__).parent / "results" / f"dynamic-vs-static-{device}.json")
    meta = {
        "device": device,
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "allocator": "taylorc.runtime.cpu.tune_allocator",
        "note": "one process; the machine was shared with other helpers' jobs (absolute times noisy)",
    }
    path.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
