"""Evaluate a PINN residual through the linear layers it reaches: ``linearize``.

Residuals are plain callables of the points (``lambda x: -lap(x) - f(x)``).
:func:`taylorc.optim.residual.run` evaluates one through a ``torch.fx`` trace in
which every :class:`~taylorc.api.CompiledOperator` call runs the operator's graph
that keeps its layers' columns, built without perturbations (``op.taylor_graph``: it also
returns every column's input and output), and a direct call of the model runs the
value operator ``"u"`` (:func:`~taylorc.optim.residual.value_operator`) the same way: the residual's value is unchanged, and one
reverse pass of r to the output columns
(:func:`~taylorc.methods.layer_graph.layer_output_gradients`) gives ``g_ns = dr_n/dz_ns``
for every use of a layer and column (Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate
Curvature for Physics-Informed Neural Networks", NeurIPS 2024, Sec. 3; Λ = 1 for
the loss ½ r²).

:func:`linearize` groups the columns by weight (several uses of one weight, and the
uses in several operators of one residual, are more columns of one shared layer),
with the bias entries e (1 on value columns, 0 on derivative columns); frozen
parameters are not in θ and get no columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import KFACError
from ..methods.layer_graph import Columns, layer_output_gradients, take_columns
from . import factors
from . import residual as residual_graph
from .layer import Layer
from .residual import legacy_value_op


@dataclass
class Linearization:
    """A loss term linearised at the current parameters: the residual and, per weight, its
    layer inputs and pre-activation gradients (:class:`Layer`).

    The one interface KFAC, ENGD and SPRING read; :meth:`gradient`, :meth:`kronecker_factors` and
    :meth:`jvp` compute from the columns. A compiled evaluation's linearisation
    (:class:`~taylorc.optim.compiled.CompiledLinearization`) answers them from its
    compiled graph instead.

    Attributes:
        r: ``(N, M)`` residual (detached).
        layers: weight name -> :class:`Layer`, in the model's parameter order.
    """

    r: torch.Tensor
    layers: dict[str, Layer]
    # what a compiled evaluation precomputed (CompiledLinearization's fields): none here
    approx = factors = gradients = jvps = None

    @property
    def loss(self) -> torch.Tensor:
        """½ mean over points of ||r_n||² (the PINN loss of this term)."""
        return 0.5 * self.r.pow(2).sum(1).mean()

    def gradient(self, weight: str) -> torch.Tensor:
        """``[∇W | ∇b] (d_out, d_in[+1])`` of this term's loss (:func:`~.factors.layer_gradient`)."""
        return factors.layer_gradient(self.layers[weight], self.r)

    def kronecker_factors(self, weight: str, approx: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The Kronecker factors ``(A, B)`` of KFAC-``approx`` (:func:`~.factors.layer_factors`)."""
        return factors.layer_factors(self.layers[weight], approx)

    def jvp(self, *directions: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``[J v, ...]`` of the residual, each ``(M, N)`` (:func:`~.factors.eager_jvp`)."""
        return factors.eager_jvp(self.r, self.layers, *directions)


def _per_row(uses, fact) -> list:
    """One entry per column of the ``uses`` (graph records,
    :class:`~taylorc.passes.layers.LinearLayer`) concatenated, ``fact(use, s, column)``
    repeated for each of its n rows per point (the order of ``_flat`` and ``_group``)."""
    return [
        fact(use, s, c)
        for use in uses
        for s, c in enumerate(use.columns)
        for _ in range(use.rows_per_point)
    ]


def _constant_columns(X: torch.Tensor) -> tuple[int, ...]:
    """The s with ``X[n, s] = X[0, s]`` for every n, of ``X (N, S, d)``, compared exactly:
    two rows first, then all points of the columns that passed (two host syncs).
    Empty for N < 2 (every column is then trivially constant; nothing to gain)."""
    if X.shape[0] < 2:
        return ()
    candidates = (X[1] == X[0]).all(-1).nonzero()[:, 0].tolist()
    if not candidates:
        return ()
    cols = take_columns(X, candidates, 1)
    # a count of mismatches: faster than all() on these shapes
    mismatches = (cols != cols[:1]).flatten(2).sum((0, 2))
    return tuple(s for s, bad in zip(candidates, mismatches.tolist()) if not bad)


def _flat(t: torch.Tensor, lead: int) -> torch.Tensor:
    """``(*lead dims, S, [n,] d) -> (*lead dims, S * n, d)``."""
    return t.reshape(*t.shape[:lead], -1, t.shape[-1])


def linearize(model, *args, check: bool = False) -> Linearization:
    """``linearize(model, residual, x)``: evaluate ``residual(x)`` through the layer graphs
    and read every trainable layer's X, e and g.

    Args:
        model: the ``nn.Module`` the residual's operators were compiled from.
        args: ``residual, x[, check]``: ``residual`` a callable ``x -> r``, ``r`` of shape
            ``(N,)`` or ``(N, M)``; ``x`` the points ``(N, *in)``. The old form
            ``(value_op, residual, x)`` still works (deprecated: the value operator is
            built from the model).
        check: also verify that every parameter the residual depends on is covered
            by linear layers and that their gradient equals Σ g Z̃ᵀ (one more backward).

    Returns:
        a :class:`Linearization` over the trainable parameters θ: a frozen weight
        (``requires_grad=False``) has no :class:`Layer`, a frozen bias no bias column.

    Raises:
        KFACError: no (trainable) linear layer reached; a parameter used outside the
            linear layers (named); a trainable bias of a frozen weight (named);
            operators of another model or of a method without Taylor graph.
    """
    residual, x, *rest = legacy_value_op(args, "linearize")
    check = rest[0] if rest else check
    trainable = trainable_names(model)
    r, uses = evaluate(model, residual, x, trainable, keep_graph=check)
    layers = _group(model, uses, trainable)
    if check:
        _check_coverage(model, r, layers)
    return Linearization(r.detach(), layers)


def trainable_names(model) -> frozenset[str]:
    """The qualified names of ``model``'s parameters with ``requires_grad`` (θ)."""
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def evaluate(
    model, residual, x: torch.Tensor, trainable: frozenset, keep_graph: bool = False
) -> tuple[torch.Tensor, list]:
    """The tensor work of :func:`linearize`: ``residual(x)`` through the layer graphs and
    one reverse pass per residual output.

    Args:
        model, residual, x: as for :func:`linearize`.
        trainable: the names of θ (:func:`trainable_names`).
        keep_graph: keep r's autograd graph (for the coverage check).

    Returns:
        ``(r, uses)``: ``r (N, M)`` and, per use of a trainable weight in forward order,
        ``(use, X, g)`` (``use`` the graph's :class:`~taylorc.passes.layers.LinearLayer`)
        with ``X`` the detached input columns ``(N, S', d_in)`` and ``g``
        the output gradients ``(M, N, S', d_out)`` as
        :class:`~taylorc.methods.layer_graph.Columns` (S' = S n: a point's n rows are more
        columns). Only tensors and the graph's records: what a trace can replay.

    Raises:
        KFACError: as :func:`linearize` (the coverage check aside).
    """
    r, runs = residual_graph.run(model, residual, x)
    r = r.reshape(x.shape[0], -1)
    found = [(use, run) for tg, run in runs for use in tg.layers]
    if not found:
        raise KFACError("the residual reaches no linear layer of the model's Taylor graph")
    for use, _ in found:
        if use.weight not in trainable and use.bias in trainable:
            raise KFACError(
                f"the bias {use.bias} is trainable but its weight {use.weight} is frozen: "
                "KFAC's blocks are [W | b]; freeze both or neither"
            )
    # frozen weights are not in θ: no block, no factors, no update
    pairs = [(run, use) for use, run in found if use.weight in trainable]
    if not pairs:
        raise KFACError("the residual reaches no trainable linear layer (all are frozen)")
    M = r.shape[1]
    gs = [  # Λ = 1: one reverse pass per residual output
        layer_output_gradients(
            pairs, r[:, m].sum(), retain_graph=keep_graph or m < M - 1, factored=True
        )
        for m in range(M)
    ]
    uses = [
        (
            use,
            _flat_columns(run.input_columns(use), use),
            Columns.stack([_flat_columns(m[i], use) for m in gs]),
        )
        for i, (run, use) in enumerate(pairs)
    ]
    return r, uses


def _group(
    model, uses: list, trainable: frozenset, constant: dict | None = None
) -> dict[str, Layer]:
    """Concatenate every use of a weight along the column axis, with its bias entries
    (none for a frozen bias: it is not in θ). ``constant``: weight -> the columns to take
    as :attr:`Layer.constant_columns` (a compiled evaluation checks them itself); None:
    found by comparing the values."""
    pieces: dict[str, list] = {}
    for use, X, g in uses:
        pieces.setdefault(use.weight, []).append((use, X, g))
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    layers = {}
    for weight in sorted(pieces, key=order.__getitem__):
        records = [use for use, _, _ in pieces[weight]]
        biases = {u.bias for u in records} - {None}
        if len(biases) > 1:
            raise KFACError(f"the weight {weight} is used with several biases {sorted(biases)}")
        bias = next(iter(biases), None)
        bias = bias if bias in trainable else None
        X = Columns.cat([X for _, X, _ in pieces[weight]])
        g = Columns.cat([g for _, _, g in pieces[weight]])
        e, cols = None, ()
        if bias is not None:  # 0 for a use without the bias
            entries = _per_row(records, lambda u, _, c: float(c.kind == "value" and bool(u.bias)))
            e = torch.tensor(entries, dtype=X.dense.dtype, device=X.dense.device)
            cols = tuple(i for i, v in enumerate(entries) if v)
        reach = _per_row(records, _enters_jacobian)
        active = None if all(reach) else tuple(i for i, v in enumerate(reach) if v)
        if constant is None:
            same = tuple(X.cols[i] for i in _constant_columns(X.dense))
        else:
            same = constant[weight]
        layers[weight] = Layer(weight, bias, X, g, e, cols, active, same)
    return layers


def _enters_jacobian(use, s: int, c) -> bool:
    """Whether column s can add to J_n = Σ_s g_ns Z̃_nsᵀ: its g is not zero by construction
    (its output reaches the result; a factored output's g is read through its product)
    and neither is Z̃ (a known-zero input of a derivative column has bias entry 0 too)."""
    reaches = c.output is not None or s in use.factored_columns("output")
    return reaches and not (c.zero_input and c.kind != "value")


def _flat_columns(c: Columns, use) -> Columns:
    """Detached columns of one use of a layer, a point's n rows as n more columns
    (``(..., S, n, d) -> (..., S * n, d)``; factored columns only have n = 1)."""
    if use.rows_per_point == 1:
        factored = tuple((f, P.detach(), Q.detach()) for f, P, Q in c.factored)
        return Columns(c.S, c.dense.detach(), c.cols, factored)
    return Columns.of(_flat(c.dense.detach(), c.dense.dim() - 3))


def _check_coverage(model, r: torch.Tensor, layers: dict[str, Layer]) -> None:
    """Raise KFACError naming parameters that r depends on outside the linear layers."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(r.sum(), [p for _, p in named], allow_unused=True)
    covered = {}
    for layer in layers.values():
        gw = torch.einsum("mnso,nsi->oi", layer.g, layer.Z)
        covered[layer.weight] = gw[:, : layer.X.shape[-1]]
        if layer.bias is not None:
            covered[layer.bias] = gw[:, -1]
    bad = []
    for (name, _), got in zip(named, grads):
        want = covered.get(name)
        if want is None:
            if got is not None and got.abs().max() > 0:
                bad.append(name)
            continue
        got = torch.zeros_like(want) if got is None else got
        scale = max(got.abs().max().item(), want.abs().max().item(), 1e-30)
        tol = 1e-6 if r.dtype == torch.float64 else 1e-3
        if (got - want).abs().max().item() > tol * scale:
            bad.append(name)
    if bad:
        raise KFACError(
            f"parameters used outside the linear layers of the Taylor graph: {bad}; KFAC "
            "reads curvature only for weights applied by linear layers (addmm/mm) whose "
            "bias, if any, is added inside the layer"
        )
