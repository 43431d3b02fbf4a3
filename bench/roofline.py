"""The CPU roofline of the Laplacian configs (issue 33, item 1): peak, GEMM rates, fractions.

``python bench/roofline.py [--repeats 15]`` measures, alone on the machine, float32:

1. **Peak.** An FMA microbenchmark (C, built here with ``gcc -O3 -march=native -fopenmp``):
   ten independent chains of vector FMAs per thread, 256-bit (AVX2) and 512-bit
   (AVX-512, where the CPU has it), on 1 thread and on every core. No memory traffic: the
   arithmetic ceiling the GEMMs are measured against.
2. **GEMM rate per shape.** For each linear layer of the two reference configs, the GEMM
   the collapsed Laplacian runs on it: ``(B (D + 2), d_in) @ (d_in, d_out)`` (value, D
   directions and the collapsed second order stacked), through ``torch.mm`` and
   ``F.linear`` (MKL / oneDNN as torch picks), and the oneDNN module with its weight
   prepacked once (``torch.utils.mkldnn.to_mkldnn``; inputs converted outside the timing).
3. **Method fraction.** The collapsed Laplacian of each config (``taylorc.compile(...,
   "laplacian")``, default backend, after warm-up), its time and its GFLOP/s counted from
   the GEMMs of 2 (2 · rows · d_in · d_out per layer), as a fraction of the measured peak.

Configs: PINN (D = 5, B = 4096, tanh 64 x 3) and paper (D = 50, B = 128, 768-768-512-512).
Writes ``bench/results/roofline-cpu-<arch>.json``. Results: docs/benchmarks.md, "Roofline".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.utils.mkldnn
from timing import round_robin

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "pinn": dict(D=5, B=4096, widths=[64, 64, 64]),
    "paper": dict(D=50, B=128, widths=[768, 768, 512, 512]),
}

FMA_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define CHAINS 10
#define ITERS 2000000000L
static double run(int wide) {
  double t0 = omp_get_wtime();
  float sink = 0;
  #pragma omp parallel reduction(+:sink)
  {
    if (wide == 512) {
#ifdef __AVX512F__
      __m512 a[CHAINS], b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-7f);
      for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps(1.0f + i);
      for (long k = 0; k < ITERS / 16; k++)
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
      for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(a[i]);
#endif
    } else {
      __m256 a[CHAINS], b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-7f);
      for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_ps(1.0f + i);
      for (long k = 0; k < ITERS / 8; k++)
        for (int i = 0; i < CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
      float out[8];
      for (int i = 0; i < CHAINS; i++) { _mm256_storeu_ps(out, a[i]); sink += out[0]; }
    }
  }
  double dt = omp_get_wtime() - t0;
  int threads = omp_get_max_threads();
  if (sink == 42.0f) printf("#");  /* keeps the chains alive */
  return 2.0 * CHAINS * (double)ITERS * threads / dt / 1e9;  /* 2 flops per FMA lane */
}
int main(int argc, char **argv) { printf("%f\n", run(atoi(argv[1]))); return 0; }
"""


def fma_peak() -> dict:
    """GFLOP/s of the FMA chains: {"avx2"|"avx512": {"1 thread": x, "N threads": y}}."""
    cores = torch.get_num_threads()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(FMA_SOURCE)
        subprocess.run(
            ["gcc", "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe)], check=True
        )
        has512 = "avx512f" in Path("/proc/cpuinfo").read_text()
        for name, wide in (("avx2", 256), ("avx512", 512)):
            if wide == 512 and not has512:
                continue
            out[name] = {}
            for threads in sorted({1, cores}):
                env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
                rates = [
                    float(
                        subprocess.run(
                            [str(exe), str(wide)],
                            env=env,
                            capture_output=True,
                            text=True,
                            check=True,
                        ).stdout.strip("#\n")
                    )
                    for _ in range(3)
                ]
                out[name][f"{threads} thread(s)"] = round(max(rates), 1)
    return out


def layer_shapes(cfg: dict) -> list[tuple[int, int, int]]:
    """(rows, d_in, d_out) of each linear layer's GEMM in the collapsed Laplacian."""
    rows, dims = cfg["B"] * (cfg["D"] + 2), [cfg["D"], *cfg["widths"], 1]
    return [(rows, dims[i], dims[i + 1]) for i in range(len(dims) - 1)]


def gemm_rates(cfg: dict, repeats: int) -> list[dict]:
    """GFLOP/s of each layer's GEMM through mm, F.linear and prepacked oneDNN."""
    return [gemm_rate(rows, k, n, repeats) for rows, k, n in layer_shapes(cfg)]


def gemm_rate(rows: int, k: int, n: int, repeats: int) -> dict:
    """GFLOP/s of ``(rows, k) @ (k, n)`` (+ bias) through each provider."""
    x, lin = torch.randn(rows, k), torch.nn.Linear(k, n).eval()
    w, b = lin.weight.detach(), lin.bias.detach()
    wt = w.T.contiguous()
    flops = 2 * rows * k * n
    row = {"shape": [rows, k, n], "gflop": flops / 1e9}
    with torch.no_grad():
        packed, xm = torch.utils.mkldnn.to_mkldnn(lin), x.to_mkldnn()
        times = round_robin(  # the providers in turn: load changes hit all alike
            {
                "mm": lambda: torch.mm(x, wt),
                "linear": lambda: torch.nn.functional.linear(x, w, b),
                "onednn_prepacked": lambda: packed(xm),
            },
            repeats,
        )
    row.update({name: flops / min(t) / 1e9 for name, t in times.items()})
    return {k_: round(v, 2) if isinstance(v, float) else v for k_, v in row.items()}


def method_rate(cfg: dict, repeats: int) -> dict:
    """The collapsed Laplacian of ``cfg``: best time, GFLOP/s from its GEMMs."""
    import taylorc

    torch.manual_seed(0)
    dims = [cfg["D"], *cfg["widths"]]
    layers = []
    for i in range(len(dims) - 1):
        layers += [torch.nn.Linear(dims[i], dims[i + 1]), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(dims[-1], 1))
    lap = taylorc.compile(model, operator="laplacian")
    x = torch.rand(cfg["B"], cfg["D"])
    with torch.no_grad():
        for _ in range(60):  # past backend="auto"'s warm-up
            lap(x)
        # its background compile would share the cores with every timing after this one
        lap.wait_for_compile()
        lap(x)
        seconds = min(round_robin({"lap": lambda: lap(x)}, repeats)["lap"])
    flops = sum(2 * r * k * n for r, k, n in layer_shapes(cfg))
    return {"seconds": seconds, "gflop": flops / 1e9, "gflops": flops / seconds / 1e9}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    peak = fma_peak()
    top = max(v for rates in peak.values() for v in rates.values())
    result = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "fma_peak_gflops": peak,
        "configs": {},
    }
    for name, cfg in CONFIGS.items():
        method = method_rate(cfg, args.repeats)
        method["fraction_of_peak"] = round(method["gflops"] / top, 3)
        gemms = gemm_rates(cfg, args.repeats)
        result["configs"][name] = {"config": cfg, "collapsed_laplacian": method, "gemms": gemms}
    print(json.dumps(result, indent=1))
    out = ROOT / "bench" / "results" / f"roofline-cpu-{platform.machine()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"written {out}; median GEMM fraction of peak:",
        {
            n: round(statistics.median(g["mm"] for g in c["gemms"]) / top, 2)
            for n, c in result["configs"].items()
        },
    )


if __name__ == "__main__":
    main()
