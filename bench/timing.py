"""Round-robin timing shared by the benchmarks.

Methods are timed in rotating order, one sample each per round, so load changes on a
shared machine hit all alike and per-round ratios pair samples taken milliseconds apart.
"""

from __future__ import annotations

import time


def wall_time(fn, calls: int = 1, finish=lambda result: result) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls; ``finish`` is applied to
    the last result inside the timed region (a CUDA synchronize, JAX's block_until_ready)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        result = fn()
    finish(result)
    return (time.perf_counter() - t0) / calls


def round_robin(fns: dict, repeats: int, sample=wall_time, warmup: int = 2) -> dict:
    """``{name: [seconds per round]}``: ``warmup`` untimed samples of each function, then
    ``repeats`` rounds, each taking ``sample(fn)`` of every function in rotating order."""
    for fn in fns.values():
        for _ in range(warmup):
            sample(fn)
    names, times = list(fns), {k: [] for k in fns}
    for i in range(repeats):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            times[k].append(sample(fns[k]))
    return times
