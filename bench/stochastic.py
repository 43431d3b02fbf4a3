"""High-dimensional Laplacians: exact collapsed vs stochastic Taylor vs Stein vs nested autograd.

Per input dimension D in {10, 100, 1000, 10000}: the time and peak memory of one
training step (Laplacian of a tanh MLP 128x3 at B = 64 points, mean squared,
backward to the weights) for the exact collapsed Laplacian (D directions), the
randomized collapsed Laplacian (``method="stochastic"``, S = 16 Rademacher
directions), the Stein estimator (``method="stein"``, S = 16 antithetic pairs
with control variate: 33 model evaluations per point) and nested autograd (the
Hessian trace). Each (D, method) runs in a fresh process: its first step sets
the peak memory (CPU: peak RSS growth; CUDA: max allocated), then the median of
the next ``--repeats`` steps is its time. A method that exceeds ``--timeout``
seconds or runs out of memory is reported as such. Writes
``bench/results/stochastic-<device>.json`` with ratios to the exact collapsed
and nested runs of the same D.

    python bench/stochastic.py [--dims 10 100 1000 10000] [--samples 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import peak_bytes

METHODS = ["collapsed", "stochastic", "stein", "nested"]


def child(args) -> None:
    import torch

    import taylorc

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    layers, d = [], args.dim
    for _ in range(3):
        layers += [torch.nn.Linear(d, 128), torch.nn.Tanh()]
        d = 128
    net = torch.nn.Sequential(*layers, torch.nn.Linear(d, 1)).to(args.device, dtype)
    x = torch.rand(args.batch, args.dim, device=args.device, dtype=dtype)
    kw = {
        "stochastic": dict(samples=args.samples, distribution="rademacher"),
        "stein": dict(samples=args.samples, sigma=0.01),
    }.get(args.method, {})
    op = taylorc.compile(net, "laplacian", method=args.method, **kw)
    if args.method != "nested":
        op.graph_for(x)

    def step():
        net.zero_grad(set_to_none=True)
        op(x).pow(2).mean().backward()
        if cuda:
            torch.cuda.synchronize()

    net(x[:2]).sum().backward()
    peak = peak_bytes(step, cuda)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "peak_bytes": int(peak)}))


def run_child(args, dim, method) -> dict:
    cmd = [sys.executable, __file__, "--child", "--dim", str(dim), "--method", method]
    for k in ("device", "dtype", "threads", "repeats", "samples", "batch"):
        cmd += [f"--{k}", str(getattr(args, k))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {args.timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return {"skipped": "out of memory" if out.returncode == -9 else last}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true")
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--method", default="collapsed")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    device = f"cpu-{platform.machine()}" if args.device == "cpu" else args.device
    results = {"device": device, "samples": args.samples, "batch": args.batch, "runs": []}
    for dim in args.dims:
        rows = {}
        for m in args.methods:
            rows[m] = {"D": dim, "method": m, **run_child(args, dim, m)}
        for m, r in rows.items():
            for ref in ("collapsed", "nested"):
                b = rows.get(ref, {})
                if "seconds" in r and "seconds" in b:
                    r[f"speedup_vs_{ref}"] = b["seconds"] / r["seconds"]
            results["runs"].append(r)
            if "seconds" in r:
                extra = "  ".join(
                    f"x{r[k]:.1f} vs {k[11:]}"
                    for k in ("speedup_vs_collapsed", "speedup_vs_nested")
                    if k in r
                )
                print(
                    f"D={dim:6d} {m:11s} {1e3 * r['seconds']:10.1f} ms "
                    f"{r['peak_bytes'] / 2**20:9.1f} MiB  {extra}",
                    flush=True,
                )
            else:
                print(f"D={dim:6d} {m:11s} skipped: {r['skipped']}", flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"stochastic-{device}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
