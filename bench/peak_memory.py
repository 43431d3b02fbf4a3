"""Peak memory of one call, shared by the benchmarks (run each measurement in a fresh process)."""

from __future__ import annotations

import resource


def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def peak_bytes(step, cuda: bool) -> int:
    """Bytes one call of ``step()`` adds at its peak.

    CUDA: max allocated during the call minus what was allocated before; CPU: growth
    of the process's peak RSS over the RSS before the call (so call it on the first
    run in a fresh process: the allocator reuses memory afterwards).
    """
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = current_rss_kib()
    step()
    if cuda:
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    return int((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
