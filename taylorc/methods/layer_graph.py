"""The Taylor graph as a product: :class:`TaylorGraph`, its linear sites, and runs with taps.

``op.taylor_graph(x)`` (:meth:`taylorc.api.CompiledOperator.taylor_graph`) builds the
graph of the operator through the sites pipeline (taylor, :class:`~taylorc.passes.sites.PinPass`,
collapse, :class:`~taylorc.passes.sites.SitesPass`; no cleanup, unstack, lowering or
whole-MLP kernel) and returns it with its :class:`~taylorc.passes.sites.LinearSite` records.
:meth:`TaylorGraph.run` evaluates it with zero-valued taps on every site's outputs
and returns every site's input columns: what Kronecker-factored curvature for PINN
losses needs (Dangel, Müller, Zeinhofer, NeurIPS 2024; the graph: Dangel, Siebert,
Zeinhofer, Walther, "Collapsing Taylor Mode AD", NeurIPS 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import ir
from ..passes.sites import LinearSite, column_groups
from .taylor import Taylor


@dataclass
class SiteRun:
    """One evaluation of a :class:`TaylorGraph` with taps.

    Attributes:
        outputs: what the operator returns: a tensor ``(N, *out)``, or a dict of them.
        inputs: site name -> ``Z (N, S, d_in)`` (``(N, S, n, d_in)`` for a layer applied
            to ``(N, n, d)``), the input columns in the site's column order; known-zero
            columns are zeros. Differentiable (call ``.detach()`` for curvature factors).
        taps: site name -> the zero tap ``(N, S, d_out)`` (or ``(N, S, n, d_out)``), a
            leaf with ``requires_grad``; after a backward pass of (a sum over points of)
            the outputs, ``taps[name].grad[n, s] = dr_n / dz_ns``. Empty for a graph
            built without taps.
        columns: (graphs built without taps) site name -> its output tensors, one per
            :func:`~taylorc.passes.sites.column_groups` entry; :func:`site_gradients` reads g
            from them. Empty for a graph with taps.
        factors: (graphs built without taps) site name -> ``[(Factored, P, Q), ...]``,
            the values of the site's :class:`~taylorc.passes.factored.Factored` columns; their
            inputs are not in ``inputs`` (which then holds the other columns, in order).
    """

    outputs: torch.Tensor | dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    taps: dict[str, torch.Tensor]
    columns: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    factors: dict[str, list] = field(default_factory=dict)

    def input_columns(self, site: LinearSite) -> Columns:
        """``Z`` of ``site`` as :class:`Columns` over its S columns (rows of a point, for
        ``rows_per_point`` n > 1, stay a separate axis of ``dense``: ``(N, S, n, d_in)``)."""
        z = self.inputs[site.name]
        return _site_columns(site, "input", self.factors.get(site.name, ()), lambda _: z)


def _site_columns(site: LinearSite, side: str, values, dense_of) -> Columns:
    """One side of ``site`` as :class:`Columns`: ``values`` the ``(Factored, P, Q)`` of its
    blocks (those of the other side are skipped), ``dense_of(cols)`` the stack of the
    columns no block of ``side`` holds."""
    held = site.factored_columns(side)
    cols = tuple(s for s in range(site.S) if s not in held)
    blocks = tuple((f.cols, P, Q[list(f.rows)]) for f, P, Q in values if f.side == side)
    return Columns(site.S, dense_of(cols), cols, blocks)


def take_columns(t: torch.Tensor, cols: list[int], dim: int) -> torch.Tensor:
    """``t``'s entries ``cols`` (sorted, not empty) along ``dim``: a view when they are a
    contiguous range, else a copy."""
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return t.narrow(dim, cols[0], len(cols))
    return t.index_select(dim, torch.tensor(cols, device=t.device))


@dataclass(frozen=True)
class Columns:
    """Coefficient columns ``(*lead, S, d)``, held as a dense stack and factored blocks.

    Attributes:
        S: the number of columns.
        dense: ``(*lead, C, d)``: the columns ``cols``, in that order.
        cols: the columns ``dense`` holds, ascending.
        factored: ``((cols_f, P, Q), ...)`` with ``P (*lead, d)`` and ``Q (len(cols_f), d)``:
            column ``cols_f[j]`` is ``P ⊙ Q[j]`` (:class:`~taylorc.passes.factored.Factored`).

    Every column is in exactly one of ``cols`` and the blocks' ``cols_f``. Frozen: the
    multiplied-out :meth:`full` is cached, so the fields are never reassigned (nor should
    the tensors be changed in place).
    """

    S: int
    dense: torch.Tensor
    cols: tuple[int, ...]
    factored: tuple = ()

    @staticmethod
    def of(t: torch.Tensor) -> Columns:
        """All columns of ``t (*lead, S, d)`` dense."""
        return Columns(t.shape[-2], t, tuple(range(t.shape[-2])))

    def tensors(self) -> list[torch.Tensor]:
        """``dense``, then each block's ``P`` and ``Q``: what :meth:`replace` takes back."""
        return [self.dense, *(t for _, P, Q in self.factored for t in (P, Q))]

    def replace(self, tensors) -> Columns:
        """The same columns with the tensors taken in :meth:`tensors`' order from the
        iterator ``tensors`` (e.g. a compiled replay's outputs)."""
        dense = next(tensors)
        factored = tuple((cols, next(tensors), next(tensors)) for cols, _, _ in self.factored)
        return Columns(self.S, dense, self.cols, factored)

    @property
    def factored_columns(self) -> set[int]:
        """The columns held by factored blocks."""
        return {s for cols, _, _ in self.factored for s in cols}

    def full(self) -> torch.Tensor:
        """``(*lead, S, d)``, the factored columns multiplied out (cached)."""
        if not self.factored:
            return self.dense
        if "_full" not in self.__dict__:
            d = self.dense
            out = d.new_empty(*d.shape[:-2], self.S, d.shape[-1])
            out[..., list(self.cols), :] = d
            for cols, P, Q in self.factored:
                out[..., list(cols), :] = P.unsqueeze(-2) * Q
            self.__dict__["_full"] = out
        return self.__dict__["_full"]

    def take(self, cols: list[int]) -> torch.Tensor:
        """``(*lead, len(cols), d)``: the columns ``cols`` (ascending, not empty); a view of
        ``dense`` when they are a contiguous run of it."""
        at = {s: i for i, s in enumerate(self.cols)}
        if not all(s in at for s in cols):
            return take_columns(self.full(), cols, -2)
        return take_columns(self.dense, [at[s] for s in cols], -2)

    @staticmethod
    def cat(parts: list[Columns]) -> Columns:
        """The columns of ``parts`` one after the other (same leading dims)."""
        if len(parts) == 1:
            return parts[0]
        cols, factored, at = [], [], 0
        for c in parts:
            cols += [at + s for s in c.cols]
            factored += [(tuple(at + s for s in fc), P, Q) for fc, P, Q in c.factored]
            at += c.S
        dense = torch.cat([c.dense for c in parts], -2)
        return Columns(at, dense, tuple(cols), tuple(factored))

    @staticmethod
    def stack(parts: list[Columns]) -> Columns:
        """A new leading dim over ``parts`` (same columns and factors' Q, e.g. the g of each
        residual output)."""

        def lead(ts):  # one part: a view, not a copy
            return ts[0][None] if len(ts) == 1 else torch.stack(ts)

        first = parts[0]
        factored = tuple(
            (f, lead([p.factored[i][1] for p in parts]), Q)
            for i, (f, _, Q) in enumerate(first.factored)
        )
        return Columns(first.S, lead([p.dense for p in parts]), first.cols, factored)


class TaylorGraph:
    """The compiled Taylor graph of one input shape, with its linear sites.

    Attributes:
        gm: the ``torch.fx.GraphModule``; ``gm(*params, *buffers, *args, *taps)``
            returns ``(*terms, *Z)``, one term per requested operator, one ``Z`` per site
            (built without taps: then the output columns and factored blocks, see
            :class:`~taylorc.passes.sites.SitesPass`).
        sites: the :class:`~taylorc.passes.sites.LinearSite` records, in forward order.
        plan: the :class:`~taylorc.operators.plan.JetPlan`.
        info: the graph's :class:`~taylorc.ir.GraphInfo`.
    """

    def __init__(
        self, gm: torch.fx.GraphModule, captured, ctx, operator, shape: tuple, taps: bool = True
    ):
        self.gm, self.captured, self.ctx, self._op = gm, captured, ctx, operator
        self.taps = taps  # False: no tap inputs; the outputs' columns are returned instead
        self.shape = shape  # of the coordinates it was built for
        self.plan = ctx.plan
        self.info = ir.info(gm)
        self.sites: list[LinearSite] = self.info.sites

    def site(self, name: str) -> LinearSite:
        """The site named ``name`` (KeyError if none)."""
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no linear site {name!r}; sites: {[s.name for s in self.sites]}")

    def parameters_of(self, site: LinearSite) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The live ``(W, b)`` of a site in the compiled model."""
        return site.parameters(self._op.model)

    def run(self, *args: torch.Tensor) -> SiteRun:
        """Evaluate at the call's arguments with zero taps on every site's outputs.

        Args:
            args: the same arguments as the operator's call (``x (N, *in)``, or all of a
                model of several arguments), of the shape this graph was built for.

        Returns:
            a :class:`SiteRun`.

        Raises:
            ValueError: arguments of another shape, dtype or device than the graph's.
        """
        x = args[self._op.wrt_index(args)]
        if tuple(x.shape) != self.shape:
            raise ValueError(
                f"this Taylor graph is for inputs of shape {self.shape}, "
                f"got {tuple(x.shape)}: call op.taylor_graph on them"
            )
        taps = {
            s.name: torch.zeros(
                self._tap_shape(s, x.shape[0]), dtype=x.dtype, device=x.device, requires_grad=True
            )
            for s in self.sites
            if self.taps
        }
        outs = self.gm(*self.captured.inputs(self._op.model, *args), *taps.values())
        T, S = len(self._op.ops), len(self.sites)
        terms, zs, rest = outs[:T], outs[T : T + S], list(outs[T + S :])
        outputs = terms[0] if self._op.single else dict(zip(self._op.ops, terms))
        columns, factors = {}, {}
        for s in self.sites if not self.taps else ():
            k = len(column_groups(s))
            columns[s.name], rest = rest[:k], rest[k:]
        for s in self.sites if not self.taps else ():
            k = 2 * len(s.factored)
            got, rest = rest[:k], rest[k:]
            factors.update({s.name: list(zip(s.factored, got[::2], got[1::2]))})
        inputs = {s.name: z for s, z in zip(self.sites, zs)}
        return SiteRun(outputs, inputs, taps, columns, factors)

    def _tap_shape(self, site: LinearSite, n: int) -> tuple:
        """The tap of ``site`` for ``n`` points (a graph for every batch size holds the
        build's count in the tap's first dim)."""
        shape = tuple(site.tap.meta["val"].shape)
        built = self.ctx.built_batch
        return (n,) + shape[1:] if built is not None and shape[0] == built else shape

    def __call__(self, *args: torch.Tensor):
        """The operator's value at ``args`` (as ``op(*args)``), through this graph."""
        return self.run(*args).outputs


def site_gradients(
    pairs: list, scalar: torch.Tensor, retain_graph: bool = False, factored: bool = False
) -> list:
    """``g = d scalar / dz`` of each ``(SiteRun, LinearSite)`` pair, in one reverse pass.

    Args:
        pairs: ``[(run, site), ...]``, runs of graphs with or without taps.
        scalar: a 0-d tensor computed from the runs' outputs (e.g. a residual summed
            over points: then ``g[n, s] = dr_n / dz_ns``).
        retain_graph: keep the autograd graph for a further pass.
        factored: return :class:`Columns` (the g of :class:`~taylorc.passes.factored.Factored`
            output columns kept as products) instead of tensors.

    Returns:
        per pair ``g (N, S, d_out)`` (``(N, S, n, d_out)`` with ``rows_per_point`` n),
        the tap's layout; zero for columns that do not reach ``scalar`` and, in a graph
        without taps, for outputs that need no gradient (a frozen layer on the data).
    """
    leaves, spans = [], []
    for run, site in pairs:
        got = [run.taps[site.name]] if run.taps else run.columns[site.name]
        got = got + [P for f, P, _ in run.factors.get(site.name, ()) if f.side == "output"]
        spans.append((len(leaves), len(got)))
        leaves += got
    live = [t for t in leaves if t.requires_grad]  # not: outputs of frozen layers on data
    got = iter(torch.autograd.grad(scalar, live, retain_graph=retain_graph, allow_unused=True))
    grads = [next(got) if t.requires_grad else None for t in leaves]
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    out = []
    for (run, site), (i, k) in zip(pairs, spans):
        if run.taps:
            out.append(Columns(site.S, grads[i], tuple(range(site.S))) if factored else grads[i])
            continue
        g = _assemble(site, run, leaves[i : i + k], grads[i : i + k])
        out.append(g if factored else g.full())
    return out


def _assemble(site: LinearSite, run: SiteRun, tensors: list, grads: list) -> Columns:
    """The per-column gradients of one site's output groups and factored outputs, in the
    tap's layout."""
    groups = column_groups(site)
    at = {}
    for (_, cols), g in zip(groups, grads):
        for s in cols:
            c = site.columns[s]
            at[s] = g if c.index is None else g[c.index]
    fs = [(f, Q) for f, _, Q in run.factors.get(site.name, ()) if f.side == "output"]
    values = [(f, u, Q) for (f, Q), u in zip(fs, grads[len(groups) :])]
    M, d = tensors[0].shape[-2:]
    zero = tensors[0].new_zeros(M, d)

    def dense_of(cols):
        g = torch.stack([at.get(s, zero) for s in cols], 1)  # (N * n, S', d_out)
        n = site.rows_per_point
        if n > 1:  # rows of one point are consecutive (never factored)
            g = g.reshape(M // n, n, site.S, d).movedim(1, 2)
        return g

    return _site_columns(site, "output", values, dense_of)


def build_taylor_graph(op, args: tuple, taps: bool = True) -> TaylorGraph:
    """The graph of ``op``'s method that keeps its linear layers' columns, for ``args``.

    Built and cached by the operator's graph cache as the method's
    :class:`~taylorc.methods.taylor.LayerVariant` (one graph for every batch size where
    the proof holds). ``taps=False`` builds the graph without tap inputs (its runs give g
    through :func:`site_gradients` only), cached apart.

    Raises:
        ValueError: ``op.method`` is not ``"collapsed"`` or ``"taylor"`` (the other
            methods have no Taylor coefficients to share a weight); bad inputs, as for
            the operator's call.
    """
    if not isinstance(op.method_obj, Taylor):
        raise ValueError(
            f"taylor_graph needs method='collapsed' or 'taylor', not {op.method!r}: "
            "the other methods propagate no Taylor coefficients through the layers"
        )
    x = args[op.wrt_index(args)]
    op._check(x)
    gm, cap, ctx = op.graph_for(x, args, op.method_obj.with_layers(taps))
    return TaylorGraph(gm, cap, ctx, op, tuple(x.shape), taps)
