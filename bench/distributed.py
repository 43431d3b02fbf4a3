"""Distributed KFAC* (taylorc.optim.KFAC under torch.distributed) against one process.

Time per KFAC* step on rank 0 (and the slowest rank) for the 5-d Poisson problem of
Dangel, Müller, Zeinhofer (NeurIPS 2024, Sec. 4): 5 -> 64 -> 1 tanh, float64,
N_Ω = 3000 and N_∂ = 500 points, the paper's KFAC* λ = 2.7e-9, β = 0.937. Runs,
alternated ``--repeats`` times (each a fresh process, ``OMP_NUM_THREADS=1``):

- ``single``: one process, all N points (the single-process path: no collectives);
- ``2 ranks``: ``torchrun --nproc_per_node=2`` (gloo), N/2 points a rank, inversion
  split over the ranks (the default);
- ``2 ranks, no split``: the same with ``split_inversion=False``.

The first ``--skip`` steps (capture, coverage check, KFAC*'s first step) are left
out of the times. Every run also reports the loss after its last step: the
distributed runs must match the single one (same global points, same steps).
Results: ``bench/results/distributed-kfac-<device>.json``.

    python bench/distributed.py --steps 30 --repeats 3
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

ROOT = Path(__file__).parent
DEVICE = f"cpu-{platform.machine()}"
RESULTS = ROOT / "results" / f"distributed-kfac-{DEVICE}.json"
RUNS = {"single": (1, True), "2 ranks": (2, True), "2 ranks, no split": (2, False)}


def worker(args) -> None:
    """One rank (or the single process): KFAC* steps, then a ``RESULT {json}`` line."""
    import torch
    import torch.distributed as dist

    import taylorc
    from taylorc_contrib.demos.common import boundary_points, mlp
    from taylorc_contrib.demos.poisson import exact, interior_points, source

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    dtype = torch.float64
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = mlp(5, [64]).to(dtype)
    points = {
        "interior": interior_points(args.interior, 5, gen, dtype).chunk(world)[rank],
        "boundary": boundary_points(args.boundary, 5, dtype, gen).chunk(world)[rank],
    }
    lap = taylorc.compile(model, "laplacian")
    residuals = {
        "interior": lambda x: -lap(x) - source(x),
        "boundary": lambda x: model(x) - exact(x),
    }
    opt = taylorc.optim.KFAC(
        model, residuals, lr="auto", damping=2.7e-9, ema=0.937, split_inversion=args.split == "on"
    )
    times, loss = [], None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = sum(opt.step(points).values())
        times.append(time.perf_counter() - t0)
    times = times[args.skip :]
    per_rank = [times]
    if distributed:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, times)
        dist.destroy_process_group()
    if rank == 0:
        result = dict(
            ranks=world,
            rank0_ms_median=1e3 * statistics.median(per_rank[0]),
            rank0_ms_mean=1e3 * statistics.fmean(per_rank[0]),
            slowest_rank_ms_median=1e3 * max(statistics.median(t) for t in per_rank),
            loss_before_last_step=loss,
        )
        print("RESULT " + json.dumps(result), flush=True)


def launch(args, ranks: int, split: bool) -> dict:
    """Run one configuration in fresh processes; returns the worker's result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT.parent))
    opts = ["--worker", "--steps", str(args.steps), "--skip", str(args.skip)]
    opts += ["--interior", str(args.interior), "--boundary", str(args.boundary)]
    opts += ["--split", "on" if split else "off"]
    cmd = [sys.executable, __file__, *opts]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={ranks}", __file__, *opts]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    return json.loads(lines[0][len("RESULT ") :])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the times")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--interior", type=int, default=3000)
    p.add_argument("--boundary", type=int, default=500)
    p.add_argument("--note", help="stored with the results (e.g. the machine's load)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--split", default="on", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()
    runs = {name: [] for name in RUNS}
    for rep in range(args.repeats):  # alternate the configurations: load drifts
        for name, (ranks, split) in RUNS.items():
            runs[name].append(launch(args, ranks, split))
            print(rep, name, runs[name][-1], flush=True)
    single = statistics.median(r["rank0_ms_median"] for r in runs["single"])
    summary = {
        name: dict(
            rank0_ms_median=statistics.median(r["rank0_ms_median"] for r in rs),
            speedup_vs_single=single / statistics.median(r["rank0_ms_median"] for r in rs),
            loss_before_last_step=[r["loss_before_last_step"] for r in rs],
        )
        for name, rs in runs.items()
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            dict(
                problem="5-d Poisson, 5 -> 64 -> 1 tanh, float64, KFAC* (λ 2.7e-9, β 0.937)",
                points=dict(interior=args.interior, boundary=args.boundary),
                steps=args.steps,
                timed_steps=args.steps - args.skip,
                threads_per_process="OMP_NUM_THREADS=1",
                machine=f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                note=args.note or "the configurations alternate within one run",
                load_average_before=load_before,
                load_average_after=os.getloadavg(),
                summary=summary,
                runs=runs,
            ),
            indent=1,
        )
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
    if "RANK" in os.environ:  # a torchrun worker: no finalization (examples/poisson_ddp.py)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
