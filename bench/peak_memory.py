"""Peak memory of one call, shared by the benchmarks."""

from __future__ import annotations

import ctypes
import gc
import resource


def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_cpu_peak() -> bool:
    """Give free heap pages back to the OS and reset the peak RSS (VmHWM) to the current
    RSS; False where the kernel does not allow it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (proc(5))
    except OSError:
        return False
    return True


def peak_bytes(step, cuda: bool) -> int:
    """Bytes a steady-state call of ``step()`` adds at its peak.

    ``step`` runs once first (compilation, caches, lazy initialisation), then is measured
    on its second run. CUDA: max allocated during the call minus what was allocated
    before. CPU: free heap memory is returned to the OS (``malloc_trim``) and the peak
    RSS reset (``/proc/self/clear_refs``), so the growth of the peak RSS is the call's
    working memory; where the reset is not allowed, the growth of the peak RSS over the
    first call instead (so call it in a fresh process).
    """
    import torch

    if cuda:
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    if not _reset_cpu_peak():
        rss0 = current_rss_kib()
        step()
        return int((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    step()
    _reset_cpu_peak()
    rss0 = current_rss_kib()
    step()
    return int((_status_kib("VmHWM:") - rss0) * 1024)
