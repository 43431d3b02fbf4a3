"""Physics-informed DeepONet for diffusion-reaction, trained with ENGD-Woodbury (or Adam).

The operator-learning benchmark of Wang, Wang, Perdikaris (Sci. Adv. 2021), of
the ZCS paper (Leng et al., J. Comput. Phys. 2024, Sec. 4.2) and of DeepXDE's
PI-DeepONet examples: learn the map from the source f to the solution u of

    u_t = D u_xx + k u^2 + f(x),   (x, t) in [0, 1]^2,   u(x, 0) = 0,  u(0, t) = u(1, t) = 0,

with D = k = 0.01 and f drawn from a Gaussian random field (squared-exponential
kernel, length scale 0.2) sampled at 50 sensors. No solution data is used: the loss is
the mean squared PDE residual at collocation points; the initial and boundary data are
built into the network (u = x (1 - x) t * DeepONet(f)(x, t)). The residual's terms u,
u_t, u_xx come from ONE compiled operator. The reference for held-out functions is a
Crank-Nicolson finite-difference solver written here (the second-order u_xx matrix from
``taylorc.operators.discretize``). Prints the relative L2 error on the test functions
and saves a figure.

Optimiser (default): ENGD with the Woodbury solve (Guzmán-Cordero, Dangel, Goldshlager,
Zeinhofer, NeurIPS 2025), float64, on 500 fresh (function, point) pairs a step, one pair
a row (:class:`PairRows`: both MLPs run on the rows, so the Taylor graph's layers carry
every weight), λ = 1e-4, backtracking, 240 s, and the moving average of the iterates
(decay 0.9) as the result. The kernel matrix is 500 x 500 against P = 28,416
parameters, so the sample-space solve is the one that pays (dense ENGD would factor a
P x P Gramian). Chosen by measurement (alone, 2-core EPYC, about 240 s each, seeds 0 and
1): ENGD-Woodbury with the average 2.0e-3 and 2.7e-3 (3.5e-3 and 3.1e-3 at 2.7x the step
time, before the kernel skipped the branch's zero derivative columns; without the average
4.6e-3 and 1.5e-2 at that step time: each step fits its own 500 rows, and the last batch
decides the last iterate), Adam 1.3e-2 and 9.3e-3 (38,000 steps of M = 20 functions x N = 500 points in the product layout with ZCS,
float32, cosine decay); 250 or 1,000 rows a step and λ = 1e-5 or 1e-3 did worse, and
SPRING with momentum 0.9 much worse (docs/kfac.md, "Every example on its optimiser").
``--optimizer adam`` runs Adam with ZCS (``method="zcs"``, ``wrt=1``: one reverse sweep
for all M x N pairs).

    python examples/deeponet_diffusion_reaction.py [--seconds 240 --rows 500]
    python examples/deeponet_diffusion_reaction.py --optimizer adam [--steps 8000]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import taylorc
from taylorc.optim import ENGD
from taylorc_contrib.demos.common import agg_figure, relative_l2, train_second_order
from taylorc_contrib.models import DeepONet

DIFFUSION, REACTION = 0.01, 0.01
AVERAGE = 0.9  # decay of ENGD's moving average of the iterates (module docstring)


def gaussian_random_field(n: int, grid: torch.Tensor, length: float, gen) -> torch.Tensor:
    """n samples of a zero-mean GRF with kernel exp(-|x-y|^2 / (2 length^2)) on ``grid``: (n, G)."""
    d = grid[:, None] - grid[None, :]
    K = torch.exp(-0.5 * (d / length) ** 2) + 1e-10 * torch.eye(len(grid), dtype=grid.dtype)
    L = torch.linalg.cholesky(K)
    return torch.randn(n, len(grid), dtype=grid.dtype, generator=gen) @ L.T


def interpolate(
    values: torch.Tensor, grid: torch.Tensor, x: torch.Tensor, paired: bool = False
) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values (M, G)`` on a uniform ``grid`` at ``x (N,)``:
    ``(M, N)``; ``paired`` (M = N): row m at ``x[m]`` only, ``(M,)``."""
    h = grid[1] - grid[0]
    i = ((x - grid[0]) / h).floor().clamp(0, len(grid) - 2).long()
    w = (x - grid[i]) / h
    if paired:
        if len(values) != len(x):
            raise ValueError(f"paired: {len(values)} rows of values for {len(x)} points")
        m = torch.arange(len(x))
        return values[m, i] * (1 - w) + values[m, i + 1] * w
    return values[:, i] * (1 - w) + values[:, i + 1] * w


def solve_fd(f: torch.Tensor, grid: torch.Tensor, steps: int, times: int) -> torch.Tensor:
    """Crank-Nicolson for diffusion, explicit reaction and source: ``f (M, G)`` -> ``u (M, times, G)``.

    Second order in space; the reaction term k u^2 is small (k = 0.01), so its
    first-order explicit treatment with ``steps`` time steps is far below the
    network's error.
    """
    G = len(grid)
    lap = taylorc.operators.discretize("u_xx", [grid], coords="x").to_dense()
    lap[[0, -1]] = 0.0  # boundary rows: u stays 0
    dt = 1.0 / steps
    eye = torch.eye(G, dtype=f.dtype)
    lhs = torch.linalg.lu_factor(eye - 0.5 * dt * DIFFUSION * lap)
    rhs = eye + 0.5 * dt * DIFFUSION * lap
    src = f.clone()
    src[:, [0, -1]] = 0.0
    u = torch.zeros_like(f)
    out = [u]
    every = steps // (times - 1)
    for n in range(1, steps + 1):
        b = u @ rhs.T + dt * (REACTION * u**2 + src)
        b[:, [0, -1]] = 0.0
        u = torch.linalg.lu_solve(*lhs, b.T).T
        if n % every == 0:
            out.append(u)
    return torch.stack(out, 1)


class HardConstrained(torch.nn.Module):
    """``u = x (1 - x) t * net(f)(x, t)``: zero initial and boundary data by construction."""

    def __init__(self, net: DeepONet):
        super().__init__()
        self.net = net

    def forward(self, sensors: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        x, t = points[:, 0], points[:, 1]
        return (x * (1 - x) * t) * self.net(sensors, points)


class PairRows(torch.nn.Module):
    """The hard-constrained DeepONet at R (function, point) pairs, one pair a row.

    ``forward(z (R, sensors + 3)) -> (R, 1)``: row ``[f(sensors), x, t, f(x)]`` gives
    ``x (1 - x) t * DeepONet(f)(x, t)`` (DeepONet's "aligned" layout); the last column, the
    source at the row's point, is read by the residual, not the network. Both MLPs then run
    on the rows, so every weight is a linear layer of the rows' Taylor graph, which the
    natural-gradient optimisers need (in the (M, N) product layout the branch MLP runs on
    the M functions, not on the rows).
    """

    def __init__(self, net: DeepONet, sensors: int):
        super().__init__()
        self.net, self.sensors = net, sensors

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s, points = z[:, : self.sensors], z[:, self.sensors : self.sensors + 2]
        x, t = points[:, :1], points[:, 1:]
        return x * (1 - x) * t * self.net.aligned(s, points).unsqueeze(-1)


# each optimiser's options and their defaults (module docstring)
ENGD_OPTIONS = dict(seconds=240.0, engd_steps=100_000, rows=500, damping=1e-4)
ADAM_OPTIONS = dict(steps=8000, functions=20, points=500, lr=1e-3, method="zcs")


def parse_args(argv=None):
    """The example's options; ``--optimizer`` picks ENGD-Woodbury (default) or Adam, and an
    option of the other one is an error (it would do nothing)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=["engd-woodbury", "adam"], default="engd-woodbury")
    helps = dict(
        seconds="ENGD: training budget",
        engd_steps="ENGD: step cap",
        rows="ENGD: (function, point) pairs a step",
        damping="ENGD: lambda",
        steps="Adam: iterations",
        functions="Adam: M, functions per step",
        points="Adam: N, collocation points per step",
        lr="Adam: learning rate",
        method="Adam: zcs, collapsed, auto or nested",
    )
    for name, default in {**ENGD_OPTIONS, **ADAM_OPTIONS}.items():  # None: not given
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(default), help=f"{helps[name]} ({default})")
    p.add_argument("--train-functions", type=int, default=1000)
    p.add_argument("--test-functions", type=int, default=20)
    p.add_argument("--sensors", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default="deeponet_diffusion_reaction.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    adam = args.optimizer == "adam"
    mine, other = (ADAM_OPTIONS, ENGD_OPTIONS) if adam else (ENGD_OPTIONS, ADAM_OPTIONS)
    given = ["--" + k.replace("_", "-") for k in other if getattr(args, k) is not None]
    if given:
        p.error(f"{', '.join(given)}: not options of --optimizer {args.optimizer}")
    for k, v in mine.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> float:
    """Train, print the relative L2 error on held-out functions, save the figure."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    # ENGD's kernel matrix (nearly singular) is built and solved in float64
    dtype = torch.float64 if args.optimizer == "engd-woodbury" else torch.float32
    fine = torch.linspace(0, 1, 101, dtype=torch.float64)
    sensors = torch.linspace(0, 1, args.sensors, dtype=torch.float64)
    fields = gaussian_random_field(args.train_functions + args.test_functions, fine, 0.2, gen)
    train_f, test_f = fields[: args.train_functions], fields[args.train_functions :]

    model = HardConstrained(DeepONet(args.sensors, 2, width=64, depth=3, basis=64)).to(dtype)
    data = (train_f, fine, sensors, gen)
    if args.optimizer == "adam":
        train_adam(args, model, *data)
    else:
        train_engd(args, model, *data)

    # held-out functions against the finite-difference solution on the 101 x 101 grid
    reference = solve_fd(test_f, fine, steps=2000, times=101)  # (M, t, x)
    tt, xx = torch.meshgrid(fine, fine, indexing="ij")
    grid_pts = torch.stack([xx.reshape(-1), tt.reshape(-1)], 1)
    with torch.no_grad():
        pred = model(interpolate(test_f, fine, sensors).to(dtype), grid_pts.to(dtype))
    pred = pred.double().reshape(reference.shape)
    err = relative_l2(pred, reference)
    seconds = time.perf_counter() - t_start
    how = "ENGD-Woodbury" if args.optimizer == "engd-woodbury" else f"Adam, {args.method}"
    print(
        f"PI-DeepONet diffusion-reaction ({how}): relative L2 error: {err:.3e} on "
        f"{args.test_functions} held-out functions in {seconds:.0f} s"
    )
    if args.figure:
        plot(reference, pred, args.figure)
    return err


def residual_of(terms, source: torch.Tensor) -> torch.Tensor:
    """``u_t - D u_xx - k u^2 - f`` from the terms ``u``, ``u_t``, ``u_xx`` (any layout)."""
    return terms["u_t"] - DIFFUSION * terms["u_xx"] - REACTION * terms["u"] ** 2 - source


def train_adam(args, model, train_f, fine, sensors, gen) -> None:
    """Adam with cosine decay on M functions x N points a step, the (M, N) product layout
    with ``args.method`` (ZCS by default: one reverse sweep for all M N pairs)."""
    dtype = next(model.parameters()).dtype
    terms = taylorc.compile(
        model, {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}, coords="x t", wrt=1, method=args.method
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    bar = tqdm(range(args.steps), desc="PI-DeepONet", mininterval=2.0, disable=args.quiet)
    for _ in bar:
        idx = torch.randint(0, args.train_functions, (args.functions,), generator=gen)
        pts = torch.rand(args.points, 2, generator=gen, dtype=torch.float64)
        branch = interpolate(train_f[idx], fine, sensors).to(dtype)
        source = interpolate(train_f[idx], fine, pts[:, 0]).to(dtype)  # (M, N)
        loss = residual_of(terms(branch, pts.to(dtype)), source).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)


def train_engd(args, model, train_f, fine, sensors, gen) -> None:
    """ENGD with the Woodbury solve on ``args.rows`` fresh (function, point) pairs a step,
    each row its own function (:class:`PairRows`), backtracking, for ``args.seconds``; the
    model ends with the exponential moving average of the iterates (decay ``AVERAGE``: about
    the last 10 steps)."""
    model.net.bias.requires_grad_(False)  # added after the basis sum, outside any layer
    rows = PairRows(model.net, args.sensors)
    names = [f"f{i}" for i in range(args.sensors)] + ["x", "t", "source"]
    terms = taylorc.compile(rows, {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}, coords=names)
    residuals = {"interior": lambda z: residual_of(terms(z), z[:, -1:])}
    opt = ENGD(rows, residuals, lr="backtracking", damping=args.damping, solve="woodbury")
    train_f_at_sensors = interpolate(train_f, fine, sensors)

    def draw() -> dict:
        idx = torch.randint(0, args.train_functions, (args.rows,), generator=gen)
        pts = torch.rand(args.rows, 2, generator=gen, dtype=torch.float64)
        source = interpolate(train_f[idx], fine, pts[:, 0], paired=True)
        return {"interior": torch.cat([train_f_at_sensors[idx], pts, source[:, None]], 1)}

    # the step fits each fresh batch of rows; the average of the iterates drops that noise
    average = AveragedModel(model.net, multi_avg_fn=get_ema_multi_avg_fn(AVERAGE))
    update = lambda: average.update_parameters(model.net)  # noqa: E731
    train_second_order(
        opt,
        draw,
        args.engd_steps,
        resample=1,
        seconds=args.seconds,
        quiet=args.quiet,
        after_step=update,
    )
    model.net.load_state_dict(average.module.state_dict())


def plot(reference: torch.Tensor, pred: torch.Tensor, path: str) -> None:
    """The first held-out function: reference, prediction and error over (x, t)."""
    plt = agg_figure()
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    for a, data, title in zip(
        ax,
        [reference[0], pred[0], (pred[0] - reference[0]).abs()],
        ["finite differences", "PI-DeepONet", "|error|"],
    ):
        im = a.imshow(data, origin="lower", extent=[0, 1, 0, 1], aspect="auto")
        a.set(title=title, xlabel="x", ylabel="t")
        fig.colorbar(im, ax=a)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
