"""Physics-informed DeepONet derivatives: FuncLoop, DataVect, ZCS, ZCS/Taylor forward, DeepXDE's ZCS.

Leng et al. (J. Comput. Phys. 2024) compare, per training iteration of a
physics-informed DeepONet, the ways of getting the PDE terms of u (M functions x
N points): FuncLoop (a loop over the functions, coordinates as leaves), DataVect
(the aligned (M*N, D) points as one leaf), and ZCS (one scalar leaf per
dimension). This benchmark runs them side by side on the same cartesian
DeepONet (taylorc_contrib.models.DeepONet, tanh, width 64, depth 3, p = 64, 50 sensors,
coordinates (x, t)), plus taylorc's forward route on the shifted graph (the
collapsed Taylor method with wrt) and DeepXDE's own ``LazyGrad`` (PyTorch
backend) when deepxde imports.

Per (M, N, order) and method: the median time of one training iteration
(operator terms, mean squared sum, backward to the weights) after a warm-up
step, and the peak memory of one iteration (CPU: peak RSS growth; CUDA: max
allocated) from a fresh process per method. Order 2 computes {u, u_t, u_xx},
order 4 {u, u_t, u_xxxx}. Writes ``bench/results/zcs-<device>.json``.

    python bench/zcs.py [--M 10 50 160] [--N 1000 8000] [--orders 2 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

from peak_memory import peak_bytes
from timing import round_robin, wall_time

METHODS = ["funcloop", "datavect", "zcs", "taylor", "deepxde_zcs"]
OPERATORS = {
    2: {"u": "u", "u_t": "u_t", "u_xx": "u_xx"},
    4: {"u": "u", "u_t": "u_t", "u_xxxx": "u_xxxx"},
}
SENSORS = 50


def build(M, N, device, dtype):
    import torch

    from taylorc_contrib.models import DeepONet

    torch.manual_seed(0)
    net = DeepONet(SENSORS, 2, width=64, depth=3, basis=64).to(device=device, dtype=dtype)
    f = torch.randn(M, SENSORS, device=device, dtype=dtype)
    x = torch.rand(N, 2, device=device, dtype=dtype)
    return net, f, x


def terms_fn(method, net, order):
    """``(f, x) -> dict of (M, N) terms`` for the method, or None when unavailable."""
    import torch

    import taylorc
    from taylorc.methods.nested import point_leaf_terms
    from taylorc.operators import parse

    spec = OPERATORS[order]
    if method in ("zcs", "taylor", "funcloop"):
        m = {"zcs": "zcs", "taylor": "collapsed", "funcloop": "nested"}[method]
        return taylorc.compile(net, spec, coords="x t", wrt=1, method=m)
    if method == "datavect":
        ops = {k: parse(v, ["x", "t"]) for k, v in spec.items()}

        def datavect(f, x):
            M, N = f.shape[0], x.shape[0]
            points = x.repeat(M, 1).detach().requires_grad_()  # (M*N, 2) leaf
            u = net.aligned(f.repeat_interleave(N, 0), points)
            return {
                k: v.reshape(M, N) for k, v in point_leaf_terms(u, points, ops, ["x", "t"]).items()
            }

        return datavect
    if method == "deepxde_zcs":
        os.environ.setdefault("DDE_BACKEND", "pytorch")
        try:
            import deepxde.zcs as dzcs  # type: ignore[import-not-found]
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            return None
        orders = {"u": (0, 0), "u_t": (0, 1), "u_xx": (2, 0), "u_xxxx": (4, 0)}

        def deepxde(f, x):
            z = [
                torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
                for _ in range(2)
            ]
            u = net(f, x + torch.stack(z))
            lazy = dzcs.LazyGrad({"leaves": z}, u)
            return {k: u if k == "u" else lazy.compute(orders[k]) for k in spec}

        return deepxde
    raise ValueError(method)


def make_step(fn, net, f, x):
    def step():
        net.zero_grad(set_to_none=True)
        loss = sum(v.pow(2).mean() for v in fn(f, x).values())
        loss.backward()

    return step


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    net, f, x = build(args.M, args.N, args.device, getattr(torch, args.dtype))
    methods = [args.method] if args.what == "memory" else args.methods
    steps = {}
    for m in methods:
        fn = terms_fn(m, net, args.order)
        if fn is not None:
            steps[m] = make_step(fn, net, f, x)
    if args.what == "memory":
        if not steps:
            print(json.dumps({"available": False}))
            return
        if hasattr(fn, "graph_for"):  # build the graph outside the measured step
            fn.graph_for(x, (f, x), fn.method_for((f, x), 1))
        net(f[:2], x[:8]).sum().backward()
        net.zero_grad(set_to_none=True)
        print(json.dumps({"peak_bytes": peak_bytes(steps[args.method], cuda)}))
        return
    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
    # one warm-up sample each builds the graphs and warms the caches
    times = round_robin(steps, args.repeats, partial(wall_time, finish=sync), warmup=1)
    print(json.dumps({m: statistics.median(t) for m, t in times.items()}))


def run_child(args, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    for k, v in kw.items():
        cmd += [f"--{k}"] + ([str(x) for x in v] if isinstance(v, list) else [str(v)])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.timeout} s"}
    if out.returncode != 0:
        if out.returncode == -9:
            return {"error": "killed (out of memory)"}
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--M", type=int, nargs="+", default=[10, 50, 160])
    p.add_argument("--N", type=int, nargs="+", default=[1000, 8000])
    p.add_argument("--orders", type=int, nargs="+", default=[2, 4])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true")
    p.add_argument("--what", default="time")
    p.add_argument("--method", default=None)
    p.add_argument("--order", type=int, default=2)
    args = p.parse_args(argv)
    if args.child:
        args.M, args.N = args.M[0], args.N[0]
        return child(args)
    import torch

    device = (
        f"cpu-{platform.machine()}"
        if args.device == "cpu"
        else torch.cuda.get_device_name().replace(" ", "-")
    )
    results = {"device": device, "dtype": args.dtype, "threads": args.threads, "runs": []}
    out = Path(args.out or Path(__file__).parent / "results" / f"zcs-{device}.json")
    for order in args.orders:
        for M in args.M:
            for N in args.N:
                kw = dict(M=M, N=N, order=order)
                for (
                    m
                ) in args.methods:  # one process per method: a slow baseline cannot stall the rest
                    row = {"method": m, "M": M, "N": N, "order": order}
                    times = run_child(args, what="time", methods=[m], **kw)
                    if "error" in times:
                        row["error"] = times["error"]
                    elif m not in times:
                        row["available"] = False
                    else:
                        row["seconds"] = times[m]
                    if not args.no_memory and "seconds" in row:
                        row.update(run_child(args, what="memory", method=m, **kw))
                    results["runs"].append(row)
                    sec = f"{1e3 * row['seconds']:10.1f} ms" if "seconds" in row else " " * 13
                    mem = f"{row['peak_bytes'] / 2**20:9.1f} MiB" if "peak_bytes" in row else ""
                    note = row.get("error", "" if row.get("available", True) else "not available")
                    print(f"order {order} M={M:4d} N={N:5d} {m:12s} {sec} {mem} {note}", flush=True)
                    add_ratios(results)
                    out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive
    print(f"written to {out}")


def add_ratios(results: dict) -> None:
    """FuncLoop / method, per (M, N, order): >1 means faster (time) or smaller (memory)."""
    base = {(r["M"], r["N"], r["order"]): r for r in results["runs"] if r["method"] == "funcloop"}
    for r in results["runs"]:
        b = base.get((r["M"], r["N"], r["order"]))
        if b is None or "seconds" not in r or "seconds" not in b:
            continue
        r["speedup_vs_funcloop"] = b["seconds"] / r["seconds"]
        if r.get("peak_bytes") and b.get("peak_bytes"):
            r["memory_ratio_vs_funcloop"] = b["peak_bytes"] / r["peak_bytes"]


if __name__ == "__main__":
    main()
