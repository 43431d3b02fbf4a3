"""The front door: :func:`compile` and :class:`CompiledOperator`."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable

import torch

from . import methods as _methods
from . import operators as _ops
from .capture import Captured, output_structure
from .debug import format_records, graph_stats
from .methods import AUTO_ZCS_MIN_FUNCTIONS, auto_method
from .methods.layer_graph import build_taylor_graph
from .runtime.backend import AutoGraph
from .runtime.cache import GraphCache
from .runtime.config import BUILD_COUNT, CONFIG
from .runtime.threads import for_call

METHODS = _methods.NAMES

BACKENDS = ("auto", "eager", "inductor", "taylorc")


class CompiledOperator(GraphCache, torch.nn.Module):
    """A linear differential operator of a model, compiled to a Taylor-mode graph.

    Call it on coordinates ``x`` of shape ``(B, D)`` (or ``(B, *in)``, D being
    ``prod(in)``), float32 or float64, on the model's device. It returns a
    tensor shaped like ``model(x)`` (the gradient appends a dimension D), or a
    dict of them when the operator was a dict -- all from ONE propagation.

    The user's model is a submodule: ``state_dict()``, ``.to()``, pickling and
    optimiser steps go through it, and the graph reads the live parameters at
    every call (gradients flow to them). One graph is built and cached per
    input shape, dtype and device.

    Methods (DESIGN.md): ``"collapsed"`` (Dangel et al. 2025: the top-order
    coefficient is propagated summed over directions), ``"taylor"`` (standard
    Taylor mode, summed at the output), ``"nested"`` (torch.func nested
    autograd, the reference).

    Raises (at call time):
        ValueError: input not of shape ``(B, *in)``, not floating point, on
            another device than the model, or of another per-sample shape than
            the first call.
        taylorc.errors.UnsupportedOperatorError: an op without a Taylor rule.
        taylorc.errors.TraceError: the model cannot be traced.
    """

    def __init__(
        self,
        model,
        operator,
        method: str = "collapsed",
        debug_dir=None,
        backend: str = "auto",
        coords=None,
        params: dict | None = None,
        wrt: int | str | None = None,
        samples: int | None = None,
        sigma=None,
        variance_reduction: bool = True,
        distribution: str = "rademacher",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.wrt = wrt
        self.backend = backend
        self.method_obj = _methods.from_name(
            method,
            samples=samples,
            sigma=sigma,
            variance_reduction=variance_reduction,
            distribution=distribution,
            generator=generator,
        )
        self.method = self.method_obj.name
        self.method_obj.check(self)
        self.config = dataclasses.replace(CONFIG)  # test and diagnostic switches, per operator
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a function, got {type(model).__name__}")
        self.model = model if isinstance(model, torch.nn.Module) else None
        self._fn = None if isinstance(model, torch.nn.Module) else model
        self.single = not isinstance(operator, dict)
        spec = {"out": operator} if self.single else operator
        if not spec:
            raise ValueError("operator dict is empty")
        self.coords = _ops.split_coords(coords)
        self.ops = {str(k): _ops.parse(v, self.coords, params) for k, v in spec.items()}
        if self.coords is None:  # a sympy spec names its coordinates: u(x, y)
            self.coords = next(
                (
                    op.default_coords
                    for op in self.ops.values()
                    if getattr(op, "default_coords", None)
                ),
                None,
            )
        self.debug_dir = debug_dir if debug_dir is not None else os.environ.get("TAYLORC_DEBUG_DIR")
        self._graphs: dict = {}
        self._refused: dict = {}  # per-sample keys whose graph was proved to depend on B
        self._in_shape: tuple[int, ...] | None = None
        self._last = None
        self._structure = None  # a tuple/list of outputs: capture.OutputStructure

    # test and diagnostic switches, on the operator's own copy of taylorc.runtime.config.CONFIG
    lower_everywhere = property(
        lambda self: self.config.lower_everywhere,
        lambda self, v: setattr(self.config, "lower_everywhere", v),
        doc="Lower to the fused ops on every device (``self.config``; tests).",
    )
    whole_mlp = property(
        lambda self: self.config.whole_mlp,
        lambda self, v: setattr(self.config, "whole_mlp", v),
        doc="Lower a matching MLP's Laplacian to one kernel (``self.config``).",
    )

    @property
    def fn(self) -> Callable:
        """The differentiated function: the model, or the function given to :func:`taylorc.compile`."""
        return self.model if self.model is not None else self._fn

    # -- validation ---------------------------------------------------------------

    def _check(self, x):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a tensor of coordinates (B, D), got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"expected a batch of coordinates of shape (B, D) (or (B, *in)), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"expected floating-point coordinates (float32 or float64), got dtype {x.dtype}"
            )
        params = self.model.parameters() if self.model is not None else []
        p = next(
            (q for q in params if q.is_floating_point()), None
        )  # complex spectral weights aside
        if p is not None and p.device != x.device:
            raise ValueError(
                f"expected coordinates on the model's device {p.device}, got {x.device}"
            )
        if p is not None and p.dtype != x.dtype:
            raise ValueError(f"expected coordinates of the model's dtype {p.dtype}, got {x.dtype}")
        if self._in_shape is not None and tuple(x.shape[1:]) != self._in_shape:
            raise ValueError(
                f"expected input shape (B, {', '.join(map(str, self._in_shape))}), got {tuple(x.shape)}"
            )

    def _expected_width(self):
        for m in self.model.modules() if self.model is not None else []:
            if hasattr(m, "in_features"):
                return m.in_features
        return None

    # -- compilation ----------------------------------------------------------------

    def wrt_index(self, args: tuple) -> int:
        """Position of the coordinates among the call's arguments.

        Raises:
            ValueError: several arguments and no ``wrt``; ``wrt`` naming no argument.
        """
        if self.wrt is None:
            if len(args) != 1:
                raise ValueError(
                    f"called with {len(args)} arguments: pass wrt= (index or name) to "
                    "taylorc.compile to say which one holds the coordinates"
                )
            return 0
        names = _argument_names(self.fn)
        if isinstance(self.wrt, str):
            if self.wrt not in names:
                raise ValueError(
                    f"wrt={self.wrt!r} names no argument of the model (its arguments: {names})"
                )
            i = names.index(self.wrt)
        else:
            i = self.wrt
        if not 0 <= i < len(args):
            raise ValueError(
                f"wrt={self.wrt!r} names no argument of this call ({len(args)} given"
                + (f"; the model's arguments: {names})" if names else ")")
            )
        return i

    def method_for(self, args: tuple, i: int) -> str:
        """The name of the method a call runs: ``method``, or for ``"auto"`` :func:`auto_method`'s."""
        return self.method_obj.resolve(self, args, i).name

    def taylor_graph(self, *args: torch.Tensor, perturbations: bool = True, taps=None):
        """The graph of this operator that keeps its linear layers' columns (what KFAC reads).

        The method's :class:`~taylorc.methods.taylor.LayerVariant` (no zero pruning, no
        fusing: each column's input and output is its own per-point node), built and cached
        like the operator's own graph: a :class:`taylorc.methods.layer_graph.TaylorGraph`
        (``.gm``, ``.layers``, ``.run(*args)``): with ``perturbations``, zero tensors added
        to the layers' outputs whose gradients are g; without, the output columns returned
        (one reverse pass reads g from them: ``layer_output_gradients``). ``taps=``: the
        old name of ``perturbations=`` (deprecated).

        Raises:
            ValueError: a method other than ``"collapsed"`` and ``"taylor"``; bad inputs.

        Method: Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature for
        Physics-Informed Neural Networks" (NeurIPS 2024), Sec. 3.
        """
        return build_taylor_graph(self, args, perturbations, taps)

    @property
    def plan(self) -> _ops.JetPlan | None:
        """The jet plan of the last compiled input shape (None before the first call)."""
        return self._last.plan if self._last is not None else None

    # -- calling ------------------------------------------------------------------

    def forward(self, *args: torch.Tensor):
        """Evaluate the operator(s) at the coordinates (``args[wrt]`` for models of several arguments)."""
        i = self.wrt_index(args)
        x = args[i]
        self._check(x)
        for j, a in enumerate(args):
            if j != i and not isinstance(a, torch.Tensor):
                raise ValueError(f"argument {j} must be a tensor, got {type(a).__name__}")
        if self._in_shape is None:
            self._structure = self._output_structure(args)
        with for_call(x, self.config.contention):  # fewer threads beside busy neighbours
            outs = self.method_obj.resolve(self, args, i).run(self, args, i)
        if self._in_shape is None:
            self._in_shape = tuple(x.shape[1:])
        if self._structure is not None:
            outs = [self._structure.unflatten(o) for o in outs]
        return outs[0] if self.single else dict(zip(self.ops, outs))

    def _output_structure(self, args):
        """The model's tuple/list output structure (None: one tensor).

        Raises:
            ValueError: several outputs from a model of several arguments.
        """
        structure = output_structure(self.fn, args)
        if structure is not None and len(args) > 1:
            raise ValueError(
                "a model of several arguments (wrt=) must return one tensor; it returned a "
                f"{structure.container.__name__} of {len(structure.shapes)}: stack them"
            )
        return structure

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """Wait for the background compiles that ``backend="auto"`` started.

        Benchmarks call it after the warm-up so that they time the compiled graphs, not
        the eager ones beside a compiling thread. A training loop never needs it.

        Args:
            timeout: seconds to wait per graph (None: until done).

        Returns:
            True when every started compile is done (compiled, or failed with its warning).
        """
        done = True
        for graph, _, _ in self._graphs.values():
            if isinstance(graph, AutoGraph) and graph._job is not None:
                graph.wait(timeout)
                done = done and not graph._job.is_alive()
        return done

    # -- inspection ---------------------------------------------------------------

    def explain(self) -> str:
        """Summary of the pipeline: operator, method, plan, and per pass time, nodes, FLOPs, memory."""
        head = f"taylorc.CompiledOperator(operator={self._op_text()}, method={self.method!r}, backend={self.backend!r})"
        if not self.method_obj.builds_graph:
            return head + "\n  nested autograd (torch.func): no graph passes"
        if self._last is None:
            return head + "\n  not compiled yet: call it on a batch of coordinates"
        records = self._last.records
        if records and "flops" not in records[-1] and self._last.final is not None:
            records[-1].update(graph_stats(self._last.final))  # the final graph, on demand
        return "\n".join(
            [head, self._last.plan.describe(), format_records(records), _first_call(self._last)]
        )

    def _op_text(self):
        if self.single:
            return repr(self.ops["out"])
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self.ops.items()) + "}"

    def extra_repr(self) -> str:
        return self.explain()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graphs"], state["_last"] = {}, None
        return state


def _first_call(ctx) -> str:
    """The batch line, the build's latency by stage and the compile's (explain())."""
    lat = ctx.latency
    stages = [k for k in ("capture", "passes", "batch check") if k in lat]
    parts = " + ".join(f"{k} {lat[k] * 1e3:.0f} ms" for k in stages)
    lines = [f"batch: {ctx.batch}", f"build: {sum(lat[k] for k in stages) * 1e3:.0f} ms = {parts}"]
    if ctx.inference is not None:
        lines.append(
            f"calls without autograd: the CPU whole-MLP kernel ({len(ctx.inference.weights)} "
            f"layers, {ctx.inference.activation}; taylorc/kernels/mlp_laplacian_cpu.c)"
        )
    if "compile" in lat:
        at, ready = lat.get("compile call", 1), lat.get("compile ready call")
        where = f"; in the background, serving from call {ready}" if ready not in (None, at) else ""
        lines.append(
            f"compile: {lat['compile'] * 1e3:.0f} ms at call {at} (Dynamo, inductor, one "
            f"evaluation{where})"
        )
    return "\n".join(lines)


def _argument_names(fn) -> list[str]:
    """Names of the positional arguments of a model's ``forward`` (or a function)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def compile(model: torch.nn.Module | Callable, operator="laplacian", **options) -> CompiledOperator:
    """Compile a linear differential operator of ``model``.

    Args:
        model: ``nn.Module`` (parameters stay live) or function mapping
            coordinates ``(B, D)`` / ``(B, *in)`` to ``(B, *out)``. Output row b
            must depend on input row b only.
        operator: ``"laplacian"`` (sum of d^2/dx_i^2), ``"biharmonic"`` (exact,
            K = 4), ``"u"`` (the value), ``"gradient"`` (``(B, *out, D)``),
            ``"heat"``, ``"wave"``, ``"helmholtz"``, an expression in the
            field's notation (``"u_t - 0.01*u_xx + 2*u_xy"`` with ``coords``),
            a sympy expression, a :class:`taylorc.operators.Operator`, or a
            dict of these (one propagation for all; the call returns a dict).
        **options: the keywords of :class:`CompiledOperator`, below.

    Keyword Args:
        method: ``"collapsed"`` (default), ``"taylor"``, ``"nested"`` (torch.func;
            a loop over the functions for models of several arguments), ``"zcs"``
            (zero coordinate shift, reverse mode; needs ``wrt``) or ``"auto"``
            (ZCS or collapsed Taylor by :func:`auto_method`; needs ``wrt``),
            ``"stochastic"`` (randomized collapsed Taylor: unbiased Laplacian or
            biharmonic from ``samples`` random directions; Shi et al. 2024) or
            ``"stein"`` (Gaussian-smoothed model, derivatives of order <= 2 by
            Stein's identity, no back-propagation; He et al. 2023).
        debug_dir: write every pass's graph, node table, picture and a summary
            here (default: the ``TAYLORC_DEBUG_DIR`` environment variable).
        backend: ``"auto"`` (default: op by op for ``config.auto_compile_after`` calls,
            then compiled as ``"taylorc"`` with a dynamic batch dim; the CPU allocator
            tuned once, :func:`taylorc.runtime.cpu.auto_tune`), ``"eager"``, ``"inductor"``
            (``torch.compile`` at the first call) or ``"taylorc"`` (inductor after the
            CPU ``tanh`` rewrite; fused kernels on CUDA); per operator in ``op.config``.
        coords: names of the input columns, ``"x y t"`` or a list; needed by
            expressions such as ``"u_t - 0.01*u_xx"`` (see docs/operators.md).
        params: names usable in expression coefficients, e.g. ``{"nu": 0.01}``.
        wrt: for a model of several arguments (a DeepONet ``model(branch_input,
            trunk_input) -> (M, N)``), the index or name of the ``(N, D)``
            coordinates; the call is then ``op(*args)`` and returns ``(M, N)`` terms.
        samples: S, for ``method="stochastic"`` (random directions) and
            ``method="stein"`` (Gaussian samples per point).
        sigma: Stein smoothing width: a number, one per coordinate, or a dict by
            coordinate name (e.g. a separate width for t).
        variance_reduction: Stein with antithetic pairs and the control variate g(x).
        distribution: stochastic directions, ``"rademacher"``, ``"normal"`` or
            ``"coordinate"`` (see :mod:`taylorc.operators.stochastic`).
        generator: the ``torch.Generator`` the random methods draw from at every
            call (default: torch's global generator, seeded by ``torch.manual_seed``).

    Returns:
        a :class:`CompiledOperator`; the graph is built at the first call.

    Raises:
        ValueError: unknown method, backend or operator name; ``wrt`` missing for
            ``"zcs"``/``"auto"`` or naming no argument (at call time); an
            expression naming an unknown coordinate, nonlinear in u, or of
            order above 6 (the message names the term).
        TypeError: model not callable, operator of an unknown type.

    Method: Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode AD" (NeurIPS 2025).
    """
    return CompiledOperator(model, operator, **options)


__all__ = [
    "AUTO_ZCS_MIN_FUNCTIONS",
    "BUILD_COUNT",
    "CompiledOperator",
    "Captured",
    "auto_method",
    "compile",
]
