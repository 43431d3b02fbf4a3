"""Laplacian benchmark suite: taylorc's paths vs standard Taylor vs nested autograd vs torch-jet.

Configs: by default the MLP of the collapsing paper (D=50, tanh 768-768-512-512-1,
B=128) and a PINN-sized one (D=5, tanh 64x3, B=4096), small enough for a 2-core
CPU. ``--suite`` runs issue 5's GPU suite: paper B in {256, 1024, 4096}; PINN-sized
D in {2, 5}, tanh 64x4, B in {4096, 65536}; biharmonic D=5, tanh 64x4, B=4096
(``--batch-scale`` shrinks every B, for a smoke run on the CPU). Methods: taylorc
collapsed on the eager, inductor and taylorc backends (the last lowers to the fused
kernels on CUDA: per layer, or the whole MLP; on the CPU every backend's no-grad calls of a
tanh MLP take the C whole-MLP kernel, and ``collapsed/taylorc-layered`` is the taylorc
backend without it, ``config.whole_mlp = False``), standard Taylor, nested autograd,
torch-jet eager and under torch.compile. The device's floors are measured in the
same run (a large GEMM's FLOP rate and a copy's bandwidth), and each method gets
its fraction of the GEMM floor: the GEMM FLOPs of taylorc's collapsed graph over
the GEMM rate, divided by its time. For each method: median time and peak
memory of an evaluation and of a training step (forward + backward of the mean
squared operator output). Times come from one process per (config, mode) that
runs the methods in round robin, so that load changes on a shared machine hit
every method alike; peak memory is that of a steady-state call, measured in the same
process (``bench/peak_memory.py``: CPU peak RSS growth after returning free heap
pages, CUDA max allocated). Writes ``bench/results/laplacian-<device>.json``
(``suite-<device>.json`` with ``--suite``) and prints ratios.

jet-for-pytorch 1.0 is measured when importable (``bench/peers.py`` says how it
installs on Python 3.11).

    python bench/laplacian.py [--device cpu] [--repeats 11] [--paper-batch 128]
    python bench/laplacian.py --device cuda --suite        # the GPU suite
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from peak_memory import peak_bytes
from timing import round_robin

METHODS = [
    "collapsed",
    "collapsed/inductor",
    "collapsed/taylorc",
    "collapsed/taylorc-layered",
    "taylor",
    "nested",
    "jet",
    "jet/compile",
]
PAPER = [768, 768, 512, 512]


def configs(paper_batch: int, suite: bool = False, batch_scale: float = 1.0) -> dict:
    """name -> {D, widths, B, operator}."""
    if not suite:
        return {
            "paper": {"D": 50, "widths": PAPER, "B": paper_batch, "operator": "laplacian"},
            "pinn": {"D": 5, "widths": [64] * 3, "B": 4096, "operator": "laplacian"},
        }
    out = {}
    for B in (256, 1024, 4096):
        out[f"paper-B{B}"] = {"D": 50, "widths": PAPER, "B": B, "operator": "laplacian"}
    for D in (2, 5):
        for B in (4096, 65536):
            out[f"pinn-D{D}-B{B}"] = {"D": D, "widths": [64] * 4, "B": B, "operator": "laplacian"}
    out["biharmonic"] = {"D": 5, "widths": [64] * 4, "B": 4096, "operator": "biharmonic"}
    for cfg in out.values():
        cfg["B"] = max(1, int(cfg["B"] * batch_scale))
    return out


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


def operator_fn(method, model, x, operator="laplacian"):
    """A callable x -> operator (B, 1) for the method, or None when unavailable."""
    import torch

    import taylorc

    if method.startswith("jet"):
        from peers import jet_operator

        op = jet_operator(operator, model, x)
        if op is None:
            return None
        if method == "jet/compile":
            op = torch.compile(op)
        return lambda x: op(x)[:, None]
    name, _, backend = method.partition("/")
    layered = backend.endswith("-layered")  # without the CPU whole-MLP kernel of no-grad calls
    op = taylorc.compile(
        model, operator, method=name, backend=backend.removesuffix("-layered") or "eager"
    )
    op.config.whole_mlp = not layered
    return op


def gemm_flops(model, x, operator) -> int:
    """GEMM FLOPs of taylorc's collapsed graph (the work any method must at least do)."""
    import taylorc
    from taylorc.debug import node_flops

    gm = taylorc.compile(model, operator, method="collapsed").graph_for(x)[0]
    gemms = ("mm", "bmm", "matmul", "addmm", "einsum")
    return sum(
        node_flops(n)
        for n in gm.graph.nodes
        if n.op == "call_function" and str(getattr(n.target, "__name__", "")).split(".")[0] in gemms
    )


def device_floors(device, dtype) -> dict:
    """Measured GEMM rate (FLOP/s: the best of a few square sizes) and copy bandwidth
    (bytes/s, read + write) of the device."""
    import torch

    cuda = device.startswith("cuda")
    best = (0.0, 0)
    for n in (4096, 8192) if cuda else (1024, 1536, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = statistics.median(time_one(partial(torch.mm, a, b), cuda) for _ in range(9))
        best = max(best, (2 * n**3 / seconds, n))
    src = torch.empty(2**26 if cuda else 2**24, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = statistics.median(time_one(lambda: dst.copy_(src), cuda) for _ in range(9))
    return {
        "gemm_flops_per_s": best[0],
        "gemm_size": best[1],
        "bandwidth_bytes_per_s": 2 * src.numel() * src.element_size() / copy,
    }


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
    """``--what floors``: the device's GEMM rate and bandwidth; ``--what time``: all methods
    interleaved, then each one's peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        import taylorc

        taylorc.runtime.cpu.tune_allocator()  # every method alike (bench/cpu_peers.py measures why)
    dtype = getattr(torch, args.dtype)
    if args.what == "floors":
        print(json.dumps(device_floors(args.device, dtype)))
        return
    cfg = configs(args.paper_batch, args.suite, args.batch_scale)[args.config]
    model, x = build(cfg, args.device, dtype)
    cuda = args.device.startswith("cuda")
    steps = {}
    for m in METHODS:
        op = operator_fn(m, model, x, cfg["operator"])
        if op is not None:
            if getattr(getattr(op, "method_obj", None), "builds_graph", False):
                op.graph_for(x)  # compile without running
            steps[m] = make_step(m, op, model, x, args.mode)
    for step in steps.values():
        step()
        step()
    memory = {m: peak_bytes(steps[m], cuda) for m in steps}
    times = round_robin(steps, args.repeats, partial(time_one, cuda=cuda), warmup=0)
    out = {m: {"median_s": statistics.median(t), "times_s": t} for m, t in times.items()}
    for m, b in memory.items():
        out[m]["peak_bytes"] = b
    out["gemm_flops"] = gemm_flops(model, x, cfg["operator"])
    print(json.dumps(out))


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
        "--batch-scale",
        str(args.batch_scale),
    ]
    cmd += ["--default-allocator"] if args.default_allocator else []
    cmd += ["--suite"] if args.suite else []
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
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--paper-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--default-allocator", action="store_true", help="skip tune_allocator()")
    p.add_argument("--suite", action="store_true", help="issue 5's GPU configs")
    p.add_argument("--configs", nargs="+", help="run only these configs (split a long suite)")
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiply every B (smoke runs)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    cfgs = configs(args.paper_batch, args.suite, args.batch_scale)
    if args.configs:
        cfgs = {k: v for k, v in cfgs.items() if k in args.configs}
    floors = run_child(args, what="floors", config="none", mode="none")
    results = {
        "device": device_name(args.device),
        "dtype": args.dtype,
        "threads": args.threads,
        "allocator": "glibc default"
        if args.default_allocator
        else "taylorc.runtime.cpu.tune_allocator",
        "floors": floors,
        "configs": cfgs,
        "runs": {},
    }
    print(
        f"floors: GEMM {floors['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s,"
        f" copy {floors['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s"
    )
    for config in cfgs:
        for mode in ("eval", "train"):
            timing = run_child(args, what="time", config=config, mode=mode)
            floor_s = timing.pop("gemm_flops") / floors["gemm_flops_per_s"]
            for method in METHODS:
                r = {"available": method in timing, **timing.get(method, {})}
                if r["available"]:
                    # the backward pass does about twice the forward GEMMs
                    r["fraction_of_gemm_floor"] = (
                        floor_s * (3 if mode == "train" else 1) / r["median_s"]
                    )
                results["runs"][f"{config}/{mode}/{method}"] = r
                shown = (
                    f"{1e3 * r['median_s']:9.2f} ms {r['peak_bytes'] / 2**20:8.1f} MiB"
                    f"  {100 * r['fraction_of_gemm_floor']:5.1f}% of GEMM floor"
                    if r["available"]
                    else "  unavailable"
                )
                print(f"{config:16s} {mode:5s} {method:18s} {shown}", flush=True)
    print("\nratios (nested / method: >1 means faster than the Hessian trace; memory likewise)")
    for key, r in results["runs"].items():
        config, mode, _ = key.split("/", 2)
        ref = results["runs"][f"{config}/{mode}/nested"]
        if r["available"] and ref["available"]:
            r["speedup_vs_nested"] = ref["median_s"] / r["median_s"]
            r["memory_ratio_vs_nested"] = (
                ref["peak_bytes"] / r["peak_bytes"] if r["peak_bytes"] > 0 else None
            )
            mem = f"{r['memory_ratio_vs_nested']:5.2f}" if r["memory_ratio_vs_nested"] else "  n/a"
            print(f"{key:44s} time x{r['speedup_vs_nested']:5.2f}  memory x{mem}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "suite" if args.suite else "laplacian"
    tag = "" if not args.configs else "-" + "-".join(args.configs)
    path = out / f"{name}-{results['device']}{tag}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
