"""Laplacian benchmark: taylorc collapsed vs standard Taylor vs nested autograd, side by side.

Configs: the MLP of the collapsing paper (D=50, tanh 768-768-512-512-1) and a
PINN-sized one (D=5, tanh 64x3, B=4096). For each method: median time and peak
memory of an evaluation and of a training step (forward + backward of the mean
squared operator output). Times come from one process per (config, mode) that
runs the methods in round robin, so that load changes on a shared machine hit
every method alike; peak memory (CPU: peak RSS growth over the RSS before the
first run; CUDA: max allocated) comes from a fresh process per method. Writes
``bench/results/laplacian-<device>.json`` and prints ratios.

jet-for-pytorch 1.0 is measured when importable (``bench/peers.py`` says how it
installs on Python 3.11).

    python bench/laplacian.py [--device cpu] [--repeats 11] [--paper-batch 128]
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
        from peers import jet_laplacian

        lap = jet_laplacian(model, x)
        return (lambda x: lap(x)[:, None]) if lap is not None else None
    return taylorc.compile(model, "laplacian", method=method)


def make_step(method, op, model, x, mode):
    """One evaluation (no_grad except for nested AD) or one training step."""
    import torch

    def step():
        if mode == "eval":
            with torch.no_grad() if method != "nested" else torch.enable_grad():
                return op(x)
        model.zero_grad(set_to_none=True)
        loss = op(x).pow(2).mean()
        loss.backward()
        return loss

    return step


def time_one(step, cuda) -> float:
    """Seconds of one call (CUDA events on GPUs)."""
    import torch

    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def child(args) -> None:
    """``--what memory``: peak of one method's first run; ``--what time``: all methods interleaved."""
    import torch

    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        import taylorc

        taylorc.cpu.tune_allocator()  # every method alike (bench/cpu_peers.py measures why)
    cfg = configs(args.paper_batch)[args.config]
    model, x = build(cfg, args.device, getattr(torch, args.dtype))
    cuda = args.device.startswith("cuda")
    steps = {}
    for m in [args.method] if args.what == "memory" else METHODS:
        op = operator_fn(m, model, x)
        if op is not None:
            if hasattr(op, "graph_for"):
                op.graph_for(x)  # compile without running
            steps[m] = make_step(m, op, model, x, args.mode)
    if args.what == "memory":
        if not steps:
            print(json.dumps({"available": False}))
            return
        model(x[:8]).sum().backward()  # initialise BLAS and autograd before the baseline
        model.zero_grad(set_to_none=True)
        print(json.dumps({"peak_bytes": peak_bytes(steps[args.method], cuda)}))
        return
    for step in steps.values():
        step()
        step()
    names = list(steps)
    times = {m: [] for m in names}
    for i in range(args.repeats):  # round robin, rotating the order
        for m in names[i % len(names) :] + names[: i % len(names)]:
            times[m].append(time_one(steps[m], cuda))
    print(
        json.dumps({m: {"median_s": statistics.median(t), "times_s": t} for m, t in times.items()})
    )


def run_child(args, **kw) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
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
    ] + (["--default-allocator"] if args.default_allocator else [])
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {kw} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--what", default="time", help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--paper-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--default-allocator", action="store_true", help="skip tune_allocator()")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    results = {
        "device": device_name(args.device),
        "dtype": args.dtype,
        "threads": args.threads,
        "allocator": "glibc default" if args.default_allocator else "taylorc.cpu.tune_allocator",
        "configs": configs(args.paper_batch),
        "runs": {},
    }
    for config in configs(args.paper_batch):
        for mode in ("eval", "train"):
            timing = run_child(args, what="time", config=config, mode=mode, method="none")
            for method in METHODS:
                r = {"available": method in timing, **timing.get(method, {})}
                if r["available"]:
                    r.update(
                        run_child(args, what="memory", config=config, mode=mode, method=method)
                    )
                results["runs"][f"{config}/{mode}/{method}"] = r
                shown = (
                    f"{1e3 * r['median_s']:9.2f} ms {r['peak_bytes'] / 2**20:8.1f} MiB"
                    if r["available"]
                    else "  unavailable"
                )
                print(f"{config:6s} {mode:5s} {method:9s} {shown}", flush=True)
    print("\nratios (nested / method: >1 means faster than the Hessian trace; memory likewise)")
    for key, r in results["runs"].items():
        ref = results["runs"][key.rsplit("/", 1)[0] + "/nested"]
        if r["available"] and ref["available"]:
            r["speedup_vs_nested"] = ref["median_s"] / r["median_s"]
            r["memory_ratio_vs_nested"] = (
                ref["peak_bytes"] / r["peak_bytes"] if r["peak_bytes"] > 0 else None
            )
            mem = f"{r['memory_ratio_vs_nested']:5.2f}" if r["memory_ratio_vs_nested"] else "  n/a"
            print(f"{key:26s} time x{r['speedup_vs_nested']:5.2f}  memory x{mem}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"laplacian-{results['device']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
