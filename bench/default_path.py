"""The quickstart's loop on the default path vs the best path, after warm-up (issue 17, item 4).

The default path is what a user who writes the quickstart gets: ``taylorc.compile(model,
"laplacian")`` and a loop, nothing else (``backend="auto"``: eager for the first
``config.auto_compile_after`` calls, then compiled; the CPU allocator tuned once by
:func:`taylorc.runtime.cpu.auto_tune`). The best path is the fastest one a user can ask for:
``backend="taylorc"`` plus ``taylorc.runtime.cpu.tune_allocator()``. The explicit eager backend is
the third. Per config (``bench/laplacian.py``'s PINN-sized MLP D=5 tanh 64x3 B=4096 and
the paper's D=50 tanh 768-768-512-512 B=128; float32, 2 threads) and mode (``eval``: the
Laplacian under ``no_grad``; ``train``: Laplacian, mean square, backward), a fresh process
times the default path's first call and its warm-up calls one by one, then the best
path's first call, then all three in round robin (``bench/timing.py``). The default is
built first, so its first call includes the process's one-time warm-up, as a user's does;
every child gets an empty inductor cache directory, so compile times are cold.
Writes ``bench/results/default-path-<device>.json``.

    python bench/default_path.py [--configs pinn paper] [--modes eval train] [--repeats 21]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from laplacian import build, make_step
from timing import round_robin

CONFIGS = {
    "pinn": {"D": 5, "widths": [64] * 3, "B": 4096},
    "paper": {"D": 50, "widths": [768, 768, 512, 512], "B": 128},
}


def child(config: str, mode: str, repeats: int, threads: int) -> dict:
    import torch

    import taylorc

    torch.set_num_threads(threads)
    model, x = build(CONFIGS[config], "cpu", torch.float32)  # seeds 0 itself

    def step_of(op, m):
        return make_step("collapsed", op, m, x, mode)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    default_model = copy.deepcopy(model)
    default = taylorc.compile(default_model, "laplacian")  # the quickstart's line
    after = default.config.auto_compile_after
    steps = {"default": step_of(default, default_model)}
    warmup = [timed(steps["default"]) for _ in range(after + 3)]
    default.wait_for_compile()  # the background compile: time the graph it serves
    taylorc.runtime.cpu.tune_allocator()
    best_model = copy.deepcopy(model)
    steps["best"] = step_of(taylorc.compile(best_model, "laplacian", backend="taylorc"), best_model)
    best_first = timed(steps["best"])
    eager_model = copy.deepcopy(model)
    steps["eager"] = step_of(
        taylorc.compile(eager_model, "laplacian", backend="eager"), eager_model
    )
    eager_first = timed(steps["eager"])
    times = round_robin(steps, repeats)
    ratios = [a / b for a, b in zip(times["default"], times["best"])]
    return {
        "default_first_call_s": warmup[0],
        "default_warmup_s": warmup,
        "default_compiled_at_call": after + 1,
        "best_first_call_s": best_first,
        "eager_first_call_s": eager_first,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "times_s": times,
        "default_over_best": statistics.median(ratios),
        "allocator_tuned_by_default": taylorc.runtime.cpu.auto_tune(),
        "explain_tail": default.explain().splitlines()[-3:],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--modes", nargs="+", default=["eval", "train"])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.repeats, args.threads)))
        return
    root = str(Path(__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for config in args.configs:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", config, mode]
            cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache per child
                env["TORCHINDUCTOR_CACHE_DIR"] = cache
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            r = runs[f"{config}/{mode}"] = json.loads(out.stdout.strip().splitlines()[-1])
            med = r["median_s"]
            print(
                f"{config:6s} {mode:5s} default {med['default'] * 1e3:7.2f} ms, best "
                f"{med['best'] * 1e3:7.2f} ms, eager {med['eager'] * 1e3:7.2f} ms; default/best "
                f"x{r['default_over_best']:.2f}; first call: default {r['default_first_call_s']:.2f} s,"
                f" best {r['best_first_call_s']:.2f} s; compile at call "
                f"{r['default_compiled_at_call']}: {r['default_warmup_s'][r['default_compiled_at_call'] - 1]:.1f} s",
                flush=True,
            )
    device = f"cpu-{platform.machine()}"
    path = Path(args.out or Path(__file__).parent / "results" / f"default-path-{device}.json")
    meta = {
        "device": device,
        "torch": __import__("torch").__version__,
        "threads": args.threads,
        "dtype": "float32",
        "configs": CONFIGS,
        "note": (
            "fresh process per (config, mode); default = taylorc.compile(model, 'laplacian') "
            "as written in the quickstart, best = backend='taylorc' + tune_allocator(); "
            "default_over_best is the median of per-round ratios; the machine was shared with "
            "other helpers' jobs, so absolute times are noisy"
        ),
    }
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
