"""One rank of tests/test_distributed.py (launched by torchrun, gloo, float64, CPU).

Each case trains 3 Adam steps under DistributedDataParallel on this rank's shard of
a global point set, then rank 0 repeats the 3 steps in one process on the whole set
(no DDP, same initial parameters) and prints ``CASE <name> maxdiff <float>``; the
test requires every case and maxdiff <= 1e-12. Cases:

- ``laplacian``: the PINN loss module (compiled Laplacian + boundary term) in DDP;
- ``dict``: the same with the dict operator ``{"u": "u", "lap": "laplacian"}``;
- ``operator``: DDP wraps the CompiledOperator itself; the boundary term calls the
  model outside DDP's forward (DDP's reducer still sees its gradients, which reach
  the same parameters in the same backward).
- ``local`` (control): the ``laplacian`` case on the shard WITHOUT DDP; its maxdiff
  must be large, showing the comparison detects unreduced gradients.

``find_unused_parameters`` stays False: a parameter that DDP's reducer did not see
would make the next forward raise, so the 3 steps also check that.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import taylorc

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


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in sys.argv[1:]:
        model, data = model_and_data()
        shards = tuple(t.chunk(world)[rank] for t in data)
        if case == "local":
            ddp_model = train("laplacian", shards, model, distributed=False)
        else:
            ddp_model = train(case, shards, model, distributed=True)
        if rank == 0:
            ref, data = model_and_data()
            ref = train("laplacian" if case == "local" else case, data, ref, distributed=False)
            diff = max(
                (p - q).abs().max().item()
                for p, q in zip(ddp_model.parameters(), ref.parameters(), strict=True)
            )
            moved = max(
                (p - q).abs().max().item()
                for p, q in zip(ref.parameters(), model_and_data()[0].parameters(), strict=True)
            )
            print(f"CASE {case} maxdiff {diff:.3e} moved {moved:.3e}", flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
