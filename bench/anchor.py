"""KFAC* against the anchor's own implementation (kfac-pinns-experiments), on the CPU.

The anchor is Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature for
Physics-Informed Neural Networks" (NeurIPS 2024); its code is public in
``f-dangel/kfac-pinns-experiments``. Nothing of it is committed here: ``--anchor PATH``
names a checkout, which this script imports or runs as it is.

``compare``: both optimisers from the same initialisation on the same batches (5-d
Poisson, 5 -> 64 -> 1 tanh, N_Ω = 3000, N_∂ = 500 redrawn every 100 steps, float64, one
thread): taylorc's ``KFAC(lr="auto")`` (KFAC*) and the anchor's ``KFAC(lr=("auto",
1e-6), initialize_to_identity=True)``, each updating its own copy of the net. The relative
distance of the two parameter vectors after each step shows whether they compute the same
update (rounding-level agreement) and how fast KFAC* amplifies rounding.

``seeds``: the anchor's ``train.py`` exactly as its 5-d sweep
(``exp10_reproduce_poisson5d/sweeps/KFAC_auto.yaml``) runs it, to ``--steps`` steps, one
process per ``--model-seed`` (its data seed stays 0, as in every run of the sweep). Its
logged "L2 Error" is sqrt(mean((u - u*)²)); it is also divided by the root mean square of
u* on the same evaluation points, giving the relative L2 error that ``bench/kfac.py steps``
reports for taylorc. Results keyed ``anchor/steps/poisson-damping<λ>-ema<β>``.

Setup (the anchor pins torch 2.2; only the modules its KFAC runs import are needed, and
its unused optional imports, wandb and hessianfree, are given empty stand-ins here)::

    pip install einops tueplots palettable unfoldNd && pip install --no-deps backpack-for-pytorch
    python bench/anchor.py compare --anchor PATH --steps 300 --seed 1
    python bench/anchor.py seeds --anchor PATH --steps 3000 --model-seeds 1 2 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from kfac import RESULTS, merge, problem

from taylorc_contrib.demos.common import SECOND_ORDER_DEFAULTS
from taylorc_contrib.demos.poisson import source

# The stand-ins for the anchor's imports that its KFAC runs never call.
STUBS = {
    "wandb/__init__.py": "def init(*a, **k):\n    pass\n\n\ndef log(*a, **k):\n    pass\n",
    "hessianfree/__init__.py": "",
    "hessianfree/optimizer.py": "class HessianFree:\n    pass\n",
}
# Runs the anchor's train.py with its L2 error also printed relative to u*'s RMS.
RELATIVE = """
import torch
from kfac_pinns_exp import train
from kfac_pinns_exp.pinn_utils import l2_error

def relative(model, X, u):
    l2 = l2_error(model, X, u)
    print(f"relative L2: {l2 / u(X).pow(2).mean().sqrt().item():.9e}", flush=True)
    return l2

train.l2_error = relative
torch.set_num_threads(1)
train.main()
"""


def shims(directory: Path) -> Path:
    """Write the stand-ins and the relative-error runner under ``directory``; returns the runner."""
    for name, text in STUBS.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    runner = directory / "run_relative.py"
    runner.write_text(RELATIVE)
    return runner


def compare(args) -> dict:
    """Relative parameter distance between taylorc's KFAC* and the anchor's, step by step."""
    sys.path[:0] = [str(args.anchor), str(shims(Path(tempfile.mkdtemp())).parent)]
    from kfac_pinns_exp.optim.kfac import KFAC as AnchorKFAC

    import taylorc

    damping, ema = _hyper(args)
    torch.manual_seed(args.seed)
    model, residuals, sample, exact, _ = problem("poisson", [64], torch.Generator().manual_seed(0))
    theirs = copy.deepcopy(model)
    ours = taylorc.optim.KFAC(model, residuals, lr="auto", damping=damping, ema=ema)
    anchor = AnchorKFAC(
        list(theirs),
        damping=damping,
        lr=("auto", 1e-6),
        ema_factor=ema,
        initialize_to_identity=True,
        equation="poisson",
    )
    distance = []
    for k in range(args.steps):
        if k % 100 == 0:
            points = sample()
        ours.step(points)
        xi, xb = points["interior"], points["boundary"]
        anchor.zero_grad()
        anchor.step(xi, source(xi), xb, exact(xb))
        a, b = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, theirs))
        distance.append(((a - b).norm() / b.norm()).item())
        if k < 5 or (k + 1) % 50 == 0:
            print(f"step {k + 1}: relative parameter distance {distance[-1]:.3e}", flush=True)
    key = f"anchor/compare-seed{args.seed}-damping{damping:g}-ema{ema:g}"
    return {key: {"distance": distance, "damping": damping, "ema": ema, "seed": args.seed}}


def seeds(args) -> dict:
    """The anchor's train.py per model seed; the relative L2 error at its logged steps."""
    damping, ema = _hyper(args)
    runner = shims(Path(tempfile.mkdtemp()))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(args.anchor), str(runner.parent)])
    logs = {}
    for seed in args.model_seeds:
        cmd = [sys.executable, str(runner), *_train_args(args.steps, damping, ema, seed)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        logs[str(seed)] = parse(out)
        print(f"model seed {seed}: relative L2 {logs[str(seed)]['error'][-1]:.3e}", flush=True)
    finals = [log["error"][-1] for log in logs.values()]
    print(f"median over {len(finals)} seeds: {statistics.median(finals):.3e}")
    key = f"anchor/steps/poisson-damping{damping:g}-ema{ema:g}"
    return {key: {"seeds": logs, "steps": args.steps, "hyper": {"damping": damping, "ema": ema}}}


def _train_args(steps: int, damping: float, ema: float, seed: int) -> list[str]:
    """The arguments of the anchor's 5-d KFAC* sweep, with λ, β, steps and the model seed."""
    return [
        "--optimizer=KFAC",
        "--batch_frequency=100",
        "--boundary_condition=cos_sum",
        "--dim_Omega=5",
        "--N_Omega=3000",
        "--N_dOmega=500",
        f"--KFAC_ema_factor={ema}",
        f"--KFAC_damping={damping}",
        "--KFAC_initialize_to_identity",
        "--KFAC_lr=auto",
        f"--num_steps={steps}",
        "--max_logs=8",
        f"--model_seed={seed}",
    ]


def parse(out: str) -> dict:
    """``{step, error}`` lists from the anchor's log: its "Step: k" line follows each
    "relative L2" line; its step k is the state after k + 1 updates."""
    errors = [float(x) for x in re.findall(r"relative L2: (\S+)", out)]
    steps = [int(x) + 1 for x in re.findall(r"Step: (\d+),", out)]
    if not errors or len(errors) != len(steps):
        raise RuntimeError(f"cannot read the anchor's log:\n{out[-2000:]}")
    return {"step": steps, "error": errors}


def _hyper(args) -> tuple[float, float]:
    defaults = SECOND_ORDER_DEFAULTS["kfac*"]
    damping = defaults["damping"] if args.damping is None else args.damping
    return damping, defaults["ema"] if args.ema is None else args.ema


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["compare", "seeds"])
    p.add_argument("--anchor", type=Path, required=True, help="a kfac-pinns-experiments checkout")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=1, help="`compare`: the initialisation seed")
    p.add_argument("--model-seeds", type=int, nargs="+", default=[1], help="`seeds`")
    p.add_argument("--damping", type=float, help="λ (default: the demos' KFAC* λ)")
    p.add_argument("--ema", type=float, help="β (default: the demos' KFAC* β)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON to merge into")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for key, value in {"compare": compare, "seeds": seeds}[args.what](args).items():
        merge(results.setdefault(key, {}), value)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results merged into {args.results}")


if __name__ == "__main__":
    main()
