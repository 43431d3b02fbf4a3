"""Before/after check of a refactor: taylorc collapsed and standard Taylor against nested
autograd on the PINN-sized (D=5, tanh 64x3, B=4096) and paper-sized (D=50, tanh
768-768-512-512, B=128) Laplacians, float32, one thread, CPU.

One process per tree (each imports its own taylorc); run the trees alternately, so
load changes on a shared machine hit both alike, and compare the ratios to nested:

    for i in 1 2; do for t in OLD NEW; do (cd $t && PYTHONPATH=$t python \\
        /path/to/bench/regression.py) >> out.jsonl; done; done

Prints one JSON line: the tree's taylorc path, per config the ratios
``collapsed/nested`` and ``taylor/nested`` and the median milliseconds of each method
(medians over 3 round-robin rounds of n calls).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import taylorc

try:
    from taylorc_contrib.demos.common import mlp
except ImportError:  # a checkout from before the contrib package
    from taylorc.demos.common import mlp

CONFIGS = [("pinn", 5, [64] * 3, 4096, 15), ("paper", 50, [768, 768, 512, 512], 128, 5)]


def median_time(f, n: int) -> float:
    f()
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(D: int, widths: list[int], B: int, n: int) -> dict:
    torch.manual_seed(0)
    model, x = mlp(D, widths), torch.rand(B, D)
    ops = {
        m: taylorc.compile(model, "laplacian", method=m) for m in ("collapsed", "taylor", "nested")
    }
    times = {m: [] for m in ops}
    for m, op in ops.items():  # past backend="auto"'s warm-up, its compile finished
        with torch.no_grad() if m != "nested" else torch.enable_grad():
            for _ in range((op.config.auto_compile_after or 0) + 1):
                op(x)
        getattr(op, "wait_for_compile", lambda: True)()
    for _ in range(3):  # round robin over the methods
        for m, op in ops.items():
            with torch.no_grad() if m != "nested" else torch.enable_grad():
                times[m].append(median_time(lambda op=op: op(x), n))
    t = {m: statistics.median(v) for m, v in times.items()}
    return {
        "collapsed/nested": t["collapsed"] / t["nested"],
        "taylor/nested": t["taylor"] / t["nested"],
        "ms": {m: 1e3 * v for m, v in t.items()},
    }


def main() -> None:
    torch.set_num_threads(1)
    out = {"taylorc": taylorc.__file__}
    for name, D, widths, B, n in CONFIGS:
        out[name] = measure(D, widths, B, n)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
