"""CPU runtime settings that the Taylor graphs need to run at the machine's floor.

Taylor graphs allocate many short-lived tensors of one to tens of MiB per call
(R directions times B points times the layer width). glibc's malloc serves
blocks above its mmap threshold (128 KiB at start, adapting up to 32 MiB) with
fresh ``mmap`` pages and returns them at ``free``, and it trims the heap top
above 128 KiB. Every call then touches fresh pages: thousands of minor page
faults, expensive under virtualisation and serialised across threads: a large
share of a small Laplacian's evaluation (measured in docs/benchmarks.md,
``bench/cpu_peers.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit


def tune_allocator(
    mmap_threshold: int = _MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30
) -> bool:
    """Keep the CPU tensors of Taylor graphs in malloc's heap (no per-call page faults).

    Sets glibc's ``M_MMAP_THRESHOLD`` (blocks up to this size come from the heap, not
    from fresh ``mmap`` pages) and ``M_TRIM_THRESHOLD`` (free heap kept before it is
    returned to the system) with ``mallopt(3)``. This changes the whole process's
    allocator, which is why taylorc never calls it on its own: call it once at the
    start of a CPU training script. The price is memory: up to ``trim_threshold``
    bytes of freed heap stay reserved. The same effect comes from the environment
    variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, or from
    preloading jemalloc/tcmalloc, as Intel's PyTorch CPU tuning guide advises.

    Args:
        mmap_threshold: bytes; glibc caps it at 32 MiB on 64-bit machines.
        trim_threshold: bytes.

    Returns:
        ``True`` when both settings were applied; ``False`` on a C library without
        ``mallopt`` (macOS, musl, Windows), where nothing changes.

    Raises:
        ValueError: a threshold that is negative or above glibc's limit.
    """
    if not 0 <= mmap_threshold <= _MAX_MMAP_THRESHOLD:
        raise ValueError(
            f"mmap_threshold={mmap_threshold}: glibc accepts 0 to {_MAX_MMAP_THRESHOLD} bytes"
        )
    if trim_threshold < 0:
        raise ValueError(f"trim_threshold={trim_threshold} must be >= 0 bytes")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1)))
    return bool(ok_mmap) and bool(ok_trim)


_AUTO: list = [None]  # auto_tune's decision, once per process
_USER_ALLOCATOR = ("jemalloc", "tcmalloc", "mimalloc")
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def auto_tune() -> bool:
    """:func:`tune_allocator` once per process, unless the user configured the allocator.

    ``backend="auto"`` (the default of :func:`taylorc.compile`) calls it at its first CPU
    graph. It does nothing when ``TAYLORC_TUNE_ALLOCATOR=0``, when ``LD_PRELOAD`` names
    jemalloc, tcmalloc or mimalloc, or when glibc's own ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` are set (the user's choice wins), and
    off glibc. Its price is :func:`tune_allocator`'s: up to 1 GiB of freed heap stays
    reserved by the process. Turn it off per operator with
    ``op.config.tune_allocator = False``, for all with
    ``taylorc.runtime.config.CONFIG.tune_allocator = False`` or the environment variable.

    Returns:
        whether the allocator is tuned (the first call's answer, every time).
    """
    if _AUTO[0] is None:
        env = os.environ
        skip = (
            env.get("TAYLORC_TUNE_ALLOCATOR", "1").strip().lower() in ("0", "", "false", "no")
            or any(lib in env.get("LD_PRELOAD", "") for lib in _USER_ALLOCATOR)
            or any(k in env for k in _USER_SETTINGS)
        )
        _AUTO[0] = False if skip else tune_allocator()
        logging.getLogger(__name__).info("taylorc: allocator tuned: %s", _AUTO[0])
    return _AUTO[0]
