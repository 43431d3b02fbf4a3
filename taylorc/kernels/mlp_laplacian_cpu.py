"""``taylorc::mlp_laplacian`` on the CPU: the C kernel ``mlp_laplacian_cpu.c``, built at first use.

Why a kernel of our own (issue 33, docs/benchmarks.md "Roofline"): on the CPU the layered
collapsed Laplacian of a small MLP spends a quarter of its time outside the GEMMs, writing
each GEMM's output to memory and reading it back for the activation's Taylor step. The C
kernel keeps a tile of points' whole jet in the core's cache from the coordinates to the
output (Dangel, Mueller, Zeinhofer 2024, "Collapsing Taylor mode AD", eq. 8 at K = 2, the
same propagation as :func:`taylorc.kernels.mlp_laplacian.mlp_laplacian_reference`).

It is compiled once per padded width P, dtype and machine with the system C compiler
(``$CC``, else ``cc``; ``-O3 -march=native -fopenmp``) into a cache directory
(``$TAYLORC_CACHE_DIR``, else ``~/.cache/taylorc``; keyed by the source, the flags, the
compiler's version and the CPU's flags, so a shared home never runs code built for another
CPU) and loaded with :mod:`ctypes` (the call releases the GIL). Its OpenMP runtime is the
``libgomp.so.1`` PyTorch already loaded (checked: one libgomp in the process), and it runs
on ``torch.get_num_threads()`` threads.
Where no compiler works, :func:`library` returns None once and the callers keep the layered
path. Float32 and float64, ``tanh`` only: other activations are not built.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mlp_laplacian_cpu.c")
WIDTHS = (16, 32, 64, 128)  # padded widths the C source is built for
ACTIVATIONS = ("tanh",)
DTYPES = {torch.float32: ("f32", []), torch.float64: ("f64", ["-DREAL_DOUBLE"])}
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
_LIBS: dict[tuple, object] = {}  # (P, dtype) -> the loaded function, or None
_LOCK = threading.Lock()


def supports(x: torch.Tensor, w: torch.Tensor, act: str) -> bool:
    """Whether the C kernel serves these arguments (then :func:`mlp_laplacian_cpu` may be called).

    Args:
        x: ``(B, D)`` coordinates; w: ``(L, P, P)`` packed weights; act: the activation.
    """
    return (
        x.device.type == "cpu"
        and x.dtype == w.dtype
        and x.dtype in DTYPES
        and act in ACTIVATIONS
        and w.shape[-1] in WIDTHS
        and w.shape[0] >= 2
        and x.shape[1] <= 16
        and library(w.shape[-1], x.dtype) is not None
    )


def _cache_dir() -> Path:
    root = os.environ.get("TAYLORC_CACHE_DIR") or Path.home() / ".cache" / "taylorc"
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # a read-only home
        path = Path(tempfile.gettempdir()) / f"taylorc-{os.getuid()}" / "kernels"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln for ln in text.splitlines() if ln.startswith("flags")), "")


def _build(P: int, dtype: torch.dtype) -> Path:
    cc = os.environ.get("CC", "cc")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    name, defines = DTYPES[dtype]
    flags = [*FLAGS, f"-DP={P}", *defines]
    text = "\0".join([SOURCE.read_text(), " ".join(flags), version.stdout, _cpu_flags()])
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    lib = _cache_dir() / f"mlp_laplacian_cpu_{name}_p{P}_{key}.so"
    if lib.exists():
        return lib
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([cc, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, check=True)
    os.replace(tmp, lib)  # atomic: a concurrent process loads a whole file or builds its own
    return lib


def library(P: int, dtype: torch.dtype = torch.float32):
    """The kernel function built for padded width P and ``dtype`` (float32 or float64),
    loaded (a :mod:`ctypes` function); None where it cannot be built (logged once)."""
    key = (P, dtype)
    if not sys.platform.startswith("linux"):  # built and tested with GCC on Linux only
        return None
    with _LOCK:
        if key not in _LIBS:
            try:
                fn = getattr(
                    ctypes.CDLL(str(_build(P, dtype))), f"mlp_laplacian_tanh_{DTYPES[dtype][0]}"
                )
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] + [ctypes.c_int] * 4
                _LIBS[key] = fn
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", "") or e
                log.info("taylorc: the CPU mlp_laplacian kernel is not built (%s)", detail)
                _LIBS[key] = None
        return _LIBS[key]


def output_width(w: torch.Tensor) -> int:
    """The last layer's output width inside its zero padding: rows of ``w[-1]`` up to the
    last nonzero one (the kernel computes only those, as dot products)."""
    nonzero = torch.nonzero(w[-1].ne(0).any(1))
    return int(nonzero[-1]) + 1 if len(nonzero) else 1


def mlp_laplacian_cpu(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str, out_width: int | None = None
):
    """Value and collapsed Laplacian of the packed MLP at every point, by the C kernel.

    Args:
        x: ``(B, D)`` float32 or float64 CPU coordinates, D <= 16.
        w: ``(L, P, P)`` packed weights of x's dtype (:func:`taylorc.kernels.mlp_laplacian.pack`),
            L >= 2, P in :data:`WIDTHS`; b: ``(L, P)`` packed biases.
        act: ``"tanh"``.
        out_width: the network's output width (at least it: columns beyond are computed as
            zero); None reads it from ``w`` (:func:`output_width`).

    Returns:
        ``(u, lap)``, each ``(B, P)`` of x's dtype; columns beyond the output width are zero.

    Raises:
        ValueError: arguments :func:`supports` refuses. MemoryError: the kernel could not
        allocate its buffers.
    """
    if not supports(x, w, act):
        raise ValueError(
            f"mlp_laplacian_cpu: float32 or float64 CPU tensors, act in {ACTIVATIONS}, "
            f"P in {WIDTHS}, "
            f">= 2 layers, D <= 16 and a working C compiler; got {x.dtype} {x.device}, "
            f"act={act!r}, w {tuple(w.shape)}"
        )
    x, w, b = x.detach().contiguous(), w.detach().contiguous(), b.detach().contiguous()
    B, D = x.shape
    L, P, _ = w.shape
    out_width = output_width(w) if out_width is None else min(out_width, P)
    u, lap = x.new_empty(B, P), x.new_empty(B, P)
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (x, w, b, u, lap)]
    threads = torch.get_num_threads()
    if library(P, x.dtype)(*ptrs, B, D, L, out_width, threads):
        raise MemoryError(f"mlp_laplacian_cpu: no memory for its buffers ({L} x {P} x {P})")
    return u, lap
