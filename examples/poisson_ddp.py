"""5-d Poisson PINN trained data-parallel with torch.distributed and taylorc.

torchrun --nproc_per_node=2 examples/poisson_ddp.py [--kfac-steps N --optimizer NAME ...]

The problem, the network and the sampling are those of ``taylorc_contrib/demos/poisson.py``
(imported, not copied): every rank draws the same global collocation set from the
same seed as the single-process demo and keeps its own contiguous shard, so the
union of the shards is exactly the demo's set.

Optimiser (default ``--optimizer engd``): ``taylorc.optim.ENGD`` with the main job's
settings (dense Gramian, λ = 1e-10, β = 0.3, backtracking), NOT wrapped in DDP: the
optimiser all-reduces its own loss, gradient, Gramian and line-search losses over the
default process group and broadcasts rank 0's direction (docs/distributed.md), so a step
on two ranks equals the single-process step on the union of the shards. Every rank draws
the demo's points every 100 steps and keeps its shard (shards may be uneven here). It
stops after ``--kfac-steps`` steps, never on a time budget (ranks stop together). Why
ENGD: measured alone on the 2-core CPU with two ranks (docs/distributed.md, "The default: distributed ENGD"), it
reaches 5.4e-8 in 1,500 steps (79 s wall) where Adam's 20,000 steps stop at 1.2e-2; ``--optimizer kfac*`` (or ``kfac``) runs KFAC the same way.

``--optimizer adam``: the whole PINN loss (interior residual through ``taylorc.compile``,
boundary residual through the model) is one ``nn.Module`` wrapped in
``DistributedDataParallel``, whose reducer averages the gradients during ``backward``;
with equal shard sizes that is the gradient of the mean over all points
(tests/test_distributed.py). Adam with the demo's cosine decay; no L-BFGS (its line
search would need every closure evaluation to go through DDP in lockstep).

Backend: nccl when CUDA is available (one GPU per local rank), else gloo. Rank 0 prints
``relative L2 error:``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import taylorc
from taylorc_contrib.demos import poisson
from taylorc_contrib.demos.common import (
    SECOND_ORDER_DEFAULTS,
    boundary_points,
    make_optimizer,
    mlp,
    relative_l2,
    train_second_order,
)
from taylorc_contrib.demos.poisson import exact, interior_points, source


class PoissonLoss(nn.Module):
    """The PINN loss as a module, so that DDP sees a forward before the backward.

    Holds the model (``self.model``) and its compiled Laplacian (whose submodule is
    the same model, so ``parameters()`` lists each parameter once). Inputs: interior
    points ``xi`` (Ni, D), source ``f`` (Ni, 1), boundary points ``xb`` (Nb, D),
    boundary values ``g`` (Nb, 1), all of the model's dtype and device. Returns the
    scalar ``(mean((-lap u - f)^2) + mean((u - g)^2)) / 2`` over the LOCAL points
    (the demo's Adam/L-BFGS loss).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.laplacian = taylorc.compile(model, operator="laplacian")

    def forward(self, xi, f, xb, g):
        """Local loss (scalar tensor); see the class docstring for shapes."""
        residual = -self.laplacian(xi) - f
        return 0.5 * residual.pow(2).mean() + 0.5 * (self.model(xb) - g).pow(2).mean()


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of ``x`` (N, ...), N divisible by ``world``.

    Equal shard sizes make DDP's gradient average equal the gradient of the global
    mean; unequal ones would weight points differently, hence the ValueError.
    """
    if x.shape[0] % world:
        raise ValueError(f"{x.shape[0]} points do not split evenly over {world} ranks")
    return x.chunk(world)[rank]


def parse_args(argv=None) -> argparse.Namespace:
    """Options; the problem's defaults are the single-process demo's, steps are more."""
    demo = poisson.parse_args([])  # one source of truth for the problem's sizes
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=demo.dim)
    p.add_argument("--widths", type=int, nargs="+", default=demo.widths)
    p.add_argument("--interior", type=int, default=demo.interior, help="global interior points")
    p.add_argument("--boundary", type=int, default=demo.boundary, help="global boundary points")
    # 1500 (the demo's Adam phase before L-BFGS) leaves a 46% error; 20,000 steps
    # reach about 1% in about 2 minutes on 2 CPU ranks
    p.add_argument("--adam-steps", type=int, default=20_000)
    p.add_argument("--lr", type=float, default=demo.lr)
    p.add_argument("--seed", type=int, default=demo.seed)
    p.add_argument("--test-points", type=int, default=demo.test_points)
    p.add_argument("--optimizer", choices=["adam", *SECOND_ORDER_DEFAULTS], default="engd")
    p.add_argument("--kfac-steps", type=int, default=1500, help="KFAC/ENGD steps")
    p.add_argument(
        "--resample", type=int, default=demo.resample, help="KFAC/ENGD: new points every k steps"
    )
    args = p.parse_args(argv)
    # the demo's settings (SECOND_ORDER_DEFAULTS); no --backend: eager linearisations
    args.damping = args.ema = args.momentum = args.step_rule = None
    return args


def train_second_order_ddp(args, model, gen, rank: int, world: int, device) -> float:
    """KFAC*/KFAC/ENGD over the default process group (no DDP); returns seconds per step."""
    dtype = torch.float64
    laplacian = taylorc.compile(model, operator="laplacian")
    residuals = {
        "interior": lambda x: -laplacian(x) - source(x),
        "boundary": lambda x: model(x) - exact(x),
    }

    def sample():  # the demo's draws (same generator, same order); this rank's part
        xi = interior_points(args.interior, args.dim, gen, dtype)
        xb = boundary_points(args.boundary, args.dim, dtype, gen)
        return {
            "interior": xi.tensor_split(world)[rank].to(device),
            "boundary": xb.tensor_split(world)[rank].to(device),
        }

    opt = make_optimizer(args, model, residuals)  # process_group=None: the default group
    t0 = time.perf_counter()
    train_second_order(opt, sample, args.kfac_steps, args.resample, quiet=rank != 0)
    return (time.perf_counter() - t0) / max(args.kfac_steps, 1)


def main(argv=None) -> float | None:
    """Train under DDP; rank 0 prints and returns the relative L2 error (others: None)."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.float64
    # Same seeding and draw order as taylorc/demos/poisson.py: identical initial
    # parameters on every rank (DDP also broadcasts rank 0's) and the demo's points.
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = mlp(args.dim, args.widths).to(dtype)
    if args.optimizer != "adam":
        per_step = train_second_order_ddp(args, model.to(device), gen, rank, world, device)
        return finish(args, model, gen, rank, world, device, per_step)
    xi = interior_points(args.interior, args.dim, gen, dtype)
    xb = boundary_points(args.boundary, args.dim, dtype, gen)
    xi, xb = shard(xi, rank, world).to(device), shard(xb, rank, world).to(device)
    f, g = source(xi), exact(xb)
    model.to(device)
    loss_module = DistributedDataParallel(PoissonLoss(model))
    adam = torch.optim.Adam(loss_module.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        adam, max(args.adam_steps, 1), eta_min=args.lr / 20
    )
    t0 = time.perf_counter()
    for step in range(args.adam_steps):
        if step == 1:  # the per-step time leaves out step 0's capture and compile
            t0 = time.perf_counter()
        adam.zero_grad()
        loss = loss_module(xi, f, xb, g)
        loss.backward()  # DDP's reducer averages the gradients over ranks here
        adam.step()
        sched.step()
        if rank == 0 and step % 100 == 0:
            print(f"step {step}: local loss {loss.item():.3e}", flush=True)
    per_step = (time.perf_counter() - t0) / max(args.adam_steps - 1, 1)
    return finish(args, model, gen, rank, world, device, per_step)


def finish(args, model, gen, rank: int, world: int, device, per_step: float) -> float | None:
    """Rank 0: relative L2 error on fresh points, printed and returned; then tear down."""
    dtype = torch.float64
    err = None
    if rank == 0:
        x = interior_points(args.test_points, args.dim, gen, dtype).to(device)
        with torch.no_grad():
            err = relative_l2(model(x), exact(x))
        print(
            f"relative L2 error: {err:.3e}  ({args.test_points} fresh points, {world} ranks, "
            f"{per_step * 1e3:.1f} ms/step on rank 0)"
        )
    # the other ranks wait for rank 0's evaluation: a rank that tears gloo down while its
    # peer is still connected can abort at exit ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
    return err


if __name__ == "__main__":
    main()
    # End without the interpreter's finalization. gloo wakes a caller before its worker
    # thread lets go of the collective's tensors; a worker that frees one after the
    # interpreter began to finalize needs the GIL and aborts the process ("terminate called
    # without an active exception", pytorch/pytorch#179291). taylorc's optimisers wait for
    # their own collectives (taylorc.optim.distributed.settled), DDP's are not theirs to
    # wait for. The process group is destroyed and every output flushed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
