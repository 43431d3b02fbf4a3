"""Data-parallel curvature: the collectives of :class:`~taylorc.optim.KFAC`, ENGD and SPRING.

Every curvature quantity of a PINN loss is a mean over the points of each term:
the loss, the gradient, KFAC's Kronecker factors (input covariance A, gradient
covariance B; Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 3.2), the Gramian and its
products. With the points of term t split over R ranks (N_t = Σ_r N_t,r, shards of any
sizes), rank r computes its local mean and weighs it by N_t,r / N_t; one ``all_reduce``
(sum) of all weighted quantities then gives the mean over all N_t points, up to
rounding, on every rank. The sample-space solves (ENGD-Woodbury, SPRING) need every
rank's rows instead of a sum: :meth:`Reducer.gather` (:mod:`taylorc.optim.sample_space`).
Inversion work is split as in KFAC libraries for deep learning
(Osawa et al., "Large-Scale Distributed Second-Order Optimization Using
Kronecker-Factored Approximate Curvature", CVPR 2019; Pauloski et al., "KAISA", SC
2021): each layer's factorization is computed by one rank and broadcast. Only
``torch.distributed`` collectives are used.

The optimisers hold a reducer in one process too: :class:`LocalReducer`, whose
collectives are the identity, so that a step reads the same in one and many processes.
"""

from __future__ import annotations

import atexit
import time

import torch
import torch.distributed as dist

from ..errors import KFACError
from .kronecker import KroneckerSum


def resolve(process_group, model: torch.nn.Module):
    """The process group to reduce over, or ``None`` for a single process.

    Args:
        process_group: ``None`` (the default group when ``torch.distributed`` is
            initialized, else single-process) or a ``ProcessGroup``. A group of one
            rank means single-process (no collectives): ``dist.new_subgroups(1)``
            gives each rank its own optimiser.
        model: the model given to the optimiser (checked: not a DDP wrapper).

    Raises:
        KFACError: ``model`` is a ``DistributedDataParallel`` wrapper.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise KFACError(
            "KFAC/ENGD compute and all-reduce their own gradient and curvature: pass the "
            "unwrapped model (ddp.module), compile the residuals' operators from it, and "
            "do not wrap it in DistributedDataParallel"
        )
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
    return process_group if dist.get_world_size(process_group) > 1 else None


def model_reducer(group, model: torch.nn.Module) -> Reducer | LocalReducer:
    """The reducer of an optimiser of ``model`` over ``group`` (from :func:`resolve`):
    a :class:`LocalReducer` for ``None`` (one process), else a :class:`Reducer` on the
    model's device, after giving every rank rank 0's parameters (the ranks start from
    one initialisation)."""
    device = next(model.parameters()).device
    reducer = LocalReducer(device) if group is None else Reducer(group, device)
    reducer.broadcast_(model.parameters())
    return reducer


def factorise(pairs: dict[str, list]) -> dict[str, KroneckerSum]:
    """One :class:`KroneckerSum` per layer of ``pairs`` (name -> damped ``[(A_t, B_t)]``),
    all factorised in this process."""
    return {name: KroneckerSum(p) for name, p in pairs.items()}


SETTLE_TIMEOUT = 5.0  # s that settle_all waits at exit; past it the process goes on
# CPU tensors of finished collectives that the backend may still hold, with their use
# count before the collective: kept alive here until it has let go of them
_HELD: list[tuple[torch.Tensor, int]] = []


def run_collective(tensors: list[torch.Tensor], collective, *args, **kwargs) -> None:
    """``collective(*args, **kwargs)``, a blocking collective on ``tensors``; the CPU ones stay
    referenced from Python until the backend has let go of them (checked at every call,
    waited for at exit by :func:`settle_all`).

    Gloo's worker thread lets go of a finished collective's tensors only after it has woken
    the caller (in about 2 of 5 calls here). A tensor that Python has dropped by then is
    freed by that thread, which takes the GIL to release its Python object; during the
    interpreter's finalization that aborts the process ("terminate called without an
    active exception": pytorch/pytorch#179291, seen at the end of
    ``examples/poisson_ddp.py``). Kept here, the last reference is Python's. CUDA tensors
    are not kept (NCCL's watchdog frees its work on its own schedule).
    """
    counts = [(t, t._use_count()) for t in tensors if t.device.type == "cpu"]
    collective(*args, **kwargs)
    _HELD[:] = [(t, n) for t, n in _HELD if t._use_count() > n]
    _HELD.extend((t, n) for t, n in counts if t._use_count() > n)


@atexit.register
def settle_all() -> None:
    """Wait (at most :data:`SETTLE_TIMEOUT` s) until the backend holds none of the tensors
    :func:`run_collective` keeps, then drop them. Registered with ``atexit``: it runs before
    the interpreter finalizes, while a worker thread can still take the GIL."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while any(t._use_count() > n for t, n in _HELD) and time.monotonic() < deadline:
        time.sleep(0)  # yields the GIL
    _HELD.clear()


def _point_counts(points: dict) -> dict[str, int]:
    """``{term: N_t,r}`` of this rank's ``points`` (a term without an entry: 0)."""
    return {t: 0 if points[t] is None else points[t].shape[0] for t in sorted(points)}


class LocalReducer:
    """:class:`Reducer`'s methods for one process, with no collective: sums and broadcasts
    leave their tensors as they are, a term's share of its mean is the whole, and every
    layer is factorised here. ``device``: the model's, as :class:`Reducer`'s."""

    rank, world = 0, 1

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """The sum over one process: ``tensors`` unchanged."""

    def sum_values(self, values: list[float]) -> list[float]:
        """The sum over one process: ``values`` themselves."""
        return values

    def shares(self, points: dict) -> tuple[dict[str, float], dict[str, int]]:
        """``({term: 1.0}, {term: N_t})``: this process holds every point."""
        counts = _point_counts(points)
        return dict.fromkeys(counts, 1.0), counts

    def weighting(self, points: dict):
        """``(weigh, counts)`` as :meth:`Reducer.weighting`: ``weigh`` is the identity (a
        local mean is the global one), ``counts`` the local N_t."""
        return (lambda term, x: x), _point_counts(points)

    def broadcast_(self, tensors) -> None:
        """Rank 0's values in one process: ``tensors`` unchanged."""

    def gather(self, flat: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        """Every rank's ``flat`` in one process: ``[flat]``."""
        return [flat]

    @staticmethod
    def solvers(pairs: dict[str, list]) -> dict[str, KroneckerSum]:
        """Every layer's :class:`KroneckerSum`, factorised here (:func:`factorise`)."""
        return factorise(pairs)


class Reducer:
    """Sums over all ranks of a process group, and the point counts of each term.

    Args:
        group: a ``ProcessGroup`` of two or more ranks (see :func:`resolve`).
        device: where the point counts are reduced: the model's device (NCCL reduces
            CUDA tensors only, and a rank with no points has no points' device to use).
    """

    def __init__(self, group, device: torch.device | str = "cpu"):
        self.group, self.device = group, torch.device(device)
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce (sum) ``tensors`` in place: one collective per (dtype, device)."""
        self._packed(tensors, lambda flat: dist.all_reduce(flat, group=self.group))

    def sum_values(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (one collective, in float64)."""
        summed = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.sum_([summed])
        return summed.tolist()

    @staticmethod
    @torch.no_grad()
    def _packed(tensors, collective) -> None:
        """Run ``collective`` in place on ``tensors`` packed into one flat buffer per
        (dtype, device), then copy the results back."""
        by_kind: dict = {}
        for t in tensors:
            by_kind.setdefault((t.dtype, t.device), []).append(t)
        for ts in by_kind.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            run_collective([flat], collective, flat)
            i = 0
            for t in ts:
                t.copy_(flat[i : i + t.numel()].view_as(t))
                i += t.numel()

    def shares(self, points: dict) -> tuple[dict[str, float], dict[str, int]]:
        """``({term: N_t,r / N_t}, {term: N_t})`` for this rank's ``points``.

        ``points``: term -> ``(N_t,r, *in)``, or None where this rank has no entry for
        the term (counted as no points, so every rank raises instead of one raising
        while the others wait in the collective).

        Raises:
            ValueError: (on every rank alike) some rank holds no points of a term.
        """
        n = _point_counts(points)
        terms = list(n)
        local = torch.tensor(
            [[n[t], n[t] == 0] for t in terms], dtype=torch.int64, device=self.device
        )
        run_collective([local], dist.all_reduce, local, group=self.group)
        empty = [t for t, (_, e) in zip(terms, local.tolist()) if e]
        if empty:
            raise ValueError(
                f"a rank holds no points of the terms {empty}: give every rank at least "
                "one point of every term"
            )
        totals = {t: int(n) for t, (n, _) in zip(terms, local.tolist())}
        return {t: n[t] / totals[t] for t in terms}, totals

    def weighting(self, points: dict):
        """``(weigh, counts)`` for this rank's ``points``: ``weigh(term, x)`` turns this
        rank's mean ``x`` of a term into its share N_t,r / N_t of the global mean (the
        ranks' shares sum to it), ``counts`` is ``{term: N_t}`` (see :meth:`shares`)."""
        share, counts = self.shares(points)
        return (lambda term, x: x * share[term]), counts

    def broadcast_(self, tensors) -> None:
        """Give every rank rank 0's values of ``tensors`` (in place; e.g. parameters, or a
        step's direction): one ``broadcast`` per (dtype, device).

        The optimisers broadcast each step's direction: every rank computes it from the
        same reduced numbers, but MKL does not promise bitwise equal results on equal
        inputs (its kernels depend on memory alignment, among others), and ranks that
        drift apart by one rounding error drift further with every KFAC* step."""
        self._packed(
            [t.data for t in tensors],
            lambda flat: dist.broadcast(flat, group=self.group, group_src=0),
        )

    def gather(self, flat: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        """Every rank's 1-D ``flat``, in rank order, on every rank (rank r's of length
        ``lengths[r]``, which every rank passes alike): one ``all_gather`` of buffers
        padded to the longest, so that shards of any sizes gather (the sample-space
        solves, :mod:`taylorc.optim.sample_space`). Same dtype and device as ``flat``."""
        buf = flat.new_zeros(max(lengths))
        buf[: flat.numel()] = flat
        out = [torch.empty_like(buf) for _ in range(self.world)]
        run_collective([buf, *out], dist.all_gather, out, buf, group=self.group)
        return [o[:n] for o, n in zip(out, lengths)]

    def solvers(self, pairs: dict[str, list]) -> dict[str, KroneckerSum]:
        """One :class:`KroneckerSum` per layer, each factorised by one rank and broadcast.

        Layers go to ranks greedily by cost (Σ d³ of their Kronecker factors, largest
        first); each rank packs its layers' factorizations into one buffer and
        broadcasts it: one ``broadcast`` per rank. Every rank must pass the same
        (reduced) ``pairs``. The owner, too, solves with the views of its broadcast
        buffer: MKL's products depend on the operands' memory alignment (a (64, 64) by
        (64, 1) product differs in the last bits between offsets), so every rank solves
        with the same layout.
        """
        owner = self._owners(pairs)
        out = factorise({n: p for n, p in pairs.items() if owner[n] == self.rank})
        device = next(iter(pairs.values()))[0][0].device
        for r in range(self.world):
            mine = [n for n in pairs if owner[n] == r]  # dict order: the same on every rank
            shapes = [s for n in mine for s in KroneckerSum.prepared_shapes(pairs[n])]
            numel = sum(a * b for a, b in shapes)
            if not numel:
                continue
            if r == self.rank:
                buf = torch.cat([t.reshape(-1) for n in mine for t in out[n].prepared()])
            else:
                buf = torch.empty(numel, dtype=torch.float64, device=device)
            run_collective([buf], dist.broadcast, buf, group=self.group, group_src=r)
            i = 0
            for n in mine:
                got = []
                for a, b in KroneckerSum.prepared_shapes(pairs[n]):
                    got.append(buf[i : i + a * b].view(a, b))
                    i += a * b
                out[n] = KroneckerSum(pairs[n], prepared=got)
        return out

    def _owners(self, pairs: dict[str, list]) -> dict[str, int]:
        """``{layer: rank}``: greedily by cost (Σ d³ of the factors), largest first."""
        cost = {n: p[0][0].shape[0] ** 3 + p[0][1].shape[0] ** 3 for n, p in pairs.items()}
        load, owner = [0] * self.world, {}
        for n in sorted(pairs, key=lambda n: -cost[n]):  # stable: ties in dict order
            r = min(range(self.world), key=load.__getitem__)
            owner[n], load[r] = r, load[r] + cost[n]
        return owner
