"""One spec, two routes: a PINN (taylorc.compile) and a solver-in-the-loop model (taylorc.prdp).

The heat equation ``"u_t - kappa*(u_xx + u_yy)"`` (kappa = 0.05) on [0, 1]^2 x [0, 1] with
zero Dirichlet data; the reference is the exact solution
``exp(-2 pi^2 kappa t) sin(pi x) sin(pi y)``. Both routes are scored on the same points
(the 17^2 grid nodes at t = 0.25, 0.5, 0.75, 1):

- PINN: an MLP u(x, y, t) trained on the residual of the spec (``taylorc.compile``, the
  same string), the boundary and the initial condition (Adam);
- hybrid: ``taylorc.prdp.TimeStepper`` builds backward-Euler steps of the same spec on the
  coarse 17^2 grid with dt = 0.25 (four steps; alone, about 10% error), and a conv net
  corrects each step, ``u <- Solve_K(A, u + net(u))``. It is trained through the multigrid
  solve (implicit gradients, K refined by ``Refiner.scaled(K_eps)``) on exact modal
  solutions from random sine-mode initial conditions -- not on the test case.

Prints both relative L2 errors and times and saves a figure.

    python examples/hybrid_vs_pinn.py [--pinn-steps 3000 --epochs 40]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import taylorc
from taylorc.operators import grid_nodes
from taylorc.prdp import Refiner, Solver, TimeStepper, estimate_k_eps
from taylorc_contrib.demos.common import agg_figure, boundary_points, mlp, relative_l2, save_figure
from taylorc_contrib.demos.heat_emulator import Config, Corrector

SPEC = "u_t - kappa*(u_xx + u_yy)"
KAPPA, N, DT, STEPS = 0.05, 17, 0.25, 4


def modal(amp: torch.Tensor, xy: torch.Tensor, t: float) -> torch.Tensor:
    """Exact solutions ``sum_kl a_kl exp(-(k^2+l^2) pi^2 kappa t) sin(k pi x) sin(l pi y)``:
    ``amp (B, 3, 3)``, ``xy (N, 2)`` -> ``(B, N)``."""
    out = torch.zeros(amp.shape[0], xy.shape[0], dtype=xy.dtype)
    for k in range(1, 4):
        for m in range(1, 4):
            decay = math.exp(-(k * k + m * m) * math.pi**2 * KAPPA * t)
            mode = torch.sin(k * math.pi * xy[:, 0]) * torch.sin(m * math.pi * xy[:, 1])
            out += amp[:, k - 1, m - 1, None] * decay * mode
    return out


def test_amplitudes() -> torch.Tensor:
    amp = torch.zeros(1, 3, 3, dtype=torch.float64)
    amp[0, 0, 0] = 1.0  # sin(pi x) sin(pi y)
    return amp


def hybrid(args, xy):
    """Train the corrected coarse stepper; returns (relative L2 error, seconds, uncorrected error, u)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    grid = [torch.linspace(0, 1, N, dtype=torch.float64)] * 2
    stepper = TimeStepper(SPEC, grid, DT, coords="x y", params={"kappa": KAPPA})
    solver = Solver(stepper.system, "mg", "implicit")
    k_eps = estimate_k_eps(Solver(stepper.system, "mg"), tol=1e-8, iters=12)
    refiner = Refiner.scaled(k_eps)
    K = refiner.k
    net = Corrector(Config(n=N, channels=8, dtype=torch.float64))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    val_amp = torch.randn(8, 3, 3, generator=gen, dtype=torch.float64)

    def rollout(amp, iters):
        u, out = modal(amp, xy, 0.0), []
        for _ in range(STEPS):
            u = stepper.step(u + net(u), solver, iters)
            out.append(u)
        return torch.stack(out, 1)

    def targets(amp):
        return torch.stack([modal(amp, xy, DT * (i + 1)) for i in range(STEPS)], 1)

    for _ in tqdm(range(args.epochs), desc="hybrid", disable=args.quiet):
        for _ in range(args.batches):
            amp = torch.randn(16, 3, 3, generator=gen, dtype=torch.float64)
            loss = relative_sq(rollout(amp, K), targets(amp))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            K = refiner.step(relative_sq(rollout(val_amp, k_eps), targets(val_amp)).item())
    with torch.no_grad():
        u = rollout(test_amplitudes(), k_eps)
        ref = targets(test_amplitudes())
        err = relative_l2(u, ref)
        plain = stepper.system
        v, base = modal(test_amplitudes(), xy, 0.0), []
        for _ in range(STEPS):
            v = stepper.step(v, Solver(plain, "mg"), k_eps)
            base.append(v)
        base_err = relative_l2(torch.stack(base, 1), ref)
    return err, time.perf_counter() - t0, base_err, u[0, -1]


def relative_sq(pred, ref):
    return ((pred - ref).pow(2).sum(-1) / ref.pow(2).sum(-1)).mean()


def pinn(args, xy):
    """Train the PINN; returns (relative L2 error on the grid at the 4 times, seconds, u at t = 1)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = mlp(3, [32, 32, 32]).double()
    residual = taylorc.compile(model, SPEC, coords="x y t", params={"kappa": KAPPA})
    xi = torch.rand(args.interior, 3, dtype=torch.float64)
    xb = boundary_points(args.interior // 4, 3, torch.float64, dims=[0, 1])
    x0 = torch.rand(args.interior // 4, 3, dtype=torch.float64) * torch.tensor([1.0, 1.0, 0.0])
    u0 = modal(test_amplitudes(), x0[:, :2], 0.0)[0][:, None]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in tqdm(range(args.pinn_steps), desc="pinn", disable=args.quiet):
        loss = residual(xi).pow(2).mean() + model(xb).pow(2).mean() + (model(x0) - u0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.stack(
            [
                model(torch.cat([xy, torch.full_like(xy[:, :1], DT * (i + 1))], 1))[:, 0]
                for i in range(STEPS)
            ]
        )
    ref = torch.stack([modal(test_amplitudes(), xy, DT * (i + 1))[0] for i in range(STEPS)])
    return relative_l2(pred, ref), time.perf_counter() - t0, pred[-1]


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pinn-steps", type=int, default=3000)
    p.add_argument("--interior", type=int, default=2000, help="PINN collocation points")
    p.add_argument("--epochs", type=int, default=40, help="hybrid epochs")
    p.add_argument("--batches", type=int, default=5, help="hybrid batches (of 16 ICs) per epoch")
    p.add_argument("--lr", type=float, default=3e-3, help="hybrid Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default="hybrid_vs_pinn.png", help="where to save ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    xy = grid_nodes([torch.linspace(0, 1, N, dtype=torch.float64)] * 2)
    e_pinn, s_pinn, u_pinn = pinn(args, xy)
    e_hyb, s_hyb, e_base, u_hyb = hybrid(args, xy)
    print(f"PINN (taylorc.compile):          relative L2 error {e_pinn:.3e}, {s_pinn:.1f} s")
    print(
        f"hybrid (taylorc.prdp, corrected): relative L2 error {e_hyb:.3e}, {s_hyb:.1f} s "
        f"(the uncorrected dt = {DT} solver: {e_base:.3e})"
    )
    print(f"relative L2 error: PINN {e_pinn:.3e}, hybrid {e_hyb:.3e}")
    if args.figure:
        plot(xy, u_pinn, u_hyb, args.figure)
        print(f"figure saved to {args.figure}")
    return e_hyb


def plot(xy, u_pinn, u_hyb, path):
    plt = agg_figure()
    ref = modal(test_amplitudes(), xy, 1.0)[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, data, title in [
        (axes[0], ref, "exact, t = 1"),
        (axes[1], (u_pinn - ref).abs(), "|PINN - exact|"),
        (axes[2], (u_hyb - ref).abs(), "|hybrid - exact|"),
    ]:
        im = ax.imshow(data.reshape(N, N).T.numpy(), origin="lower", extent=[0, 1, 0, 1])
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"'{SPEC}', kappa = {KAPPA}: PINN vs solver-in-the-loop")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
