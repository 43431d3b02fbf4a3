"""Natural gradient at equal wall time against the anchors' tables (issue 32).

``python bench/natural_gradient.py RUN [RUN ...] [--seconds S]`` trains each named run
(one after the other, alone on the machine: the budget is wall time) through the demos'
own entry points (``taylorc_contrib.demos.poisson``, ``examples/burgers.py``) and appends
one JSON record per run to ``bench/results/natural-gradient.jsonl``: the run, its flags, the
training budget, the relative L2 error the demo prints, the wall time, the machine, and the
anchor's published number for the same problem and optimiser (GPU, its own budget).

``--cost`` times one step of dense and Woodbury ENGD over P (449, 1,897, 10,065 parameters)
and R (250, 1,000, 3,500 residual rows) instead: where each solve pays. ``--cost --nystrom
L [L ...]`` adds one step of ENGD with the randomized Nyström solve of sketch size L at the
same (P, R) (``solve="nystrom"``, ``nystrom_L_s`` in the record; L is clamped to R).

Runs (``--list`` prints them): 5-d Poisson at 10,065 parameters (5 -> 64 -> 64 -> 48 -> 48
-> 1) with the anchors' best hyperparameters for that net; and ``PROBLEM-OPTIMIZER`` for the
problems 5-d Poisson (449 parameters), (4+1)-d heat, 10-d and 100-d Poisson and Burgers,
the optimisers Adam (then L-BFGS), KFAC*, dense ENGD, ENGD-Woodbury and SPRING (``--all
PROBLEM`` runs one problem's five). Results: docs/kfac.md, "Natural gradient at equal wall
time".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from timing import round_robin

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "natural-gradient.jsonl"
BIG = ["--widths", "64", "64", "48", "48", "--threads", "2"]
# the sample-space runs redraw 800/200 points every step (rla-pinns exp11's N_Omega/N_dOmega):
# the kernel costs R² P for R rows, about 0.3 s a step at R = 1000, P = 10,065 on 2 cores
SMALL_BATCH = ["--interior", "800", "--boundary", "200", "--resample", "1"]

# name -> (demo, flags, anchor: published relative L2 error and where)
RUNS = {
    "poisson5d-449-engd": (
        "poisson",
        ["--optimizer", "engd"],
        "ENGD 5.6e-8 (KFAC paper, 3,000 s GPU)",
    ),
    "poisson5d-449-kfac*": (
        "poisson",
        ["--optimizer", "kfac*"],
        "KFAC* 2.7e-6 (KFAC paper, 3,000 s GPU)",
    ),
    "poisson5d-10065-kfac*": (
        "poisson",
        # kfac-pinns-experiments exp16 (this net), best KFAC* run: λ = 2.8e-10, β = 0.90
        [*BIG, "--optimizer", "kfac*", "--damping", "2.83e-10", "--ema", "0.900"],
        "KFAC* 4.0e-4 (exp16 best run: logged L2 6.3e-4 / 1.58, 3,000 s GPU)",
    ),
    "poisson5d-10065-kfac*-defaults": (
        "poisson",
        # the demo's KFAC* (λ = 2.7e-9, β = 0.937: the 449-parameter net's best run); exp16's
        # values diverged here (FloatingPointError from KFAC*'s quadratic model)
        [*BIG, "--optimizer", "kfac*"],
        "KFAC* 4.0e-4 (exp16 best run: logged L2 6.3e-4 / 1.58, 3,000 s GPU)",
    ),
    "poisson5d-10065-spring": (
        "poisson",
        # rla-pinns exp1 (this net), best SPRING run: λ = 2.1e-10, μ = 0.063
        [*BIG, *SMALL_BATCH, "--optimizer", "spring", "--damping", "2.1e-10"]
        + ["--momentum", "0.063", "--step-rule", "backtracking"],
        "SPRING 1.1e-6 at 7,000 s, 2.2e-6 at 1,355 s (rla-pinns exp1 best run, GPU)",
    ),
    "poisson5d-10065-adam": (
        "poisson",
        [*BIG, "--optimizer", "adam-lbfgs", "--lbfgs-steps", "1000000"],
        "Adam: KFAC paper's 5-d Poisson tables (other nets) 1.1e-3 (449), 4.0e-3 (116,864)",
    ),
    "poisson5d-10065-engd": (
        "poisson",
        [*BIG, "--optimizer", "engd"],  # dense: a 10,065² Gramian and its Cholesky per step
        "dense ENGD: OOM at 116,864 parameters in the KFAC paper",
    ),
    "poisson5d-10065-engd-woodbury-2000": (
        "poisson",
        # the same with 1600/400 points a step: R = 2,000 rows, about 4x the kernel's cost
        [*BIG, "--interior", "1600", "--boundary", "400", "--resample", "1"]
        + ["--optimizer", "engd-woodbury", "--damping", "3.2e-12", "--step-rule", "backtracking"],
        "ENGD-W 6.8e-7 at 7,000 s, 1.4e-6 at 1,341 s (rla-pinns exp1 best run, GPU)",
    ),
    "poisson5d-10065-engd-woodbury": (
        "poisson",
        # rla-pinns exp1 (this net), best ENGD-Woodbury run: λ = 3.2e-12
        [*BIG, *SMALL_BATCH, "--optimizer", "engd-woodbury", "--damping", "3.2e-12"]
        + ["--step-rule", "backtracking"],
        "ENGD-W 6.8e-7 at 7,000 s, 1.4e-6 at 1,341 s (rla-pinns exp1 best run, GPU)",
    ),
}

# The equal-time table (docs/kfac.md, "Every problem, every optimiser"): each problem's
# demo defaults (points, net, threads) for every optimiser; the sample-space ones redraw
# their smaller batch every step with backtracking and rla-pinns exp1's best 5-d values
# (tuned on the 10,065-parameter net, not per problem)
PROBLEMS = {
    "poisson5d-449": ("poisson", []),
    "heat4+1": ("heat", []),
    "poisson10d": ("poisson", ["--dim", "10"]),
    "poisson100d": ("poisson", ["--dim", "100", "--interior", "1000", "--boundary", "200"]),
    "burgers": ("burgers", []),
}
OPTIMIZER_FLAGS = {
    # the demo's Adam steps, then L-BFGS until the budget (its default step count ends
    # the 449-parameter run in 20 s)
    "adam": ["--optimizer", "adam-lbfgs", "--lbfgs-steps", "1000000"],
    "kfac*": ["--optimizer", "kfac*"],
    "engd": ["--optimizer", "engd"],
    "engd-woodbury": ["--optimizer", "engd-woodbury", "--damping", "3.2e-12"],
    "spring": ["--optimizer", "spring", "--damping", "2.1e-10", "--momentum", "0.063"],
}
SAMPLE_SPACE = [*SMALL_BATCH, "--step-rule", "backtracking"]
ANCHORS = {  # published numbers for the same problem (other nets and budgets, GPU)
    "poisson5d-449": "KFAC paper, 5->64->1, 3,000 s: ENGD 5.6e-8, KFAC* 2.7e-6, Adam 1.1e-3",
    "heat4+1": "KFAC paper, 116,864 params, 3,000 s: KFAC 1.3e-5, KFAC* 2.1e-5, Adam 7.5e-4",
    "poisson10d": "KFAC paper, 118,145 params, 3,000 s: KFAC* 4.7e-5, Adam 1.5e-3",
    "poisson100d": "rla-pinns: SPRING below KFAC (768-768-512-512, GPU)",
    "burgers": "ours before: Adam + L-BFGS 2.6e-3 in 847 s",
}
for _problem, (_demo, _flags) in PROBLEMS.items():
    for _opt, _opt_flags in OPTIMIZER_FLAGS.items():
        _extra = SAMPLE_SPACE if _opt in ("engd-woodbury", "spring") else []
        if _demo == "burgers" and _extra:  # its own RAD points: only the step rule
            _extra = ["--step-rule", "backtracking"]
        RUNS[f"{_problem}-{_opt}"] = (_demo, [*_flags, *_opt_flags, *_extra], ANCHORS[_problem])


def _main_of(demo: str):
    if demo == "poisson":
        from taylorc_contrib.demos import poisson

        return poisson.main
    sys.path.insert(0, str(ROOT / "examples"))
    import burgers
    import heat

    return {"burgers": burgers.main, "heat": heat.main}[demo]


def run(name: str, seconds: float | None, seed: int | None = None) -> dict:
    """Train run ``name`` (budget ``seconds``, or the demo's; ``seed``, or the demo's),
    return its record."""
    demo, flags, anchor = RUNS[name]
    flags = [*flags, "--quiet", "--figure", ""]
    if seed is not None:
        flags += ["--seed", str(seed)]
    if seconds is not None:
        flags += ["--seconds", str(seconds)]
    buf = io.StringIO()
    t0 = time.perf_counter()
    diverged = None
    with contextlib.redirect_stdout(buf):
        try:
            err = _main_of(demo)(flags)
        except FloatingPointError as e:  # KFAC*'s quadratic model: a result, not a crash
            err, diverged = None, str(e)
    wall = time.perf_counter() - t0
    printed = re.search(r"relative L2 error: \S+", buf.getvalue())
    return {
        "run": name,
        "flags": flags,
        "seconds": seconds,
        "relative_l2": err,
        "printed": printed.group(0) if printed else None,
        "wall_s": round(wall, 1),
        "diverged": diverged,
        "anchor": anchor,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def step_cost(
    widths: list[int], rows: int, solve: str, repeats: int = 3, sketch: int | None = None
) -> float:
    """Seconds per ENGD step (``solve`` "dense", "woodbury" or "nystrom" with ``sketch``
    columns, fixed lr, eager linearisation) on the 5-d Poisson problem with ``rows`` =
    interior + boundary points (85 % interior), median of ``repeats`` after one warm-up
    step."""
    import statistics

    import taylorc
    from taylorc.optim import ENGD
    from taylorc_contrib.demos import poisson
    from taylorc_contrib.demos.common import boundary_points, mlp

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = mlp(5, widths).to(torch.float64)
    lap = taylorc.compile(model, operator="laplacian")
    residuals = {
        "interior": lambda x: -lap(x) - poisson.source(x),
        "boundary": lambda x: model(x) - poisson.exact(x),
    }
    ni = int(0.85 * rows)
    points = {
        "interior": poisson.interior_points(ni, 5, gen, torch.float64),
        "boundary": boundary_points(rows - ni, 5, torch.float64, gen),
    }
    opt = ENGD(model, residuals, lr=1e-3, damping=1e-8, ema=0.0, solve=solve, sketch_size=sketch)
    times = round_robin({"step": lambda: opt.step(points)}, repeats, warmup=1)["step"]
    return statistics.median(times)


def cost(out: Path, sketches: list[int] = ()) -> None:
    """Per-step time of dense and Woodbury ENGD over parameters P and rows R (both threads),
    and of the Nyström solve at each sketch size of ``sketches`` (key ``nystrom_L_s``)."""
    nets = {449: [64], 1897: [24] * 4, 10065: [64, 64, 48, 48]}
    for P, widths in nets.items():
        for rows in (250, 1000, 3500):
            record = {"P": P, "R": rows, "threads": torch.get_num_threads()}
            for solve in ("dense", "woodbury"):
                record[f"{solve}_s"] = round(step_cost(widths, rows, solve), 4)
            for ell in sketches:
                seconds = step_cost(widths, rows, "nystrom", sketch=ell)
                record[f"nystrom_{ell}_s"] = round(seconds, 4)
            record["date"] = time.strftime("%Y-%m-%d %H:%M")
            print(json.dumps(record), flush=True)
            with out.open("a") as f:
                f.write(json.dumps({"cost": record}) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="names from --list")
    p.add_argument("--seconds", type=float, default=None, help="training budget of each run")
    p.add_argument("--seed", type=int, default=None, help="the demos' seed (default: theirs)")
    p.add_argument("--list", action="store_true")
    p.add_argument(
        "--all", nargs="+", default=[], metavar="PROBLEM", help="every optimiser on these problems"
    )
    p.add_argument("--cost", action="store_true", help="per-step time of dense vs Woodbury ENGD")
    p.add_argument(
        "--nystrom",
        type=int,
        nargs="+",
        default=[],
        metavar="L",
        help="with --cost: also time ENGD's Nyström solve at these sketch sizes",
    )
    p.add_argument("--out", type=Path, default=OUT, help="the JSON-lines file appended to")
    args = p.parse_args(argv)
    if args.nystrom and not args.cost:
        p.error("--nystrom times the Nyström solve in the --cost mode: add --cost")
    if args.cost:
        cost(args.out, args.nystrom)
        return
    names = [*args.runs, *(f"{p}-{o}" for p in args.all for o in OPTIMIZER_FLAGS)]
    if args.list or not names:
        print("\n".join(RUNS))
        return
    for name in names:
        record = run(name, args.seconds, args.seed)
        print(json.dumps(record), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
