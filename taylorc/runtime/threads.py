"""Fewer intra-op threads for an operator's CPU calls while other processes keep the cores busy.

Why (issue 33, item 3; docs/benchmarks.md, "Contention"): libgomp's threads spin at
barriers, so beside a process that keeps every core busy a barrier waits for a descheduled
thread. The default path's Laplacian (tanh 64 x 3, D = 5) on 2 threads measured 1.0-6.4x
slower next to a matrix-multiplying neighbour; on one thread it stayed within 2.5x of the
quiet 2-thread time, but one thread costs 1.5-2x on a quiet machine, and passive waiting
(``OMP_WAIT_POLICY=PASSIVE``) slowed quiet small calls 3.9x. So: the configured threads on
a quiet machine, fewer while other processes keep the cores busy (:func:`for_call`).

Detection (:class:`Detector`): the CPU time that *other* processes used over the last
window, from ``/proc/stat`` (busy jiffies of the CPUs this process may run on) minus this
process's own CPU time (``time.process_time()``, every thread: its OpenMP workers, their
spinning, a background compile) over the same wall interval, in cores. It is sampled at
most every :data:`INTERVAL` seconds; calls in between reuse the decision (one
``time.monotonic()``). "Busy" means other processes used more than :data:`MARGIN` cores on
average; then the thread count is halved until it fits the cores they left free (plus
:data:`MARGIN`), at least 1 (2 -> 1 on a 2-core machine). Halving, not any count, because
each count is one more compiled variant (below). Off Linux, or where ``/proc/stat`` cannot
be read, the detector says nothing and no count is changed.

Not chosen as the signal: the call's own time against its best. A best is per shape, dtype
and grad mode; once the count is lowered a slow call no longer says whether the neighbour
is still there (finding out means a call at the full count, the very collapse); and a slow
call has other causes (allocator, caches). ``/proc/stat`` sees the neighbour before a call
suffers. psutil would read the same file but is not a dependency of taylorc.

What ``torch.set_num_threads(n)`` changes (torch 2.13, OpenMP build; measured with
threads that read ``torch.get_num_threads()`` around a change on another thread): the
calling thread's OpenMP count and MKL's thread-local count, and the process-wide default
that a thread adopts at its first torch op. Threads that have already run a torch op keep
their own count (a user's worker threads running torch concurrently are not slowed); a
thread whose *first* torch op falls inside a lowered call keeps the lowered count; and the
restore sets that process-wide default to the caller's count again. Dynamo guards on
``torch.get_num_threads()``: with ``backend="auto"`` (the default) a call at a count the
compiled graph has no variant for runs eagerly while that variant compiles in the
background (:class:`taylorc.runtime.backend.AutoGraph`); with ``backend="taylorc"`` the
first lowered call recompiles inside the call (seconds, once per graph; then both are
cached).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

import torch

from .config import CONTENTION_MODES

INTERVAL = 0.25  # seconds between two samples of /proc/stat
MARGIN = 0.5  # cores: other processes' average use below this is a quiet machine
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit


def read_proc_stat(path: str = "/proc/stat") -> tuple[float, int]:
    """Busy CPU seconds since boot, summed over the CPUs this process may run on.

    Busy is ``user + nice + system + irq + softirq + steal`` of each ``cpuN`` line
    (``guest`` is already inside ``user``; ``idle`` and ``iowait`` are not busy; a VM's
    ``steal`` is a core taken by another guest). Linux only.

    Returns:
        ``(seconds, cpus)``: busy seconds (float), and the number of CPUs summed.

    Raises:
        OSError: the file cannot be read; ValueError: no ``cpuN`` line of this process's CPUs.
    """
    allowed = os.sched_getaffinity(0)
    with open(path, "rb") as f:
        text = f.read()
    ticks, cpus = 0, 0
    for line in text.split(b"\n")[1:]:  # the first line sums every CPU
        if not line.startswith(b"cpu"):
            break  # the per-CPU lines come first
        name, *fields = line.split()
        if int(name[3:]) in allowed:
            v = [int(f) for f in fields[:8]]
            ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            cpus += 1
    if not cpus:
        raise ValueError(f"{path}: no line of this process's CPUs {sorted(allowed)}")
    return ticks / _TICK, cpus


def _default_reader() -> Callable[[], tuple[float, int]] | None:
    """:func:`read_proc_stat` on Linux with a readable ``/proc/stat``, else None (off)."""
    ok = sys.platform.startswith("linux") and hasattr(os, "sched_getaffinity")
    return read_proc_stat if ok and os.access("/proc/stat", os.R_OK) else None


class Detector:
    """Whether other processes keep the cores busy, and the thread count that fits.

    Args:
        reader: ``() -> (busy seconds, cpus)`` of the whole machine, as
            :func:`read_proc_stat` (None: never busy; tests inject a fake).
        own: ``() -> seconds``, this process's CPU time (``time.process_time``).
        clock: ``() -> seconds``, wall time (``time.monotonic``).
        interval: seconds between two samples.

    Attributes:
        others: cores other processes used over the last window (0 before two samples).
        cpus: CPUs this process may run on (from the reader).
        lowered: calls that :func:`for_call` ran with fewer threads (a diagnostic).

    The window is the wall time since the last sample: :attr:`interval` or more, and as long
    as the gap between calls when they are seconds apart (then a neighbour that started
    late in the gap counts for its share). A reader that raises ``OSError`` or
    ``ValueError`` is dropped: the detector is off.
    """

    def __init__(
        self,
        reader: Callable[[], tuple[float, int]] | None = None,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
    ):
        self.reader, self.own, self.clock, self.interval = reader, own, clock, interval
        self.others, self.cpus, self.lowered = 0.0, os.cpu_count() or 1, 0
        self._last: tuple[float, float, float] | None = None  # (wall, busy, own) seconds
        self._lock = threading.Lock()

    def threads(self, configured: int) -> int:
        """The thread count for a call now: ``configured`` on a quiet machine, else fewer.

        Samples the reader when the last sample is :attr:`interval` seconds old or more.
        """
        if self.reader is None:
            return configured
        if self._last is None or self.clock() - self._last[0] >= self.interval:
            self.sample()
        return fitting(configured, self.cpus - self.others) if self.others > MARGIN else configured

    def sample(self) -> None:
        """Read the counters and update :attr:`others` over the window since the last sample."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is sampling: its answer serves
        try:
            reader = self.reader
            if reader is None:
                return
            try:
                busy, cpus = reader()
            except (OSError, ValueError):
                self.reader, self.others = None, 0.0  # unreadable: the policy is off
                return
            now, own = self.clock(), self.own()
            if self._last is not None and now > self._last[0]:
                wall, busy0, own0 = self._last
                used = (busy - busy0) - (own - own0)  # other processes' CPU seconds
                self.others = min(max(used / (now - wall), 0.0), float(cpus))
            self._last, self.cpus = (now, busy, own), cpus
        finally:
            self._lock.release()


def fitting(configured: int, free: float) -> int:
    """``configured`` halved until it is at most ``free + MARGIN`` (cores), at least 1.

    Halving bounds the counts a process uses (each is a Dynamo variant of a compiled graph).
    """
    n = configured
    while n > 1 and n > free + MARGIN:
        n //= 2
    return max(n, 1)


DETECTOR = Detector(_default_reader())  # one per process: the machine is one


class _Lowered:
    """Runs a call's body at ``n`` threads and restores ``before`` on exit (also on errors)."""

    __slots__ = ("before", "n")

    def __init__(self, before: int, n: int):
        self.before, self.n = before, n

    def __enter__(self):
        torch.set_num_threads(self.n)
        DETECTOR.lowered += 1

    def __exit__(self, *exc) -> bool:
        torch.set_num_threads(self.before)
        return False


_UNCHANGED = contextlib.nullcontext()  # a call whose thread count stays as it is


def for_call(x: torch.Tensor, mode: str = "auto"):
    """The context an operator call runs in: fewer threads while the machine is busy.

    ``with for_call(x, op.config.contention): ...`` (``CompiledOperator.forward``).
    Only CPU inputs, and only when the calling thread has more than one thread
    (``torch.get_num_threads() > 1``); the count is only ever lowered, for the body's
    duration, and restored on exit, exceptions included. Nested calls see the lowered
    count and change nothing. Quiet-machine cost: about a microsecond (see
    docs/benchmarks.md, "Contention").

    Args:
        x: the call's coordinates (their device decides).
        mode: ``"auto"`` (:data:`DETECTOR` decides), ``"off"`` (never change the count),
            ``"busy"`` (always one thread, as if every core were busy; tests, shared hosts).

    Returns:
        a context manager.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "off" or not x.is_cpu:
        return _UNCHANGED
    before = torch.get_num_threads()
    if before <= 1:
        return _UNCHANGED
    if mode == "auto":
        n = DETECTOR.threads(before)
    elif mode == "busy":
        n = 1
    else:
        raise ValueError(f"contention={mode!r}: one of {CONTENTION_MODES}")
    return _Lowered(before, n) if n < before else _UNCHANGED


__all__ = ["DETECTOR", "INTERVAL", "MARGIN", "Detector", "fitting", "for_call", "read_proc_stat"]
