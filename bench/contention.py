"""The default path beside a busy neighbour (issue 33, item 3): quiet time against contended.

``python bench/contention.py [--calls 40]`` times the default path's Laplacian
(``taylorc.compile(model, "laplacian")``, tanh 64 x 3, D = 5, after warm-up and its
background compile) for float32 and float64 at B = 333 and 4096: first on the quiet machine,
then while a second Python process multiplies 1024 x 1024 float32 matrices in a loop with
torch's default thread count (the issue's neighbour). Median of ``--calls`` calls each, and
the contended / quiet ratio (the acceptance: <= 2.5x). Each phase times two variants of
every operator in turn (``timing.round_robin``): ``default`` with ``op.config.contention =
"off"`` (the user's thread count throughout, as before the policy) and ``policy`` with
``"auto"`` (:mod:`taylorc.runtime.threads`: fewer threads while other processes keep the
cores busy); ``policy_lowered_quiet_contended`` counts the policy's calls run with fewer
threads in each phase (of ``--calls`` + 2 warm-ups), ``policy_vs_default_quiet`` is the
acceptance's ratio. The warm-up also compiles each graph's one-thread variant (Dynamo guards
on the thread count), so no phase times a compile. Run it alone; an OpenMP policy to try
goes in the environment (``OMP_NUM_THREADS=1 python bench/contention.py --tag one-thread``),
and the file records it. Writes
``bench/results/contention-cpu-<arch>.json``; results in docs/benchmarks.md, "Contention".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from timing import round_robin

import taylorc
from taylorc.runtime import threads

ROOT = Path(__file__).resolve().parents[1]
NEIGHBOUR = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def operators() -> dict:
    """(dtype name, B) -> (compiled Laplacian, points), warmed up and compiled."""
    torch.manual_seed(0)
    out = {}
    for dtype in (torch.float32, torch.float64):
        layers, d = [], 5
        for w in (64, 64, 64):
            layers += [torch.nn.Linear(d, w), torch.nn.Tanh()]
            d = w
        model = torch.nn.Sequential(*layers, torch.nn.Linear(d, 1)).to(dtype)
        for B in (333, 4096):
            lap, x = taylorc.compile(model, operator="laplacian"), torch.rand(B, 5, dtype=dtype)
            with torch.no_grad():
                for _ in range(60):  # past backend="auto"'s warm-up
                    lap(x)
                lap.wait_for_compile()
                lap.config.contention = "busy"  # the one-thread variant, compiled now
                for _ in range(3):
                    lap(x)
                lap.wait_for_compile()  # the variant compiles in the background
            out[(str(dtype).split(".")[1], B)] = (lap, x)
    return out


VARIANTS = {"default": "off", "policy": "auto"}  # name -> op.config.contention


def median_calls(lap, x, calls: int, variants: dict) -> dict:
    """``{variant: (median seconds of one call, calls the policy lowered)}`` over ``calls``
    rounds of the ``variants`` in turn, after two more warm-ups."""

    def call(mode):
        def run():
            lap.config.contention = mode
            return lap(x)

        return run

    lowered = threads.DETECTOR.lowered
    with torch.no_grad():
        times = round_robin({k: call(mode) for k, mode in variants.items()}, calls)
    lowered = threads.DETECTOR.lowered - lowered
    return {k: (statistics.median(v), lowered if k == "policy" else 0) for k, v in times.items()}


def row(key, quiet: dict, busy: dict) -> dict:
    """One results row: per variant quiet and contended ms, their ratio, and the contended
    time over the default's quiet time (the acceptance: <= 2.5x)."""
    out = {"dtype": key[0], "B": key[1]}
    base = quiet["default" if "default" in quiet else "policy"][0]  # the same when quiet
    for k in quiet:
        prefix = "" if k == "default" else f"{k}_"
        out[f"{prefix}quiet_ms"] = round(1e3 * quiet[k][0], 3)
        out[f"{prefix}contended_ms"] = round(1e3 * busy[k][0], 3)
        out[f"{prefix}ratio"] = round(busy[k][0] / quiet[k][0], 2)
        if k != "default" or len(quiet) == 1:
            out[f"{prefix}vs_default_quiet"] = round(busy[k][0] / base, 2)
            out[f"{prefix}lowered_quiet_contended"] = [quiet[k][1], busy[k][1]]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--tag", default="", help="suffix of the results file (e.g. the policy tried)")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="time these (alone: a default call's spinning OpenMP threads then never share "
        "the cores with a policy call)",
    )
    args = p.parse_args(argv)
    variants = {k: VARIANTS[k] for k in args.variants}
    ops = operators()
    quiet = {k: median_calls(*v, args.calls, variants) for k, v in ops.items()}
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        time.sleep(3)  # the neighbour at full speed
        busy = {k: median_calls(*v, args.calls, variants) for k, v in ops.items()}
    finally:
        neighbour.kill()
    rows = [row(k, quiet[k], busy[k]) for k in ops]
    result = {
        "threads": torch.get_num_threads(),
        "policy": {"interval_s": threads.INTERVAL, "margin_cores": threads.MARGIN},
        "variants": args.variants,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        # the OpenMP policy this process ran under (set before torch starts its threads)
        "env": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        },
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    tag = f"-{args.tag}" if args.tag else ""
    out = ROOT / "bench" / "results" / f"contention-cpu-{platform.machine()}{tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
