"""The residual rows of all ranks for the sample-space solves (ENGD-Woodbury, SPRING)
under ``torch.distributed``: :class:`Rows` and the gathers of :func:`gather_rows` and
:func:`gather_linearizations`.

The kernel matrix ``K = Ĵ Ĵᵀ`` couples every residual row with every other, so unlike
the Gramian (a sum over points) it is not a sum of per-rank parts. Each rank holds the
linearisation of its own points; the ranks all-gather every term's residual, layer
inputs X and pre-activation gradients g (one ``all_gather``), so that each rank can
compute the rows of K that belong to its points against ALL rows (``Ĵ_r Ĵᵀ``, a share
R_r / R of the O(R² P) work), and the row blocks are all-gathered into the same K on
every rank (Guzmán-Cordero, Dangel, Goldshlager, Zeinhofer, NeurIPS 2025, Sec. 3: the
push-through identity; the data-parallel split is this package's).

The global row order is term by term, rank by rank inside a term, each block point-major:
the order of one process given each term's shards concatenated in rank order, so that
``kernel`` and ``scaled_residual`` of the gathered linearisations read as in one process.
Shards of any sizes are gathered padded to the largest (:meth:`Reducer.gather`).
"""

from __future__ import annotations

import math

import torch

from .layer import Layer
from .linearization import Linearization


class Rows:
    """Where each rank's residual rows sit in the global order (module docstring).

    Args:
        counts: ``counts[r][t]`` = N_t,r, the points of term t on rank r.
        outputs: ``outputs[t]`` = M_t, the residual outputs of term t (rows per point).
    """

    def __init__(self, counts: list[list[int]], outputs: list[int]):
        self.counts, self.outputs = counts, outputs

    @classmethod
    def of(cls, lins: list[Linearization], reducer) -> Rows:
        """The rows of every rank, from this rank's ``lins`` (one per term, the same
        terms on every rank): one ``all_gather`` of the point counts."""
        local = torch.tensor([lin.r.shape[0] for lin in lins], device=reducer.device)
        counts = [c.tolist() for c in reducer.gather(local, [len(lins)] * reducer.world)]
        return cls(counts, [lin.r.shape[1] for lin in lins])

    @property
    def totals(self) -> list[int]:
        """N_t over all ranks, per term."""
        return [sum(c[t] for c in self.counts) for t in range(len(self.outputs))]

    def sizes(self, rank: int) -> list[int]:
        """The rows N_t,r M_t of each term on ``rank``."""
        return [n * m for n, m in zip(self.counts[rank], self.outputs)]

    def to_global(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """``(R, ...)`` from every rank's rows in its local order (term by term),
        ``pieces[r]`` of shape ``(Σ_t N_t,r M_t, ...)``."""
        if len(pieces) == 1:
            return pieces[0]
        blocks = [p.split(self.sizes(r)) for r, p in enumerate(pieces)]
        return torch.cat([b[t] for t in range(len(self.outputs)) for b in blocks])

    def local(self, v: torch.Tensor, rank: int) -> torch.Tensor:
        """``rank``'s rows of a global ``v (R, ...)``, in its local order (term by term)."""
        if len(self.counts) == 1:
            return v
        world = len(self.counts)
        sizes = [self.sizes(r)[t] for t in range(len(self.outputs)) for r in range(world)]
        blocks = v.split(sizes)
        return torch.cat([blocks[t * world + rank] for t in range(len(self.outputs))])


def gather_rows(x: torch.Tensor, rows: Rows, reducer) -> torch.Tensor:
    """The global ``(R, ...)`` of every rank's rows ``x (R_r, ...)`` (local order; the
    trailing dims the same on every rank): one ``all_gather``."""
    width = math.prod(x.shape[1:])
    lengths = [sum(rows.sizes(r)) * width for r in range(reducer.world)]
    flat = reducer.gather(x.reshape(-1), lengths)
    return rows.to_global([f.view(-1, *x.shape[1:]) for f in flat])


def _pieces(lin: Linearization, n: int) -> list[tuple[tuple[int, ...], int]]:
    """``[(shape, point axis)]`` of the tensors of one term with ``n`` points, in the
    order they are packed: ``r (n, M)``, then per layer ``X (n, S, d_x)`` and
    ``g (M, n, S, d_out)``."""
    M = lin.r.shape[1]
    out = [((n, M), 0)]
    for layer in lin.layers.values():
        d_x = layer.x_columns.dense.shape[-1]
        out += [((n, layer.S, d_x), 0), ((M, n, layer.S, layer.d_out), 1)]
    return out


def _tensors(lin: Linearization) -> list[torch.Tensor]:
    """The tensors of one term in the order of :func:`_pieces`."""
    return [lin.r, *(t for L in lin.layers.values() for t in (L.X, L.g))]


def _unpack(flat: torch.Tensor, lins: list[Linearization], counts: list[int]) -> list[list]:
    """One rank's packed buffer as ``[[r, X, g, X, g, ...] per term]`` (its ``counts``)."""
    out, i = [], 0
    for lin, n in zip(lins, counts):
        term = []
        for shape, _ in _pieces(lin, n):
            size = torch.Size(shape).numel()
            term.append(flat[i : i + size].view(shape))
            i += size
        out.append(term)
    return out


def gather_linearizations(lins: list[Linearization], rows: Rows, reducer) -> list[Linearization]:
    """Every term's linearisation on the points of all ranks (rank by rank), on every rank.

    One ``all_gather`` of each rank's residuals, layer inputs X and pre-activation
    gradients g (factored columns multiplied out). The gathered layers carry X, g and the
    bias entries e (the same on every rank): what :func:`~taylorc.optim.woodbury.kernel`
    reads; not their :attr:`~Layer.constant_columns` (all columns count as per point).
    In one process (``reducer.world == 1``), ``lins`` themselves.

    Returns:
        one :class:`Linearization` per term, ``r (N_t, M_t)`` with N_t over all ranks,
        in ``lins``' dtype and device.
    """
    if reducer.world == 1:
        return lins
    flat = torch.cat([t.reshape(-1) for lin in lins for t in _tensors(lin)])
    lengths = [
        sum(torch.Size(s).numel() for lin, n in zip(lins, c) for s, _ in _pieces(lin, n))
        for c in rows.counts
    ]
    per_rank = [_unpack(f, lins, c) for f, c in zip(reducer.gather(flat, lengths), rows.counts)]
    out = []
    for t, lin in enumerate(lins):
        axes = [axis for _, axis in _pieces(lin, 0)]
        r, *columns = [torch.cat([p[t][k] for p in per_rank], ax) for k, ax in enumerate(axes)]
        layers = {
            name: Layer(L.weight, L.bias, X, g, L.e, L.bias_columns, L.active_columns)
            for (name, L), X, g in zip(lin.layers.items(), columns[::2], columns[1::2])
        }
        out.append(Linearization(r, layers))
    return out
