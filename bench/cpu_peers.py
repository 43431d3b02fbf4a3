"""CPU Laplacian against the peers in one run: taylorc, torch-jet, nested autograd, JAX, folx.

Configs (issue 5): the collapsing paper's MLP (D=50, tanh 768-768-512-512-1, B=128)
and a PINN-sized one (D=5, tanh 64x3, B=4096); float32; evaluation of the
Laplacian of every point. All methods use the same weights (drawn once with numpy
and written to a temporary file) and their outputs are checked against taylorc's
collapsed one.

Methods, torch process: taylorc collapsed Taylor on the eager, inductor and taylorc
backends (its best CPU path is the fastest of them), torch-jet 1.0 eager and under
``torch.compile`` (``jet.laplacian`` + ``capture_graph`` + CSE, vmapped over the
batch, as its own benchmark does), nested autograd (``torch.func`` Hessian trace).
JAX process: the jitted Hessian trace (``vmap(trace(hessian(f)))``) and folx's
jitted forward Laplacian. The two processes alternate ``--rounds`` times; within a
process the methods run in round robin, so load changes hit all alike; medians over
all samples. ``--isolate`` runs each method in a process of its own instead (no method's
threads or caches left warm or busy by another's; the processes still alternate by
framework). ``taylorc/auto`` is the default path after its warm-up and background compile
(for a float32 tanh MLP under ``no_grad``, the CPU whole-MLP kernel);
``taylorc/auto-layered`` the same with ``config.whole_mlp = False`` (the compiled layered
graph, the default path before that kernel). The torch process calls
``taylorc.runtime.cpu.tune_allocator()`` unless
``--default-allocator`` (it then applies to every torch method alike).

Writes ``bench/results/cpu-peers-<device>.json`` and prints the ratios of the
acceptance items. Methods whose package is missing are recorded as unavailable.

    python bench/cpu_peers.py [--rounds 3] [--repeats 7] [--threads 2] [--isolate]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from timing import round_robin, wall_time

CONFIGS = {
    "paper": {"D": 50, "widths": [768, 768, 512, 512], "B": 128},
    "pinn": {"D": 5, "widths": [64, 64, 64], "B": 4096},
}
TORCH_METHODS = [
    "taylorc/auto",
    "taylorc/auto-layered",
    "taylorc/eager",
    "taylorc/inductor",
    "taylorc/taylorc",
    "jet/eager",
    "jet/compile",
    "nested",
]
JAX_METHODS = ["jax/hessian-trace", "folx"]
# method -> what to run (under the timing's grad mode) before its warm-up samples
PREPARE: dict = {}
CHECK_POINTS = 8


def make_weights(cfg: dict, path: str) -> None:
    """Weights ``W_i (d_out, d_in)``, biases, and points, float32, in an ``.npz``."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays, d = {}, cfg["D"]
    for i, w in enumerate([*cfg["widths"], 1]):
        bound = 1 / np.sqrt(d)  # torch.nn.Linear's default initialisation range
        arrays[f"W{i}"] = rng.uniform(-bound, bound, (w, d)).astype(np.float32)
        arrays[f"b{i}"] = rng.uniform(-bound, bound, w).astype(np.float32)
        d = w
    arrays["x"] = rng.random((cfg["B"], cfg["D"])).astype(np.float32)
    np.savez(path, **arrays)


def torch_methods(weights: dict) -> dict:
    """name -> zero-argument callable returning the (B,) Laplacian, for the importable ones."""
    import torch
    from torch import nn

    import taylorc

    n_layers = sum(k.startswith("W") for k in weights)
    layers = []
    for i in range(n_layers):
        w = torch.from_numpy(weights[f"W{i}"])
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(torch.from_numpy(weights[f"b{i}"]))
        layers += [lin, nn.Tanh()] if i < n_layers - 1 else [lin]
    model = nn.Sequential(*layers)
    x = torch.from_numpy(weights["x"])
    fns, ops = {}, {}
    for backend in ("auto", "eager", "inductor", "taylorc"):
        op = ops[backend] = taylorc.compile(model, "laplacian", backend=backend)
        fns[f"taylorc/{backend}"] = lambda op=op: op(x).reshape(-1)
    PREPARE["taylorc/auto"] = lambda: _past_compile(ops["auto"], x)
    # the default path without the CPU whole-MLP kernel: the compiled layered graph
    layered = taylorc.compile(model, "laplacian")
    layered.config.whole_mlp = False
    fns["taylorc/auto-layered"] = lambda: layered(x).reshape(-1)
    PREPARE["taylorc/auto-layered"] = lambda: _past_compile(layered, x)

    def trace_hessian(xi):
        return torch.func.hessian(lambda z: model(z).squeeze())(xi).trace()

    nested = torch.vmap(trace_hessian)
    fns["nested"] = lambda: nested(x)
    from peers import jet_operator

    jet_eager = jet_operator("laplacian", model, x)
    if jet_eager is None:
        return fns
    jet_compiled = torch.compile(jet_eager)
    fns["jet/eager"] = lambda: jet_eager(x)
    fns["jet/compile"] = lambda: jet_compiled(x)
    return fns


def _past_compile(op, x) -> None:
    """Calls past ``backend="auto"``'s warm-up, then its background compile: the default
    path's steady state (the time issue 33 compares to the best path)."""
    for _ in range(60):
        op(x)
    op.wait_for_compile()


def jax_methods(weights: dict) -> dict:
    import jax
    import jax.numpy as jnp

    n_layers = sum(k.startswith("W") for k in weights)
    params = [
        (jnp.asarray(weights[f"W{i}"].T), jnp.asarray(weights[f"b{i}"])) for i in range(n_layers)
    ]

    def f(z):
        for i, (w, b) in enumerate(params):
            z = z @ w + b
            if i < n_layers - 1:
                z = jnp.tanh(z)
        return z[0]

    x = jnp.asarray(weights["x"])
    hessian_trace = jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(f)(z))))
    fns = {"jax/hessian-trace": lambda: hessian_trace(x)}
    try:
        from folx import forward_laplacian
    except ImportError:
        return fns
    folx_laplacian = jax.jit(jax.vmap(lambda z: forward_laplacian(f)(z).laplacian))
    fns["folx"] = lambda: folx_laplacian(x)
    return fns


def child(args) -> None:
    """Time the methods of one framework on one config; print JSON (times and check values)."""
    import numpy as np

    weights = dict(np.load(args.weights))
    if args.framework == "torch":
        import torch

        torch.set_num_threads(args.threads)
        if not args.default_allocator:
            import taylorc

            taylorc.runtime.cpu.tune_allocator()
        fns, block = torch_methods(weights), lambda r: r
        grad_off = torch.no_grad()
    else:
        fns, block = jax_methods(weights), lambda r: r.block_until_ready()
        grad_off = None
    if args.methods:
        fns = {k: f for k, f in fns.items() if k in args.methods}
    sample = partial(wall_time, finish=block)
    if grad_off is not None:
        nested = fns.pop("nested", None)
        with grad_off:
            for k in fns.keys() & PREPARE.keys():
                PREPARE[k]()
            times = round_robin(fns, args.repeats, sample) if fns else {}
            values = {k: np.asarray(fn()[:CHECK_POINTS]).tolist() for k, fn in fns.items()}
        if nested is not None:  # needs autograd
            times.update(round_robin({"nested": nested}, args.repeats, sample))
            values["nested"] = nested()[:CHECK_POINTS].detach().numpy().tolist()
    else:
        times = round_robin(fns, args.repeats, sample)
        values = {k: np.asarray(fn()[:CHECK_POINTS]).tolist() for k, fn in fns.items()}
    print(json.dumps({"times_s": times, "values": values}))


def run_child(args, framework: str, weights: str, methods: list | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--framework", framework, "--weights", weights]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    if methods:
        cmd += ["--methods", *methods]
    if args.default_allocator:
        cmd.append("--default-allocator")
    env = dict(os.environ)
    # XLA's CPU client: the same number of threads as torch
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true"
        f" intra_op_parallelism_threads={args.threads}"
    ).strip()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"{framework} child failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return {"times_s": {}, "values": {}, "error": out.stderr[-3000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(config: str, runs: dict) -> dict:
    """Acceptance ratios of issue 5's CPU item for one config (None where a method is missing)."""
    med = {k: v["median_s"] for k, v in runs.items() if v.get("median_s")}
    taylorc_paths = {k: t for k, t in med.items() if k.startswith("taylorc/")}
    best = min(taylorc_paths, key=taylorc_paths.get)

    def ratio(peer):
        return med[peer] / med[best] if peer in med else None

    out = {"best_taylorc_path": best, "best_taylorc_s": med[best]}
    for peer in ["folx", "jax/hessian-trace", "jet/eager", "jet/compile", "nested"]:
        out[f"{peer}_over_best_taylorc"] = ratio(peer)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two processes")
    p.add_argument("--repeats", type=int, default=7, help="samples per method per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--default-allocator", action="store_true")
    p.add_argument(
        "--isolate",
        action="store_true",
        help="each method in its own process (no round robin beside the other methods)",
    )
    p.add_argument("--methods", nargs="+", help="time only these methods (names as printed)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    device = f"cpu-{platform.machine()}"
    results = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "dtype": "float32",
        "mode": "evaluation",
        "allocator": "glibc default"
        if args.default_allocator
        else "taylorc.runtime.cpu.tune_allocator",
        "rounds": args.rounds,
        "isolated": args.isolate,
        "repeats_per_round": args.repeats,
        "configs": {k: CONFIGS[k] for k in args.configs},
        "runs": {},
        "summary": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            weights = str(Path(tmp) / f"{config}.npz")
            make_weights(CONFIGS[config], weights)
            samples, values, medians = {}, {}, {}
            for r in range(args.rounds):
                for framework in ("torch", "jax") if r % 2 == 0 else ("jax", "torch"):
                    listed = TORCH_METHODS if framework == "torch" else JAX_METHODS
                    listed = [m for m in listed if not args.methods or m in args.methods]
                    if not listed:
                        continue
                    for methods in [[m] for m in listed] if args.isolate else [args.methods]:
                        got = run_child(args, framework, weights, methods)
                        for k, t in got["times_s"].items():
                            samples.setdefault(k, []).extend(t)
                            medians.setdefault(k, []).append(statistics.median(t))
                        values.update(got["values"])
            runs = {}
            taylorc_values = [v for k, v in values.items() if k.startswith("taylorc/")]
            reference = values.get("taylorc/eager", next(iter(taylorc_values), None))
            for k in TORCH_METHODS + JAX_METHODS:
                if k not in samples:
                    runs[k] = {"available": False}
                    continue
                err = None
                if reference is not None:
                    scale = max(abs(v) for v in reference)
                    err = max(abs(a - b) for a, b in zip(values[k], reference)) / scale
                runs[k] = {
                    "available": True,
                    "median_s": statistics.median(samples[k]),
                    "min_s": min(samples[k]),
                    "samples": len(samples[k]),
                    "samples_s": samples[k],
                    # one median per process: processes differ more than calls within one
                    "process_medians_s": medians[k],
                    "median_of_process_medians_s": statistics.median(medians[k]),
                    "max_rel_diff_vs_taylorc": err,
                }
                print(
                    f"{config:5s} {k:18s} {1e3 * runs[k]['median_s']:9.2f} ms"
                    f" (min {1e3 * runs[k]['min_s']:8.2f}, median of process medians"
                    f" {1e3 * runs[k]['median_of_process_medians_s']:8.2f})  rel. diff {err:.1e}"
                )
            results["runs"][config] = runs
            results["summary"][config] = summary = summarise(config, runs)
            for k, v in summary.items():
                if k.endswith("_over_best_taylorc") and v is not None:
                    print(
                        f"{config:5s} {k[: -len('_over_best_taylorc')]} / {summary['best_taylorc_path']} = {v:.2f}"
                    )
    out = Path(args.out) / f"cpu-peers-{device}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
