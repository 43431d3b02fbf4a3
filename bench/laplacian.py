"""Laplacian benchmark: taylorc collapsed vs standard Taylor vs nested autograd, side by side.

Configs: the MLP of the collapsing paper (D=50, tanh 768-768-512-512-1) and a
PINN-sized one (D=5, tanh 64x3, B=4096). For each method: median time and peak
memory of an evaluation and of a training step (forward + backward of the mean
squared operator output). Every (config, method, mode) runs in a fresh
subprocess so that peak memory (CPU: peak RSS growth over the RSS before the first run; CUDA: max allocated) is
its own. Writes ``bench/results/laplacian-<device>.json`` and prints ratios.

    python bench/laplacian.py [--device cpu] [--repeats 7] [--paper-batch 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["collapsed", "taylor", "nested", "jet"]


def configs(paper_batch: int) -> dict:
    return {
        "paper": {"D": 50, "widths": [768, 768, 512, 512], "B": paper_batch},
        "pinn": {"D": 5, "widths": [64, 64, 64], "B": 4096},
    }


def build(cfg, device, dtype):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, d = [], cfg["D"]
    for w in cfg["widths"]:
        layers += [nn.Linear(d, w), nn.Tanh()]
        d = w
    layers.append(nn.Linear(d, 1))
    model = nn.Sequential(*layers).to(device=device, dtype=dtype)
    x = torch.rand(cfg["B"], cfg["D"], device=device, dtype=dtype)
    return model, x


def operator_fn(method, model, x):
    """A callable x -> Laplacian (B, 1) for the method, or None when unavailable."""
    import taylorc

    if method == "jet":
        try:
            import jet  # noqa: F401  (jet-for-pytorch; Python >= 3.12)
        except ImportError:
            return None
        from jet.laplacian import Laplacian  # type: ignore[import-not-found]

        lap = Laplacian(model, x, is_batched=True)
        return lambda x: lap(x)[2]
    return taylorc.compile(model, "laplacian", method=method)


def current_rss_kib() -> int:
    """Resident set size now, in KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cfg = configs(args.paper_batch)[args.config]
    dtype = getattr(torch, args.dtype)
    model, x = build(cfg, args.device, dtype)
    op = operator_fn(args.method, model, x)
    if op is None:
        print(json.dumps({"available": False}))
        return
    cuda = args.device.startswith("cuda")

    def step():
        if args.mode == "eval":
            with torch.no_grad() if args.method != "nested" else torch.enable_grad():
                return op(x)
        model.zero_grad(set_to_none=True)
        loss = op(x).pow(2).mean()
        loss.backward()
        return loss

    if hasattr(op, "graph_for"):
        op.graph_for(x)  # compile without running
    # initialise the BLAS and autograd machinery before the memory baseline
    model(x[:8]).sum().backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = current_rss_kib()
    step()  # the first run sets the peak (the allocator reuses memory afterwards)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    step()
    times = []
    for _ in range(args.repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "available": True,
                "median_s": statistics.median(times),
                "times_s": times,
                "peak_bytes": int(peak),
            }
        )
    )


def run_one(config, method, mode, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--config",
        config,
        "--method",
        method,
        "--mode",
        mode,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--repeats",
        str(args.repeats),
        "--paper-batch",
        str(args.paper_batch),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {
            "available": False,
            "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed",
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default=None)
    p.add_argument("--method", default=None)
    p.add_argument("--mode", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--paper-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    results = {
        "device": device_name(args.device),
        "dtype": args.dtype,
        "threads": args.threads,
        "configs": configs(args.paper_batch),
        "runs": {},
    }
    for config in configs(args.paper_batch):
        for mode in ("eval", "train"):
            for method in METHODS:
                r = run_one(config, method, mode, args)
                results["runs"][f"{config}/{mode}/{method}"] = r
                shown = (
                    f"{1e3 * r['median_s']:9.2f} ms {r['peak_bytes'] / 2**20:8.1f} MiB"
                    if r.get("available")
                    else "  unavailable"
                )
                print(f"{config:6s} {mode:5s} {method:9s} {shown}", flush=True)
    print("\nratios (nested / method: >1 means faster than the Hessian trace; memory likewise)")
    for config in configs(args.paper_batch):
        for mode in ("eval", "train"):
            ref = results["runs"][f"{config}/{mode}/nested"]
            for method in METHODS:
                r = results["runs"][f"{config}/{mode}/{method}"]
                if r.get("available") and ref.get("available"):
                    mem = (
                        ref["peak_bytes"] / r["peak_bytes"] if r["peak_bytes"] > 0 else float("nan")
                    )
                    speed = ref["median_s"] / r["median_s"]
                    r["speedup_vs_nested"], r["memory_ratio_vs_nested"] = speed, mem
                    print(
                        f"{config:6s} {mode:5s} {method:9s} time x{speed:5.2f}  memory x{mem:5.2f}"
                    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"laplacian-{results['device']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
