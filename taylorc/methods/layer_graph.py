"""The Taylor graph as a product: :class:`TaylorGraph`, its linear layers, runs with perturbations.

``op.taylor_graph(x)`` (:meth:`taylorc.api.CompiledOperator.taylor_graph`) builds the
graph of the operator through the layer pipeline (taylor,
:class:`~taylorc.passes.layers.KeepInputsPass`, collapse,
:class:`~taylorc.passes.layers.LayerPass`; no cleanup, unstack, lowering or whole-MLP
kernel) and returns it with its :class:`~taylorc.passes.layers.LinearLayer` records.
:meth:`TaylorGraph.run` evaluates it with zero-valued perturbations added to every
layer's outputs and returns every layer's input columns: what Kronecker-factored
curvature for PINN losses needs (Dangel, Müller, Zeinhofer, NeurIPS 2024; the graph:
Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode AD", NeurIPS 2025). The
names before issue 31 (``SiteRun``, ``site_gradients``, ``TaylorGraph.sites``,
``.site()``, ``LayerRun.taps``, ``taps=``) still work, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .. import ir
from ..deprecation import renamed, renamed_keyword, renamed_names
from ..passes.layers import LinearLayer, column_groups
from .taylor import Taylor


@dataclass
class LayerRun:
    """One evaluation of a :class:`TaylorGraph` with perturbations.

    Attributes:
        outputs: what the operator returns: a tensor ``(N, *out)``, or a dict of them.
        inputs: layer name -> ``Z (N, S, d_in)`` (``(N, S, n, d_in)`` for a layer applied
            to ``(N, n, d)``), the input columns in the layer's column order; known-zero
            columns are zeros. Differentiable (call ``.detach()`` for curvature factors).
        perturbations: layer name -> the zero perturbation ``(N, S, d_out)`` (or
            ``(N, S, n, d_out)``) added to its outputs, a leaf with ``requires_grad``; after
            a backward pass of (a sum over points of) the outputs,
            ``perturbations[name].grad[n, s] = dr_n / dz_ns``. Empty for a graph built
            without perturbations.
        columns: (graphs built without perturbations) layer name -> its output tensors, one
            per :func:`~taylorc.passes.layers.column_groups` entry;
            :func:`layer_output_gradients` reads g from them. Empty for a graph with
            perturbations.
        factors: (graphs built without perturbations) layer name -> ``[(Factored, P, Q),
            ...]``, the values of the layer's :class:`~taylorc.passes.factored.Factored`
            columns; their inputs are not in ``inputs`` (which then holds the other
            columns, in order).
    """

    outputs: torch.Tensor | dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    perturbations: dict[str, torch.Tensor]
    columns: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    factors: dict[str, list] = field(default_factory=dict)
    taps = renamed("LayerRun.taps", "perturbations")

    def input_columns(self, layer: LinearLayer) -> Columns:
        """``Z`` of ``layer`` as :class:`Columns` over its S columns (rows of a point, for
        ``rows_per_point`` n > 1, stay a separate axis of ``dense``: ``(N, S, n, d_in)``)."""
        z = self.inputs[layer.name]
        return _layer_columns(layer, "input", self.factors.get(layer.name, ()), lambda _: z)


def _layer_columns(layer: LinearLayer, side: str, values, dense_of) -> Columns:
    """One side of ``layer`` as :class:`Columns`: ``values`` the ``(Factored, P, Q)`` of its
    blocks (those of the other side are skipped), ``dense_of(cols)`` the stack of the
    columns no block of ``side`` holds."""
    held = layer.factored_columns(side)
    cols = tuple(s for s in range(layer.S) if s not in held)
    blocks = tuple((f.cols, P, Q[list(f.rows)]) for f, P, Q in values if f.side == side)
    return Columns(layer.S, dense_of(cols), cols, blocks)


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
    """The compiled Taylor graph of one input shape, with its linear layers.

    Attributes:
        gm: the ``torch.fx.GraphModule``; ``gm(*params, *buffers, *args, *perturbations)``
            returns ``(*terms, *Z)``, one term per requested operator, one ``Z`` per layer
            (built without perturbations: then the output columns and factored blocks,
            see :class:`~taylorc.passes.layers.LayerPass`).
        layers: the :class:`~taylorc.passes.layers.LinearLayer` records, in forward order.
        plan: the :class:`~taylorc.operators.plan.JetPlan`.
        info: the graph's :class:`~taylorc.ir.GraphInfo`.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        captured,
        ctx,
        operator,
        shape: tuple,
        perturbations: bool = True,
    ):
        self.gm, self.captured, self.ctx, self._op = gm, captured, ctx, operator
        self.perturbations = perturbations  # False: none; the output columns are returned
        self.shape = shape  # of the coordinates it was built for
        self.plan = ctx.plan
        self.info = ir.info(gm)
        self.layers: list[LinearLayer] = self.info.layers

    sites = renamed("TaylorGraph.sites", "layers")
    taps = renamed("TaylorGraph.taps", "perturbations")

    def layer(self, name: str) -> LinearLayer:
        """The layer named ``name`` (KeyError if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no linear layer {name!r}; layers: {[u.name for u in self.layers]}")

    def site(self, name: str) -> LinearLayer:
        """The old name of :meth:`layer` (deprecated)."""
        warnings.warn("TaylorGraph.site is now layer", DeprecationWarning, stacklevel=2)
        return self.layer(name)

    def parameters_of(self, layer: LinearLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The live ``(W, b)`` of a layer in the compiled model."""
        return layer.parameters(self._op.model)

    def run(self, *args: torch.Tensor) -> LayerRun:
        """Evaluate at the call's arguments with zero perturbations on every layer's outputs.

        Args:
            args: the same arguments as the operator's call (``x (N, *in)``, or all of a
                model of several arguments), of the shape this graph was built for.

        Returns:
            a :class:`LayerRun`.

        Raises:
            ValueError: arguments of another shape, dtype or device than the graph's.
        """
        x = args[self._op.wrt_index(args)]
        if tuple(x.shape) != self.shape:
            raise ValueError(
                f"this Taylor graph is for inputs of shape {self.shape}, "
                f"got {tuple(x.shape)}: call op.taylor_graph on them"
            )
        n, like = x.shape[0], {"dtype": x.dtype, "device": x.device}
        perturbations = {
            u.name: torch.zeros(self._perturbation_shape(u, n), **like, requires_grad=True)
            for u in self.layers
            if self.perturbations
        }
        outs = self.gm(*self.captured.inputs(self._op.model, *args), *perturbations.values())
        T, S = len(self._op.ops), len(self.layers)
        terms, zs, rest = outs[:T], outs[T : T + S], list(outs[T + S :])
        outputs = terms[0] if self._op.single else dict(zip(self._op.ops, terms))
        columns, factors = {}, {}
        for layer in self.layers if not self.perturbations else ():
            k = len(column_groups(layer))
            columns[layer.name], rest = rest[:k], rest[k:]
        for layer in self.layers if not self.perturbations else ():
            k = 2 * len(layer.factored)
            got, rest = rest[:k], rest[k:]
            factors.update({layer.name: list(zip(layer.factored, got[::2], got[1::2]))})
        inputs = {layer.name: z for layer, z in zip(self.layers, zs)}
        return LayerRun(outputs, inputs, perturbations, columns, factors)

    def _perturbation_shape(self, layer: LinearLayer, n: int) -> tuple:
        """The perturbation of ``layer`` for ``n`` points (a graph for every batch size holds
        the build's count in the perturbation's first dim)."""
        shape = tuple(layer.perturbation.meta["val"].shape)
        built = self.ctx.built_batch
        return (n,) + shape[1:] if built is not None and shape[0] == built else shape

    def __call__(self, *args: torch.Tensor):
        """The operator's value at ``args`` (as ``op(*args)``), through this graph."""
        return self.run(*args).outputs


def layer_output_gradients(
    pairs: list, scalar: torch.Tensor, retain_graph: bool = False, factored: bool = False
) -> list:
    """``g = d scalar / dz`` of each ``(LayerRun, LinearLayer)`` pair, in one reverse pass.

    Args:
        pairs: ``[(run, layer), ...]``, runs of graphs with or without perturbations.
        scalar: a 0-d tensor computed from the runs' outputs (e.g. a residual summed
            over points: then ``g[n, s] = dr_n / dz_ns``).
        retain_graph: keep the autograd graph for a further pass.
        factored: return :class:`Columns` (the g of :class:`~taylorc.passes.factored.Factored`
            output columns kept as products) instead of tensors.

    Returns:
        per pair ``g (N, S, d_out)`` (``(N, S, n, d_out)`` with ``rows_per_point`` n),
        the perturbation's layout; zero for columns that do not reach ``scalar`` and, in a
        graph without perturbations, for outputs that need no gradient (a frozen layer on
        the data).
    """
    leaves, spans = [], []
    for run, layer in pairs:
        got = [run.perturbations[layer.name]] if run.perturbations else run.columns[layer.name]
        got = got + [P for f, P, _ in run.factors.get(layer.name, ()) if f.side == "output"]
        spans.append((len(leaves), len(got)))
        leaves += got
    live = [t for t in leaves if t.requires_grad]  # not: outputs of frozen layers on data
    got = iter(torch.autograd.grad(scalar, live, retain_graph=retain_graph, allow_unused=True))
    grads = [next(got) if t.requires_grad else None for t in leaves]
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    out = []
    for (run, layer), (i, k) in zip(pairs, spans):
        if run.perturbations:
            out.append(Columns(layer.S, grads[i], tuple(range(layer.S))) if factored else grads[i])
            continue
        g = _assemble(layer, run, leaves[i : i + k], grads[i : i + k])
        out.append(g if factored else g.full())
    return out


def _assemble(layer: LinearLayer, run: LayerRun, tensors: list, grads: list) -> Columns:
    """The per-column gradients of one layer's output groups and factored outputs, in the
    perturbation's layout."""
    groups = column_groups(layer)
    at = {}
    for (_, cols), g in zip(groups, grads):
        for s in cols:
            c = layer.columns[s]
            at[s] = g if c.index is None else g[c.index]
    fs = [(f, Q) for f, _, Q in run.factors.get(layer.name, ()) if f.side == "output"]
    values = [(f, u, Q) for (f, Q), u in zip(fs, grads[len(groups) :])]
    M, d = tensors[0].shape[-2:]
    zero = tensors[0].new_zeros(M, d)

    def dense_of(cols):
        g = torch.stack([at.get(s, zero) for s in cols], 1)  # (N * n, S', d_out)
        n = layer.rows_per_point
        if n > 1:  # rows of one point are consecutive (never factored)
            g = g.reshape(M // n, n, layer.S, d).movedim(1, 2)
        return g

    return _layer_columns(layer, "output", values, dense_of)


def build_taylor_graph(
    op, args: tuple, perturbations: bool = True, taps: bool | None = None
) -> TaylorGraph:
    """The graph of ``op``'s method that keeps its linear layers' columns, for ``args``.

    Built and cached by the operator's graph cache as the method's
    :class:`~taylorc.methods.taylor.LayerVariant` (one graph for every batch size where
    the proof holds). ``perturbations=False`` builds the graph without perturbation
    inputs (its runs give g through :func:`layer_output_gradients` only), cached apart.
    ``taps=``: the old name of ``perturbations=`` (deprecated).

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
    perturbations = renamed_keyword(perturbations, taps, "taps", "perturbations")
    x = args[op.wrt_index(args)]
    op._check(x)
    gm, cap, ctx = op.graph_for(x, args, op.method_obj.with_layers(perturbations))
    return TaylorGraph(gm, cap, ctx, op, tuple(x.shape), perturbations)


# the names before issue 31 (sites and taps) still work, with a DeprecationWarning
__getattr__ = renamed_names(
    globals(),
    {
        "SiteRun": "LayerRun",
        "site_gradients": "layer_output_gradients",
        "LinearSite": "LinearLayer",
    },
)
