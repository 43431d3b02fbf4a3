"""A loss term's linearisation compiled: :class:`CompiledEvaluation`, the compiled
backend beside the eager :func:`~taylorc.optim.linearization.linearize` (the per-term cache
that picks one, and its guard, are :class:`taylorc.optim.linearizer.Linearizer`).

The tensor work of :func:`~taylorc.optim.linearization.linearize` (the residual through the
layer graphs, then one reverse pass per residual output for every ``g_ns``) is an eager
chain of some hundred small elementwise ops, each a pass over memory. For a fixed
input shape it is one static program: :class:`CompiledEvaluation` traces it once
(``make_fx`` with fake tensors; the reverse pass is traced into the same graph, so
there is no autograd at run time) and compiles it with inductor, which fuses the
elementwise chains into a few loops (figures: docs/kfac.md).

A trace replays tensor operations only: Python values the residual reads (a global
coefficient, a step counter) are those of the trace, as with ``torch.func`` and
``make_fx``. A residual whose branches depend on tensor values cannot be traced with
fake tensors and stays eager (with a warning); a compiled replay that differs from the
eager evaluation at the points it was built on is refused the same way.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from operator import attrgetter

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..deprecation import renamed
from ..errors import KFACError
from ..passes.cleanup import prune_zeros
from ..runtime.backend import TRACING
from .factors import eager_jvp, layer_factors, layer_gradient
from .linearization import Linearization, _group, evaluate


class _Holder(torch.nn.Module):
    """The model as a submodule, so ``functional_call`` can swap in graph inputs for its
    parameters while ``fn`` (the evaluation) runs."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(x)


def _trace_and_compile(fn, inputs: list):
    """``fn`` (tensors -> list of tensors) traced with ``make_fx`` on fake tensors (the
    real ones it reads become constants) and compiled with inductor for ``inputs``."""
    from torch._inductor.compile_fx import compile_fx

    with TRACING:  # no trace beside a background compile (taylorc.runtime.backend.TRACING)
        gm = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        # the layer graph keeps a known-zero input column as a column (the first layer's
        # top order, Column.zero_input): without this its (N, d_in) @ (d_in, d_out) on
        # zeros runs at every step
        prune_zeros(gm, functional=False)
        gm.recompile()
        return compile_fx(gm, [t.detach() for t in inputs])


def _flatten(r: torch.Tensor, uses: list) -> list[torch.Tensor]:
    """``r`` and every use's column tensors, in :meth:`Columns.tensors` order."""
    return [r, *(t for _, X, g in uses for t in (*X.tensors(), *g.tensors()))]


class CompiledEvaluation:
    """:func:`~taylorc.optim.linearization.evaluate` at one input shape, traced and compiled,
    with the layers' Kronecker factors and gradients when ``approx`` is given.

    Args:
        model, residual: as for :func:`~taylorc.optim.linearization.linearize`.
        x: example points ``(N, *in)``; the replay takes points of this shape, dtype and
            device only.
        trainable: the names of θ (:func:`~taylorc.optim.linearization.trainable_names`).
        approx: ``"expand"`` or ``"reduce"``: also compute every layer's ``(A, B)``
            (:func:`~taylorc.optim.factors.layer_factors`) and gradient
            (:func:`~taylorc.optim.factors.layer_gradient`) in the compiled graph, where
            the columns are made; None: the columns only (ENGD).

    The columns found constant over the points at ``x`` (:attr:`Layer.constant_columns`,
    compared on the values) are taken as constant by the graph, which counts the points
    where they differ at every call. Calling it with points ``x`` returns the
    :class:`CompiledLinearization` at the model's current parameters (graph inputs, not
    constants): the eager backend's :func:`~taylorc.optim.linearization.linearize` and this
    compiled one are siblings behind :class:`~taylorc.optim.linearization.Linearization`.

    Raises:
        Exception: (at construction) whatever the trace (``make_fx``, fake tensors: e.g.
            a residual that branches on tensor values) or inductor raises.
        KFACError: (at construction) the replay at ``x`` differs from the eager
            evaluation (beyond 1e-9 relative in float64, 1e-4 in float32).
        StaleColumns: (at a call) a column taken as constant differs between points.
    """

    shared = renamed("CompiledEvaluation.shared", "constant")

    def __init__(self, model, residual, x, trainable: frozenset, approx=None):
        x = x.contiguous()  # the compiled graph assumes its example's strides
        r, uses = evaluate(model, residual, x, trainable)
        layers = _group(model, uses, trainable)
        self.constant = {w: layer.constant_columns for w, layer in layers.items()}
        self.approx, self._weights = approx, list(layers)
        self._model, self._trainable, self._jvps = model, trainable, {}
        self._count = len(_flatten(r, uses))
        # parameters and buffers are graph inputs: read at every call, never constants
        state = [*model.named_parameters(), *model.named_buffers()]
        names = [n for n, _ in state]
        holder = _Holder(model, lambda x: evaluate(model, residual, x, trainable))
        built = {}

        def flat(*args):
            *params, points = args
            swapped = {f"model.{n}": p for n, p in zip(names, params)}
            r, uses = torch.func.functional_call(holder, swapped, (points,))
            built["uses"] = uses
            r = r.detach()
            return [t.detach() for t in _flatten(r, uses)] + self._statistics(
                model, r, uses, trainable
            )

        # requires_grad as on the model: the traced reverse pass needs it, frozen stays frozen
        example = [t.detach().requires_grad_(t.requires_grad) for _, t in state]
        self._fn = _trace_and_compile(flat, [*example, x])
        self._state = [(model, n) for n, _ in state]
        self._uses = [(use, _blank(X), _blank(g)) for use, X, g in built["uses"]]
        r = r.detach()
        want = _flatten(r, uses) + self._statistics(model, r, uses, trainable)
        _same(want, self._fn(*self._inputs(), x), x.dtype)

    def _statistics(self, model, r, uses, trainable) -> list[torch.Tensor]:
        """Per layer ``A, B, [∇W | ∇b]`` (with ``approx``), then the count of entries
        where a column taken as constant differs from its first point's."""
        layers = _group(model, uses, trainable, self.constant)
        out = []
        for layer in layers.values() if self.approx is not None else ():
            out += [*layer_factors(layer, self.approx), layer_gradient(layer, r)]
        bad = r.new_zeros((), dtype=torch.int64)
        for layer in layers.values():
            if layer.constant_columns:
                cols = layer.x_columns.take(list(layer.constant_columns))
                bad = bad + (cols != cols[:1]).sum()
        return out + [bad]

    def _inputs(self) -> list[torch.Tensor]:
        """The model's parameters and buffers now (looked up by name: a rebound one too)."""
        return [attrgetter(n)(model).detach() for model, n in self._state]

    def __call__(self, x: torch.Tensor) -> CompiledLinearization:
        out = self._fn(*self._inputs(), x.contiguous())
        if out[-1].item():
            raise StaleColumns(
                "a column taken as the same for every point (Layer.constant_columns) differs "
                "between points now"
            )
        columns = out[: self._count]
        r, uses = self._rebuild(columns)
        layers = _group(self._model, uses, self._trainable, self.constant)
        lin = CompiledLinearization(r, layers, approx=self.approx)
        lin.jvps = functools.partial(self.jvps, columns)
        if self.approx is not None:
            stats = out[self._count : -1]
            lin.factors = {w: tuple(stats[3 * i : 3 * i + 2]) for i, w in enumerate(self._weights)}
            lin.gradients = {w: stats[3 * i + 2] for i, w in enumerate(self._weights)}
        return lin

    def _rebuild(self, columns: list) -> tuple[torch.Tensor, list]:
        """``(r, uses)`` from the flat column tensors of one call."""
        it = iter(columns)
        r = next(it)
        return r, [(use, X.replace(it), g.replace(it)) for use, X, g in self._uses]

    def jvps(self, columns: list, *directions: dict) -> list[torch.Tensor]:
        """:func:`~taylorc.optim.factors.jvp` of the linearisation whose flat column
        tensors are ``columns``, compiled at the first call with as many directions
        (each must hold a block of every weight of the term) and checked against the
        eager products then; None (the caller computes them eagerly) where that failed,
        with a warning at the failure."""
        blocks = [d[w].contiguous() for d in directions for w in self._weights]
        k = len(directions)
        try:  # compiled at the first call with k directions; None once it failed
            if k not in self._jvps:
                self._jvps[k] = self._compile_jvps(columns, k, blocks)
            fn = self._jvps[k]
            return None if fn is None else list(fn(*columns, *blocks))
        except Exception as e:  # the eager products are exact
            self._jvps[k] = None
            warnings.warn(f"the Jacobian-vector products run eagerly: {_why(e)}", stacklevel=2)
            return None

    def _compile_jvps(self, columns: list, k: int, blocks: list):
        count, weights = self._count, self._weights

        def products(*args):
            r, uses = self._rebuild(args[:count])
            layers = _group(self._model, uses, self._trainable, self.constant)
            dirs, n = args[count:], len(weights)  # direction by direction
            split = [dict(zip(weights, dirs[i * n : (i + 1) * n])) for i in range(k)]
            return eager_jvp(r, layers, *split)

        fn = _trace_and_compile(products, [*columns, *blocks])
        _same(products(*columns, *blocks), fn(*columns, *blocks), columns[0].dtype)
        return fn


@dataclass
class CompiledLinearization(Linearization):
    """A :class:`~taylorc.optim.linearization.Linearization` whose gradients, Kronecker factors and
    Jacobian-vector products come from the compiled evaluation that made its columns.

    Attributes:
        approx: the KFAC approximation of ``factors`` (None: none computed, ENGD).
        factors: weight name -> ``(A, B)`` of ``approx``, or None.
        gradients: weight name -> ``[∇W | ∇b]``, or None.
        jvps: ``(*directions) -> [J v, ...]`` compiled, or None where compiling failed.
    """

    approx: str | None = None
    factors: dict | None = None
    gradients: dict | None = None
    jvps: object = None

    def gradient(self, weight: str) -> torch.Tensor:
        if self.gradients is not None:
            return self.gradients[weight]
        return super().gradient(weight)

    def kronecker_factors(self, weight: str, approx: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factors is not None and self.approx == approx:
            return self.factors[weight]
        return super().kronecker_factors(weight, approx)

    def jvp(self, *directions: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        whole = all(w in d for d in directions for w in self.layers)
        out = self.jvps(*directions) if whole and self.jvps is not None else None
        return super().jvp(*directions) if out is None else out  # None: computed eagerly


class StaleColumns(KFACError):
    """A compiled evaluation's constant columns no longer hold (the caller goes eager)."""


def _why(e: Exception) -> str:
    """``Type: first line`` of an exception, for a warning."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _blank(c):
    """``c``'s structure without its (fake) tensors."""
    return c.replace(iter([None] * len(c.tensors())))


def _same(want: list, got: list, dtype: torch.dtype) -> None:
    """Raise KFACError unless the replay's tensors equal the eager ones up to rounding."""
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        a = a.detach()
        scale = a.abs().max().item() if a.numel() else 0.0
        if a.shape != b.shape or (a - b).abs().max().item() > tol * max(scale, 1e-30):
            raise KFACError(f"the compiled replay differs from the eager evaluation (tensor {i})")
