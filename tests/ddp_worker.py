"""One rank of tests/test_distributed.py (launched by torchrun, gloo, float64, CPU).

Each case trains 3 steps on this rank's shard of a global point set, then rank 0
repeats the 3 steps in one process on the whole set (same initial parameters) and
prints ``CASE <name> maxdiff <float> spread <float> moved <float>`` (spread: the
largest difference of any rank's parameters from rank 0's); the test requires every
case, maxdiff <= 1e-12 (kfac_every: 1e-9, see the test) and spread <= 1e-12 (KFAC and
ENGD: 0, bitwise). Adam cases (under DistributedDataParallel, equal shards):

- ``laplacian``: the PINN loss module (compiled Laplacian + boundary term) in DDP;
- ``dict``: the same with the dict operator ``{"u": "u", "lap": "laplacian"}``;
- ``operator``: DDP wraps the CompiledOperator itself; the boundary term calls the
  model outside DDP's forward (DDP's reducer still sees its gradients, which reach
  the same parameters in the same backward).
- ``local`` (control): the ``laplacian`` case on the shard WITHOUT DDP; its maxdiff
  must be large, showing the comparison detects unreduced gradients.

- ``zcs``: a physics-informed DeepONet whose {u, u_t, u_xx} come from one operator
  compiled with ``method="zcs"``; the M input functions are sharded, the points shared.

``find_unused_parameters`` stays False: a parameter that DDP's reducer did not see
would make the next forward raise, so the 3 steps also check that.

KFAC cases (``taylorc.optim``, no DDP: the optimiser reduces over the default group
by itself; UNEVEN shards, 33/31 interior and 17/15 boundary points of 64/32):

- ``kfac_star``: KFAC* (lr="auto"), Laplacian + boundary, inversion split over ranks;
- ``kfac_star_nosplit``: the same with ``split_inversion=False``;
- ``kfac_ls``: line-search KFAC with momentum, a dict operator and three terms (the
  Kronecker sum solved by CG);
- ``kfac_every``: KFAC-reduce* with ``update_every=2, invert_every=3``, its state
  saved and loaded into a new optimiser before step 2 (solvers rebuilt, split, from
  the last inversion's factors);
- ``engd``: ENGD with the line search;
- (with ``kfac_star``) ``KFAC(DistributedDataParallel(model), ...)`` raises KFACError,
  and a step where rank 1 holds no boundary point (an empty shard, or no entry for the
  term: KFAC and ENGD) raises ValueError on both ranks instead of leaving one waiting;
- ``kfac_local`` (control): KFAC* on a group of one rank each (``dist.new_subgroups``):
  each rank trains on its shard alone, so it must differ from the union's run.

Sample-space cases (the residual rows of all ranks gathered into one kernel matrix;
UNEVEN shards, 17/16 interior and 5/4 boundary points of 33/9: R = 42 rows < P = 113):

- ``engd_woodbury``: ENGD with ``solve="woodbury"`` and the line search;
- ``engd_auto``: ENGD with ``solve="auto"`` on 110/20 interior and 5/5 boundary points:
  R = 140 rows > P over all ranks (the dense branch), but rank 1 alone has 25 < P rows:
  a rank deciding by its own rows would take the other branch and the collectives
  would not match;
- ``spring``: SPRING, momentum 0.5, lr 0.1; ``spring_bt``: the same with
  ``lr="backtracking"``;
- ``spring_local`` (control): ``spring`` on a group of one rank each;
- (with ``spring``) a step where rank 1 has no entry for a term raises ValueError on
  both ranks.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import taylorc
from taylorc_contrib.models import DeepONet

D, NI, NB, STEPS, LR = 3, 16, 8, 3, 1e-2


def model_and_data():
    """Seeded model (float64 tanh MLP) and the global points: same on every rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(1)
    xi = torch.rand(NI, D, generator=gen, dtype=torch.float64)
    xb = torch.rand(NB, D, generator=gen, dtype=torch.float64)
    f = torch.cos(xi).sum(-1, keepdim=True)
    g = torch.sin(xb).sum(-1, keepdim=True)
    return model.double(), (xi, f, xb, g)


class LaplacianLoss(nn.Module):
    """mean((-lap u - f)^2) + mean((u - g)^2) over the given points."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.lap = taylorc.compile(model, "laplacian")

    def forward(self, xi, f, xb, g):
        return (-self.lap(xi) - f).pow(2).mean() + (self.model(xb) - g).pow(2).mean()


class DictLoss(nn.Module):
    """Same residual from the dict operator, plus a u-term at the interior points."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.op = taylorc.compile(model, {"u": "u", "lap": "laplacian"})

    def forward(self, xi, f, xb, g):
        out = self.op(xi)
        interior = (-out["lap"] + out["u"] - f).pow(2).mean()
        return interior + (self.model(xb) - g).pow(2).mean()


def train(case: str, data, model, distributed: bool) -> nn.Module:
    """3 Adam steps; under DDP on this rank's shard, else on all of ``data``."""
    xi, f, xb, g = data
    if case == "operator":
        op = taylorc.compile(model, "laplacian")
        wrapped = DistributedDataParallel(op) if distributed else op

        def loss_fn():
            return (-wrapped(xi) - f).pow(2).mean() + (model(xb) - g).pow(2).mean()

    else:
        loss_module = (LaplacianLoss if case == "laplacian" else DictLoss)(model)
        wrapped = DistributedDataParallel(loss_module) if distributed else loss_module

        def loss_fn():
            return wrapped(xi, f, xb, g)

    if distributed:
        # DDP must see exactly the user's parameters (the model is a submodule).
        assert {id(p) for p in wrapped.parameters()} == {id(p) for p in model.parameters()}
    adam = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(STEPS):
        adam.zero_grad()
        loss_fn().backward()
        adam.step()
    return model


def zcs_problem():
    """Seeded DeepONet (float64) and its data: M = 4 functions at 5 sensors, N = 12 points."""
    torch.manual_seed(0)
    net = DeepONet(sensors=5, coords=2, width=8, depth=2, basis=8).double()
    gen = torch.Generator().manual_seed(2)
    branch = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    source = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    points = torch.rand(12, 2, generator=gen, dtype=torch.float64)
    return net, (branch, source, points)


class ZCSLoss(nn.Module):
    """Mean over (function, point) of (u_t - 0.01 u_xx - 0.01 u² - f)², terms by ZCS."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.terms = taylorc.compile(
            net, {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}, coords="x t", wrt=1, method="zcs"
        )

    def forward(self, branch, source, points):
        d = self.terms(branch, points)
        return (d["u_t"] - 0.01 * d["u_xx"] - 0.01 * d["u"] ** 2 - source).pow(2).mean()


def train_zcs(net, data, distributed: bool) -> nn.Module:
    """3 Adam steps on the DeepONet; under DDP the functions are this rank's shard."""
    branch, source, points = data
    loss = ZCSLoss(net)
    if distributed:
        rank, world = dist.get_rank(), dist.get_world_size()
        branch, source = branch.chunk(world)[rank], source.chunk(world)[rank]
        loss = DistributedDataParallel(loss)
    adam = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(STEPS):
        adam.zero_grad()
        loss(branch, source, points).backward()
        adam.step()
    return net


KFAC_SIZES = {"interior": (64, 33), "boundary": (32, 17), "anchor": (16, 9)}  # (N, rank 0's)


def kfac_points(rank: int | None, sizes: dict = KFAC_SIZES) -> dict:
    """The global points of each term (same on every rank), or rank ``rank``'s uneven shard."""
    gen = torch.Generator().manual_seed(3)
    out = {}
    for term, (n, first) in sizes.items():
        x = torch.rand(n, D, generator=gen, dtype=torch.float64)
        out[term] = x if rank is None else (x[:first] if rank == 0 else x[first:])
    return out


def train_kfac(case: str, model, points: dict, group=None) -> nn.Module:
    """3 steps of the optimiser of ``case``; ``group``: the optimiser's process group
    (None: the default group when initialized, i.e. distributed in the worker)."""
    lap = taylorc.compile(model, "laplacian")
    residuals = {
        "interior": lambda x: -lap(x)[:, 0] - torch.cos(x).sum(-1),
        "boundary": lambda x: model(x)[:, 0] - torch.sin(x).sum(-1),
    }
    kw = dict(process_group=group)
    if case in ("kfac_star", "kfac_star_nosplit", "kfac_local"):
        kw.update(lr="auto", damping=1e-3, ema=0.5, initial_lr=1e-2)
        kw.update(split_inversion=case != "kfac_star_nosplit")
        opt = taylorc.optim.KFAC(model, residuals, **kw)
    elif case == "kfac_every":  # stale factors and solvers, restored between inversions
        kw.update(lr="auto", damping=1e-3, ema=0.5, initial_lr=1e-2, approx="reduce")
        kw.update(update_every=2, invert_every=3)
        opt = taylorc.optim.KFAC(model, residuals, **kw)
    elif case == "kfac_ls":
        op = taylorc.compile(model, {"u": "u", "lap": "laplacian"})

        def interior(x):
            d = op(x)
            return (-d["lap"] + d["u"] ** 3)[:, 0] - torch.cos(x).sum(-1)

        residuals["interior"] = interior
        residuals["anchor"] = lambda x: model(x)[:, 0] - x.prod(-1)
        kw.update(lr="line_search", damping=1e-6, ema=0.9, momentum=0.5)
        opt = taylorc.optim.KFAC(model, residuals, **kw)
    elif case == "engd":
        opt = taylorc.optim.ENGD(model, residuals, damping=1e-8, **kw)
    else:
        raise ValueError(case)
    points = {t: points[t] for t in opt.residuals}
    for step in range(STEPS):
        if case == "kfac_every" and step == 2:
            state = opt.state_dict()
            opt = taylorc.optim.KFAC(model, residuals, **kw)
            opt.load_state_dict(state)
        opt.step(points)
    return model


SAMPLE_CASES = ("engd_woodbury", "engd_auto", "spring", "spring_bt", "spring_local")
SAMPLE_SIZES = {"interior": (33, 17), "boundary": (9, 5)}  # (N, rank 0's)
AUTO_SIZES = {"interior": (130, 110), "boundary": (10, 5)}


def sample_space_optimizer(case: str, model, group=None):
    """The sample-space optimiser of ``case`` on the Laplacian and boundary terms."""
    lap = taylorc.compile(model, "laplacian")
    residuals = {
        "interior": lambda x: -lap(x)[:, 0] - torch.cos(x).sum(-1),
        "boundary": lambda x: model(x)[:, 0] - torch.sin(x).sum(-1),
    }
    kw = dict(process_group=group, damping=1e-4)
    if case in ("engd_woodbury", "engd_auto"):
        solve = case.removeprefix("engd_")
        return taylorc.optim.ENGD(model, residuals, lr="line_search", solve=solve, **kw)
    lr = "backtracking" if case == "spring_bt" else 0.1
    return taylorc.optim.SPRING(model, residuals, lr=lr, momentum=0.5, **kw)


def train_sample_space(case: str, model, rank: int | None, group=None) -> nn.Module:
    """3 steps of the sample-space optimiser of ``case`` on rank ``rank``'s shard (None:
    all points); ``group`` as :func:`train_kfac`'s."""
    points = kfac_points(rank, AUTO_SIZES if case == "engd_auto" else SAMPLE_SIZES)
    opt = sample_space_optimizer(case, model, group)
    for _ in range(STEPS):
        opt.step(points)
    return model


def check_missing_term_spring(rank: int) -> None:
    """A step where rank 1 has no entry for a term: ValueError on every rank."""
    model = model_and_data()[0]
    points = {} if rank == 1 else kfac_points(rank, SAMPLE_SIZES)
    reject_missing_term(taylorc.optim.SPRING, model, points, rank)


def reject_missing_term(make, model: nn.Module, points: dict, rank: int) -> None:
    """``make``'s step on ``points`` (a term missing on some rank) raises on every rank."""
    try:
        make(model, {"boundary": lambda x: model(x)[:, 0]}).step(points)
    except ValueError as e:
        assert "no points of the terms ['boundary']" in str(e), e
        if rank == 0:
            print(f"MISSING_TERM_REJECTED {make.__name__}", flush=True)
    else:
        raise AssertionError("a missing term was not rejected")


def spread(model: nn.Module) -> float:
    """Largest difference of this rank's parameters from rank 0's, over all ranks."""
    worst = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        p0 = p.detach().clone()
        dist.broadcast(p0, 0)
        worst = torch.maximum(worst, (p.detach() - p0).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def run(case: str, rank: int, world: int, solo) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """``(initial model, model trained on this rank, rank 0: single-process reference)``;
    ``solo``: this rank's group of one rank (the optimisers' single-process path)."""
    if case == "zcs":
        net = train_zcs(zcs_problem()[0], zcs_problem()[1], distributed=True)
        ref = train_zcs(*zcs_problem(), distributed=False) if rank == 0 else None
        return zcs_problem()[0], net, ref
    if case in SAMPLE_CASES:
        group = solo if case == "spring_local" else None
        model = train_sample_space(case, model_and_data()[0], rank, group)
        ref_case = "spring" if case == "spring_local" else case
        ref = train_sample_space(ref_case, model_and_data()[0], None, solo) if rank == 0 else None
        return model_and_data()[0], model, ref
    if case.startswith(("kfac", "engd")):
        group = solo if case == "kfac_local" else None
        model = train_kfac(case, model_and_data()[0], kfac_points(rank), group)
        ref = None
        if rank == 0:
            ref_case = "kfac_star" if case == "kfac_local" else case
            ref = train_kfac(ref_case, model_and_data()[0], kfac_points(None), solo)
        return model_and_data()[0], model, ref
    model, data = model_and_data()
    shards = tuple(t.chunk(world)[rank] for t in data)
    if case == "local":
        model = train("laplacian", shards, model, distributed=False)
    else:
        model = train(case, shards, model, distributed=True)
    ref = None
    if rank == 0:
        ref, data = model_and_data()
        ref = train("laplacian" if case == "local" else case, data, ref, distributed=False)
    return model_and_data()[0], model, ref


def maxdiff(a: nn.Module, b: nn.Module) -> float:
    """Largest parameter difference of two models of the same architecture."""
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, "the uneven KFAC shards are written for 2 ranks"
    solo = dist.new_subgroups(1)[0]
    if "kfac_star" in sys.argv[1:]:  # KFAC refuses a DDP wrapper (it reduces by itself)
        model = model_and_data()[0]
        try:
            taylorc.optim.KFAC(DistributedDataParallel(model), {"b": model})
        except taylorc.errors.KFACError as e:
            if rank == 0:
                print(f"DDP_WRAPPER_REJECTED {str(e)[:60]}", flush=True)
        # a rank without points of a term: ValueError on EVERY rank (none left waiting)
        points = kfac_points(rank)
        if rank == 1:
            points["boundary"] = points["boundary"][:0]
        opt = taylorc.optim.KFAC(model, {"boundary": lambda x: model(x)[:, 0]})
        try:
            opt.step(points)
        except ValueError as e:
            assert "no points of the terms ['boundary']" in str(e), e
            if rank == 0:
                print("EMPTY_SHARD_REJECTED", flush=True)
        else:
            raise AssertionError("an empty shard was not rejected")
        if rank == 1:  # no entry at all for a term on one rank: also raised on every rank
            del points["boundary"]
        for make in (taylorc.optim.KFAC, taylorc.optim.ENGD):
            reject_missing_term(make, model, points, rank)
    if "spring" in sys.argv[1:]:
        check_missing_term_spring(rank)
    for case in sys.argv[1:]:
        start, model, ref = run(case, rank, world, solo)
        gap = spread(model)
        if rank == 0:
            print(
                f"CASE {case} maxdiff {maxdiff(model, ref):.3e} spread {gap:.3e} "
                f"moved {maxdiff(ref, start):.3e}",
                flush=True,
            )
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()  # no interpreter finalization: examples/poisson_ddp.py says why
    sys.stderr.flush()
    os._exit(0)
