"""First-call latency and batch-size changes, before and after the dynamic batch (issue 17).

For each model -- the PINN-sized MLP (D=5, tanh 64x3), the collapsing paper's MLP (D=50,
tanh 768-768-512-512, ``bench/laplacian.py``'s configs) and a physics-informed DeepONet
(``bench/zcs.py``'s: 50 sensors, width 64, depth 3, p=64, M=50 functions, ZCS, terms
{u, u_t, u_xx}) -- and backend (``eager``, ``taylorc`` = inductor after taylorc's
passes), a fresh process calls the compiled operator at three batch sizes and then at
the first again, float32, ``OMP_NUM_THREADS=1``. "before" sets
``op.config.dynamic_batch = False`` (graphs keyed on the full input shape, as before
issue 17), "after" leaves it on. Recorded per call: wall time and graphs built; per graph,
``ctx.latency`` (capture, passes, the batch check's second build, the compile and first
evaluation). The first call includes the process's one-time warm-up of make_fx and
inductor, as a user's first call does; every child gets an empty inductor cache directory
(``TORCHINDUCTOR_CACHE_DIR``), so compile times are cold. Writes ``bench/results/first-call-<device>.json``.

    python bench/first_call.py [--models pinn paper deeponet] [--backends eager taylorc]

``--loop`` measures what a training loop on the default path (``backend="auto"``) feels:
the PINN-sized MLP trained with Adam for ``--steps`` steps on ``-lap u`` at B = 4096
(points redrawn every 100 steps), per-step wall time, in a first process with an empty
inductor cache and a second process that shares the first's cache directory (inductor's
persistent FX graph cache), once with the compile in the background (the default) and
once with ``background_compile=False`` (the behaviour before issue 30: the compile blocks
the call that starts it). Writes ``bench/results/training-loop-<device>.json``.

    python bench/first_call.py --loop [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "pinn": {"D": 5, "widths": [64] * 3, "sizes": [4096, 1000, 2500]},
    "paper": {"D": 50, "widths": [768, 768, 512, 512], "sizes": [128, 100, 200]},
    "deeponet": {"M": 50, "sizes": [1000, 800, 1500]},
}


def make(name):
    """(compile keywords, model, fixed arguments before the points, D)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    cfg = MODELS[name]
    if name == "deeponet":
        from taylorc_contrib.models import DeepONet

        net = DeepONet(50, 2, width=64, depth=3, basis=64)
        f = torch.randn(cfg["M"], 50)
        spec = {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}
        return dict(operator=spec, coords="x t", wrt=1, method="zcs"), net, (f,), 2
    layers, d = [], cfg["D"]
    for w in cfg["widths"]:
        layers += [nn.Linear(d, w), nn.Tanh()]
        d = w
    model = nn.Sequential(*layers, nn.Linear(d, 1))
    return dict(operator="laplacian"), model, (), cfg["D"]


def child(name, backend, mode) -> dict:
    import torch

    import taylorc
    from taylorc import api

    kw, model, fixed, D = make(name)
    op = taylorc.compile(model, kw.pop("operator"), backend=backend, **kw)
    op.config.dynamic_batch = mode == "after"
    sizes = MODELS[name]["sizes"]
    calls = []
    for B in sizes + sizes[:1]:
        x = torch.rand(B, D)
        before = api.BUILD_COUNT[0]
        t0 = time.perf_counter()
        op(*fixed, x)
        calls.append(
            {"B": B, "seconds": time.perf_counter() - t0, "builds": api.BUILD_COUNT[0] - before}
        )
    graphs = [
        {"latency": ctx.latency, "batch": ctx.batch}
        for _, _, ctx in {id(g[2]): g for g in op._graphs.values()}.values()
    ]
    return {"calls": calls, "graphs": graphs, "explain_tail": op.explain().splitlines()[-2:]}


def loop_child(steps: int, background: bool) -> dict:
    import torch

    import taylorc

    _, model, _, D = make("pinn")
    op = taylorc.compile(model, "laplacian")  # the default path: backend="auto"
    op.config.background_compile = background
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, gen = [], torch.Generator().manual_seed(0)
    for step in range(steps):
        if step % 100 == 0:
            x = torch.rand(4096, D, generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = (op(x) + 1.0).square().mean()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    (graph,) = {id(g[0]): g[0] for g in op._graphs.values()}.values()
    ctx = next(iter(op._graphs.values()))[2]
    worst = max(range(steps), key=times.__getitem__)
    return {
        "max_s": times[worst],
        "max_step": worst,
        "median_s": sorted(times)[steps // 2],
        "total_s": sum(times),
        "compiled": graph.compiled is not None,
        "latency": ctx.latency,
    }


def loop(steps: int, out: str | None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    runs = []
    for background in (True, False):
        with tempfile.TemporaryDirectory() as cache:  # cold for the first process, then shared
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
            for process in ("first", "second"):
                cmd = [sys.executable, __file__, "--loop-child", str(steps), str(int(background))]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                result = json.loads(res.stdout.strip().splitlines()[-1])
                runs.append({"background": background, "process": process, **result})
                print(
                    f"background={background!s:5s} {process:6s} longest step "
                    f"{result['max_s']:.2f} s (step {result['max_step']}), median "
                    f"{result['median_s'] * 1e3:.1f} ms, total {result['total_s']:.0f} s, "
                    f"compile {result['latency'].get('compile', float('nan')):.1f} s",
                    flush=True,
                )
    device = f"cpu-{platform.machine()}"
    path = Path(out or Path(__file__).parent / "results" / f"training-loop-{device}.json")
    meta = {
        "device": device,
        "torch": __import__("torch").__version__,
        "threads": 1,
        "dtype": "float32",
        "steps": steps,
        "model": "D=5, tanh 64x3, Adam, -lap u at B=4096, points redrawn every 100 steps",
    }
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", action="store_true", help="the training-loop stall benchmark")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--loop-child", nargs=2, metavar=("STEPS", "BACKGROUND"))
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=["eager", "taylorc"])
    ap.add_argument("--modes", nargs="+", default=["before", "after"])
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "BACKEND", "MODE"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.loop_child:
        print(json.dumps(loop_child(int(args.loop_child[0]), bool(int(args.loop_child[1])))))
        return
    if args.loop:
        loop(args.steps, args.out)
        return
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    runs = []
    for name in args.models:
        for backend in args.backends:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", name, backend, mode]
                with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache per child
                    env["TORCHINDUCTOR_CACHE_DIR"] = cache
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append({"model": name, "backend": backend, "mode": mode, **result})
                secs = ", ".join(
                    f"B={c['B']}: {c['seconds']:.2f}s/{c['builds']}" for c in result["calls"]
                )
                print(f"{name:9s} {backend:8s} {mode:7s} {secs}", flush=True)
    device = f"cpu-{platform.machine()}"
    path = Path(args.out or Path(__file__).parent / "results" / f"first-call-{device}.json")
    meta = {
        "device": device,
        "torch": __import__("torch").__version__,
        "threads": 1,
        "dtype": "float32",
        "note": (
            "fresh process per (model, backend, mode); seconds per call at each batch size "
            "and graphs built ('s/n'); the machine was shared with other helpers' jobs, so "
            "absolute times are noisy (the compile times most)"
        ),
        "models": MODELS,
    }
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
