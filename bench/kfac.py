"""KFAC for PINNs (taylorc.optim) against ENGD, Adam and Adam -> L-BFGS, on the CPU.

``curves``: equal wall time, side by side in one process (one thread): each method
trains for ``--seconds`` of training time (evaluation excluded) on the 5-d Poisson
problem (5 -> 64 -> 1 tanh, N_Ω = 3000, N_∂ = 500 redrawn every 100 steps, float64;
Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 4) or the (4+1)-d heat problem
(examples/heat.py); the relative L2 error on 30,000 fixed points is logged against
time and step. Adam's learning rate is tuned on the grid ``--adam-lrs`` by short runs
(``--tune-seconds`` each); Adam -> L-BFGS spends half the budget in each.

``steps``: KFAC* for ``--steps`` steps, the error every 250 steps (step-indexed), one run
per network-initialisation seed in ``--seeds`` (same data stream; ``--vary-data``: each its
own), at ``HYPER``'s λ and β or
``--damping``/``--ema``; results keyed ``steps/<problem>-damping<λ>-ema<β>``.

``cost``: seconds per step of KFAC*, KFAC (line search) and ENGD relative to an Adam
step on the same batch (Poisson, N = 3000/500), for nets of 449, 10,065 and 116,864
parameters, timed round-robin (``bench/timing.py``); ratios are medians of per-round
ratios. Each sample is a block of ``--block`` consecutive steps (the mean), after one
untimed step, as in training: a single step right after another method's (larger)
step runs on cold caches and freshly faulted memory, which on this CPU doubled
Adam's 449-parameter step (9.1 ms against 4.3 ms back to back) and halved the ratios.
``--before PATH`` adds the KFAC* of the checkout at PATH (``git archive REV taylorc |
tar -x -C PATH``) to the same rounds; ``--clock cpu`` times thread CPU time
(robust to preemption on a shared machine, not to memory-bandwidth contention).

``split``: where a KFAC* step's time goes (CPU time per part, see :func:`split`).

Results merge into ``bench/results/kfac-<device>.json`` (or ``--results PATH``: runs that
go side by side write separate files); ``plot`` draws
``docs/img/kfac-<device>.png``.

    python bench/kfac.py curves --problem poisson --seconds 600
    python bench/kfac.py steps --steps 10000 --seeds 1 2 3   # about 8 min per seed
    python bench/kfac.py steps --steps 3000 --seeds 1 2 --damping 1e-11 --ema 0.771
    python bench/kfac.py cost --repeats 5
    python bench/kfac.py cost --repeats 7 --before /tmp/before --clock cpu
    python bench/kfac.py split --nets 449 10065 --repeats 15
    python bench/kfac.py plot
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from timing import round_robin

from taylorc_contrib.demos.common import SECOND_ORDER_DEFAULTS, boundary_points, mlp, relative_l2
from taylorc_contrib.demos.poisson import exact as poisson_exact
from taylorc_contrib.demos.poisson import interior_points, source

ROOT = Path(__file__).parent
DEVICE = f"cpu-{platform.machine()}"
RESULTS = ROOT / "results" / f"kfac-{DEVICE}.json"
METHODS = ["kfac*", "kfac", "engd", "adam", "adam-lbfgs"]
NETS = {"449": [64], "10065": [64, 64, 48, 48], "116864": [256, 256, 128, 128]}
DT = torch.float64
# λ, β (and μ) of the second-order methods: the demos' (where they come from is said there).
# backend "auto": the linearisation compiled after 10 steps, as in the demos (pure residuals)
HYPER = {
    "kfac*": dict(lr="auto", backend="auto", **SECOND_ORDER_DEFAULTS["kfac*"]),
    "kfac": dict(lr="line_search", backend="auto", **SECOND_ORDER_DEFAULTS["kfac"]),
    "engd": {
        "backend": "auto",
        **{k: SECOND_ORDER_DEFAULTS["engd"][k] for k in ("damping", "ema")},
    },
}


def _heat_module():
    spec = importlib.util.spec_from_file_location("heat", ROOT.parent / "examples" / "heat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def problem(name: str, widths: list[int], gen: torch.Generator, taylorc=None):
    """``(model, residuals, sample, exact, D)`` of ``"poisson"`` (5-d) or ``"heat"`` (4+1);
    ``taylorc``: the package to compile with (default: this checkout's)."""
    if taylorc is None:
        import taylorc

    if name == "poisson":
        D = 5
        model = mlp(D, widths).to(DT)
        lap = taylorc.compile(model, "laplacian")
        residuals = {
            "interior": lambda x: -lap(x) - source(x),
            "boundary": lambda x: model(x) - poisson_exact(x),
        }

        def sample():
            return {
                "interior": interior_points(3000, D, gen, DT),
                "boundary": boundary_points(500, D, DT, gen),
            }

        return model, residuals, sample, poisson_exact, D
    heat = _heat_module()
    coords, spec = heat.PROBLEMS["4+1"]
    D = 5
    model = mlp(D, widths).to(DT)
    op = taylorc.compile(model, spec, coords=coords, params={"kappa": 0.25})

    def exact(x):
        return heat.exact(x, "4+1", 0.25)

    residuals = {"interior": op, "boundary": lambda x: model(x) - exact(x)}
    args = argparse.Namespace(interior=3000, boundary=500)
    return model, residuals, heat.sampler(args, D, gen, DT), exact, D


def make_step(method: str, model, residuals, lr: float | None = None, optim=None, hyper=None):
    """``step(points) -> loss`` of one method (Adam: lr; L-BFGS: a closure step);
    ``optim``: the ``taylorc.optim`` module to take KFAC and ENGD from; ``hyper``: keyword
    arguments that replace the method's entries of ``HYPER``."""
    if optim is None:
        from taylorc import optim
    if method in HYPER:
        kind = optim.ENGD if method == "engd" else optim.KFAC
        kwargs = {**HYPER[method], **(hyper or {})}
        if "backend" not in inspect.signature(kind).parameters:  # an older checkout's
            kwargs.pop("backend", None)
        opt = kind(model, residuals, **kwargs)
    else:
        return _first_order(method, model, residuals, lr)
    return lambda points: sum(opt.step(points).values())


def _first_order(method, model, residuals, lr):
    if method == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.LBFGS(
            model.parameters(), lr=1.0, history_size=50, line_search_fn="strong_wolfe"
        )

    def step(points):
        def closure():
            opt.zero_grad()
            loss = sum(0.5 * f(points[k]).pow(2).mean() for k, f in residuals.items())
            loss.backward()
            return loss

        if method == "adam":
            loss = closure()
            opt.step()
            return loss.item()
        return opt.step(closure).item()

    return step


def train(
    method,
    name,
    seconds,
    lr=None,
    eval_every=5.0,
    seed=1,
    max_steps=None,
    eval_steps=None,
    hyper=None,
    data_seed=0,
):
    """Train for ``seconds`` of training time (or ``max_steps``); returns ``{time, step, error}``
    lists, logged every ``eval_every`` seconds (or every ``eval_steps`` steps); ``seed``: the
    network's initialisation; ``data_seed``: the stream of batches and evaluation points
    (default 0: the same in every run); ``hyper``: see ``make_step``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(data_seed)
    model, residuals, sample, exact, D = problem(name, [64], gen)
    x_eval = torch.rand(30_000, D, dtype=DT, generator=gen)
    phases = [("adam", seconds / 2), ("lbfgs", seconds / 2)] if method == "adam-lbfgs" else None
    phases = phases or [(method, seconds)]
    log = {"time": [], "step": [], "error": []}
    clock, k, next_eval, points = 0.0, 0, 0.0, None
    for phase, budget in phases:
        step = make_step(phase, model, residuals, lr, hyper=hyper)
        end = clock + budget
        while clock < end and (max_steps is None or k < max_steps):
            due = k % eval_steps == 0 if eval_steps else clock >= next_eval
            if due:
                with torch.no_grad():
                    err = relative_l2(model(x_eval), exact(x_eval))
                for key, v in (("time", clock), ("step", k), ("error", err)):
                    log[key].append(v)
                next_eval += eval_every
            if k % 100 == 0 and (phase != "lbfgs" or points is None):
                points = sample()
            t0 = time.perf_counter()
            try:
                loss = step(points)
            except FloatingPointError as e:  # KFAC*'s refusal of a diverged quadratic model
                print(f"{method}: stopped at step {k}: {e}", flush=True)
                loss = math.nan
            clock += time.perf_counter() - t0
            k += 1
            if not math.isfinite(loss):
                log["diverged_at"] = k
                break
        if "diverged_at" in log:
            break
    with torch.no_grad():
        err = relative_l2(model(x_eval), exact(x_eval))
    log["time"].append(clock), log["step"].append(k), log["error"].append(err)
    return log


def curves(args) -> dict:
    out = {}
    lr = None
    if {"adam", "adam-lbfgs"} & set(args.methods):
        tuned = {
            a: train("adam", args.problem, args.tune_seconds, a)["error"][-1] for a in args.adam_lrs
        }
        lr = min(tuned, key=tuned.get)
        out["adam_tuning"] = {"seconds": args.tune_seconds, "final_error": tuned, "lr": lr}
        print("adam lr tuning:", tuned, "->", lr, flush=True)
    for m in args.methods:
        log = train(m, args.problem, args.seconds, lr)
        out[m] = log
        print(f"{m:10s} {log['step'][-1]:6d} steps  relative L2 {log['error'][-1]:.2e}", flush=True)
    return {f"curves/{args.problem}": dict(out, seconds=args.seconds)}


def steps(args) -> dict:
    """KFAC* by step on the paper's data regime: the step-indexed acceptance numbers, one run
    per initialisation seed (``--seeds``), at ``HYPER`` or ``--damping``/``--ema``; with
    ``--vary-data`` each run's data stream is seeded by its initialisation seed too (its own
    batches and evaluation points: independent runs), else every run has data seed 0."""
    hyper = {k: v for k, v in (("damping", args.damping), ("ema", args.ema)) if v is not None}
    out = {"steps": args.steps, "hyper": {**HYPER["kfac*"], **hyper}, "seeds": {}}
    out["data"] = "seeded by the initialisation seed" if args.vary_data else "data seed 0"
    for seed in args.seeds:
        log = train(
            "kfac*",
            args.problem,
            math.inf,
            seed=seed,
            max_steps=args.steps,
            eval_steps=250,
            hyper=hyper,
            data_seed=seed if args.vary_data else 0,
        )
        out["seeds"][str(seed)] = log
        at = {k: e for k, e in zip(log["step"], log["error"]) if k % 1000 == 0}
        print(f"seed {seed}: " + "  ".join(f"{k}: {e:.2e}" for k, e in at.items()), flush=True)
    return {steps_key(args.problem, out["hyper"]) + ("-vary-data" if args.vary_data else ""): out}


def steps_key(problem: str, hyper: dict) -> str:
    """The results key of ``steps`` runs: the problem and KFAC*'s λ and β."""
    return f"steps/{problem}-damping{hyper['damping']:g}-ema{hyper['ema']:g}"


def load_before(path: str):
    """The ``taylorc`` package of another checkout (``path/taylorc``), imported as
    ``taylorc_before`` beside this one (its modules import each other relatively)."""
    import importlib.util
    import sys

    root = Path(path) / "taylorc"
    spec = importlib.util.spec_from_file_location(
        "taylorc_before", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["taylorc_before"] = module
    spec.loader.exec_module(module)
    return module


def cost(args) -> dict:
    """Seconds per step against Adam on the same batch, timed round-robin; with
    ``--before``, the other checkout's KFAC* in the same rounds (``kfac*-before``)."""
    before = load_before(args.before) if args.before else None
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    def sample_time(fn):
        fn()  # the block's first step follows another method's: untimed
        t0 = clock()
        for _ in range(args.block):
            fn()
        return (clock() - t0) / args.block

    rows = []
    for label, widths in NETS.items():
        if args.nets and label not in args.nets:
            continue
        gen = torch.Generator().manual_seed(0)
        fns = {}
        methods = ["adam", "kfac*"] + (["kfac*-before"] if before else [])
        methods += [m for m in ("kfac", "engd") if m in args.methods]
        for m in methods:
            if m == "engd" and label != "449":
                continue
            torch.manual_seed(1)
            pkg = before if m.endswith("-before") else None
            model, residuals, sample, _, _ = problem("poisson", widths, gen, pkg)
            step = make_step(m.removesuffix("-before"), model, residuals, 1e-4, pkg and pkg.optim)
            points = sample()
            fns[m] = lambda step=step, points=points: step(points)
        times = round_robin(fns, args.repeats, sample=sample_time, warmup=2)
        med = {m: statistics.median(t) for m, t in times.items()}
        # per-round ratios pair samples taken milliseconds apart (robust to load drift)
        ratio = {
            m: statistics.median(a / b for a, b in zip(t, times["adam"])) for m, t in times.items()
        }
        params = sum(p.numel() for p in model.parameters())
        row = {"params": params, "seconds": med, "vs_adam": ratio}
        rows.append(row)
        print(params, {m: f"{v:.2f}x" for m, v in row["vs_adam"].items()}, flush=True)
    out = {
        "repeats": args.repeats,
        "block": args.block,
        "batch": [3000, 500],
        "clock": args.clock,
        "rows": rows,
    }
    if args.before:
        out["before"] = str(args.before)
    if args.note:
        out["note"] = args.note
    return {"cost" if args.clock == "wall" else f"cost/{args.clock}": out}


def split(args) -> dict:
    """Where a KFAC* step's time goes (thread CPU time, best of ``--repeats``), against an
    Adam step on the same batch: linearisation (forward through the layer graph and the
    reverse pass for g), factors, gradient (one part with the linearisation once it is
    compiled: ``taylorc.optim.compiled``), solver set-up (4 eigh per layer), the solve,
    and KFAC*'s 2x2 system (two exact JVPs per term); "rest" is the step minus the parts
    (EMA, Python, freeing memory)."""
    out = {}
    for label, widths in NETS.items():
        if not args.nets or label in args.nets:
            params, ms = _split_one(widths, args.repeats)
            out[str(params)] = {
                "ms": ms,
                "vs_adam": {k: v / ms["adam step"] for k, v in ms.items()},
            }
            print(params, {k: f"{v:.1f} ms ({v / ms['adam step']:.2f}x)" for k, v in ms.items()})
    return {"cost-split": dict(out, repeats=args.repeats, clock="thread CPU time, best of repeats")}


def _split_one(widths, repeats):
    from taylorc.optim import KFAC
    from taylorc.optim.factors import layer_factors, layer_gradient
    from taylorc.optim.gramian import layout
    from taylorc.optim.step_rules import kfac_star

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        return min(times)

    torch.manual_seed(1)
    model, residuals, sample, _, _ = problem("poisson", widths, torch.Generator().manual_seed(0))
    points = sample()
    opt = KFAC(model, residuals, **HYPER["kfac*"])
    for _ in range(12):  # past the linearisation's compile (backend "auto": after 10 calls)
        opt.step(points)
    torch.manual_seed(1)
    adam_model, adam_res, _, _, _ = problem("poisson", widths, torch.Generator().manual_seed(0))
    adam = make_step("adam", adam_model, adam_res, 1e-4)
    for _ in range(12):  # past the operator's compile (backend "auto": after 10 calls)
        adam(points)
    lins = list(opt.linearize(points).values())
    group = opt.param_groups[0]
    layers = [layer.weight for layer in layout(lins, model)]

    def gradient():
        return {
            w: sum(layer_gradient(lin.layers[w], lin.r) for lin in lins if w in lin.layers)
            for w in layers
        }

    grad = gradient()
    Delta = {w: -opt._solvers[w].solve(grad[w]) for w in layers}
    prev = {w: torch.randn_like(v) for w, v in Delta.items()}
    parts = {
        "adam step": lambda: adam(points),
        "kfac* step": lambda: opt.step(points),
        "linearize": lambda: opt.linearize(points),
        "factors": lambda: [layer_factors(L) for lin in lins for L in lin.layers.values()],
        "gradient": gradient,
    }
    if all(lin.factors is not None for lin in lins):  # compiled: made with the columns
        parts = {k: v for k, v in parts.items() if k not in ("factors", "gradient")}
        parts["linearize + factors + gradient"] = parts.pop("linearize")
    parts |= {
        "invert (eigh)": lambda: opt._invert(group),
        "solve": lambda: {w: opt._solvers[w].solve(grad[w]) for w in layers},
        "kfac* 2x2 (JVPs)": lambda: kfac_star(lins, grad, Delta, prev, 1e-9),
    }
    ms = {k: 1e3 * best(f) for k, f in parts.items()}
    ms["rest"] = ms["kfac* step"] - sum(
        v for k, v in ms.items() if k not in ("adam step", "kfac* step")
    )
    return sum(p.numel() for p in model.parameters()), ms


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in results if k.startswith("curves/")]
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 8), squeeze=False)
    for j, key in enumerate(panels):
        for m in METHODS:
            log = results[key].get(m)
            if log:
                axes[0, j].loglog(log["time"][1:], log["error"][1:], label=m)
                axes[1, j].loglog(log["step"][1:], log["error"][1:], label=m)
        runs = results.get(steps_key(key.split("/")[1], HYPER["kfac*"]), {}).get("seeds", {})
        for seed, long in runs.items():
            axes[1, j].loglog(
                long["step"][1:],
                long["error"][1:],
                "k--",
                lw=0.8,
                label=f"kfac* by step, seed {seed}",
            )
        axes[0, j].set_title(f"{key.split('/')[1]}: {results[key]['seconds']:.0f} s per method")
        axes[0, j].set_xlabel("training time [s] (2-core CPU, 1 thread)")
        axes[1, j].set_xlabel("step")
        for ax in axes[:, j]:
            ax.set_ylabel("relative L2 error")
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = ROOT.parent / "docs" / "img" / f"kfac-{DEVICE}.png"
    fig.savefig(path, dpi=100)
    print(f"figure saved to {path}")


def merge(old: dict, new: dict) -> None:
    """Merge a run's results into the stored ones, in place: a rerun of some methods keeps
    the others, and a ``steps`` run of some seeds keeps the other seeds (each seed's log has
    its own steps; ``steps`` becomes the longest)."""
    seeds = {**old.get("seeds", {}), **new.get("seeds", {})}
    old.update(new)
    if seeds:
        old["seeds"] = seeds
        old["steps"] = max(log["step"][-1] for log in seeds.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["curves", "steps", "cost", "split", "plot"])
    p.add_argument("--problem", choices=["poisson", "heat"], default="poisson")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--tune-seconds", type=float, default=20.0)
    p.add_argument("--adam-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10_000, help="for `steps`")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="`steps`: init seeds")
    p.add_argument("--damping", type=float, help="`steps`: KFAC*'s λ instead of HYPER's")
    p.add_argument("--ema", type=float, help="`steps`: KFAC*'s β instead of HYPER's")
    p.add_argument("--vary-data", action="store_true", help="`steps`: data seed = init seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before", help="`cost`: also time the KFAC* of the checkout at this path")
    p.add_argument("--block", type=int, default=5, help="`cost`: back-to-back steps a sample")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="`cost`'s clock")
    p.add_argument("--nets", nargs="+", choices=list(NETS), help="`cost`: only these nets")
    p.add_argument("--note", help="`cost`: a note stored with the results (machine load)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON to merge into")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.results
    results = json.loads(path.read_text()) if path.exists() else {"device": DEVICE}
    if args.what == "plot":
        return plot(results)
    run = {"curves": curves, "steps": steps, "cost": cost, "split": split}[args.what]
    for key, value in run(args).items():
        merge(results.setdefault(key, {}), value)
    results["threads"] = args.threads
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results merged into {path}")


if __name__ == "__main__":
    main()
