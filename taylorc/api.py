"""The front door: :func:`compile` and :class:`CompiledOperator`."""

from __future__ import annotations

import inspect
import math
import os
import weakref
from collections.abc import Callable

import torch

from . import operators as _ops
from .capture import Captured, capture
from .debug import Dumper, format_records
from .operators.stochastic import sample_directions, stochastic_plan
from .passes import PassContext, PassManager
from .passes.cleanup import CleanupPass
from .passes.collapse import CollapsePass
from .passes.cpu_tanh import CPUTanhPass
from .passes.lower import LowerPass
from .passes.mlp import MLPPass
from .passes.stein import SteinPass, sigma_vector, stein_order
from .passes.taylor import TaylorPass
from .passes.unstack import UnstackPass
from .passes.zcs import ZCSPass, shift_inputs
from .reference import func_loop, nested

METHODS = ("collapsed", "taylor", "nested", "zcs", "auto", "stochastic", "stein")

# Graphs built for a model, shared by every CompiledOperator of it (compiling the same model
# again reuses the work); weak keys: the cache dies with the model.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
BUILD_COUNT = [0]  # graphs built by the passes, for tests and diagnostics


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


BACKENDS = ("eager", "inductor", "taylorc")


class CompiledOperator(torch.nn.Module):
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
        backend: str = "eager",
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
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method in ("zcs", "auto") and wrt is None:
            raise ValueError(
                f"method={method!r} is for models of several arguments (a DeepONet's "
                "(branch_input, trunk_input)): name the coordinate argument with wrt= (index or name)"
            )
        self.wrt = wrt
        if method in ("stochastic", "stein") and (samples is None or samples < 1):
            raise ValueError(f"method={method!r} needs samples= (a positive number of samples)")
        if method == "stein" and sigma is None:
            raise ValueError(
                "method='stein' needs sigma= (the Gaussian smoothing width: a number, one per "
                "coordinate, or a dict by coordinate name)"
            )
        if method == "stochastic" and backend != "eager":
            raise ValueError(
                "method='stochastic' redraws its directions per call: use backend='eager'"
            )
        self.samples, self.sigma, self.variance_reduction = samples, sigma, variance_reduction
        self.distribution, self.generator = distribution, generator
        self.lower_everywhere = False  # tests: lower to the fused ops on the CPU too
        self.whole_mlp = True  # lower a matching MLP's Laplacian to one kernel (passes.mlp)
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
        self.method = method
        self.backend = backend
        self.debug_dir = debug_dir if debug_dir is not None else os.environ.get("TAYLORC_DEBUG_DIR")
        self._graphs: dict = {}
        self._orders: dict[int, int] = {}  # operator order per coordinate count (method="auto")
        self._in_shape: tuple[int, ...] | None = None
        self._last = None

    @property
    def fn(self) -> Callable:
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
        """The method a call runs: ``method``, or for ``"auto"`` the rule of :func:`auto_method`."""
        if self.method != "auto":
            return self.method
        M = max((a.shape[0] for j, a in enumerate(args) if j != i), default=1)
        D = args[i].shape[1]
        if D not in self._orders:  # planning work: once per width, not per call
            self._orders[D] = max(op.order(D, self.coords) for op in self.ops.values())
        return auto_method(self._orders[D], M, args[i].shape[0])

    def graph_for(self, x: torch.Tensor, args: tuple | None = None, method: str | None = None):
        """The compiled graph for inputs like ``x``: ``(GraphModule, Captured, PassContext)``.

        Builds and caches it on first use (capture, then the passes of the method).
        ``args`` are all the call's arguments for models of several (``wrt``).
        """
        method = method or self.method
        args = args if args is not None else (x,)
        i = next(j for j, a in enumerate(args) if a is x)
        key = (method, i) + tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        hit = self._graphs.get(key)
        if hit is not None:
            return hit
        shared = _SHARED.setdefault(self.fn, {}) if _weakrefable(self.fn) else {}
        random = (self.samples, self.distribution, repr(self.sigma), self.variance_reduction)
        lowering = (self.lower_everywhere, self.whole_mlp)
        shared_key = (self._spec_key(), self.backend, self.debug_dir, random, lowering, key)
        if shared_key in shared:  # another CompiledOperator of this model built it already
            self._graphs[key] = shared[shared_key]
            self._last = shared[shared_key][2]
            return self._graphs[key]
        BUILD_COUNT[0] += 1
        D = math.prod(x.shape[1:])
        example = x
        if method == "stochastic":
            if len(self.ops) != 1:
                raise ValueError("method='stochastic' takes one operator, not a dict")
            ((name, op),) = self.ops.items()
            plan = stochastic_plan(name, op, D, self.coords, self.samples, self.distribution)
        else:
            plan = _ops.build_plan(self.ops, D, self.coords)
        if method == "stein":
            stein_order(self.ops, D, self.coords)
            n_eval = 2 * self.samples + 1 if self.variance_reduction else self.samples
            example = x.new_zeros((n_eval * x.shape[0],) + tuple(x.shape[1:]))
            args = (example,)
        try:
            cap = capture(self.fn, example, args, i)
        except RuntimeError as e:
            w = self._expected_width()
            if w is not None and x.shape[-1] != w:
                raise ValueError(
                    f"expected input shape (B, {w}), got {tuple(x.shape)}: the model failed on it "
                    f"({type(e).__name__}: {str(e).splitlines()[0]})"
                ) from e
            raise
        ctx = PassContext(plan, cap.gm, cap.coord, x.dtype, x.device)
        if method == "zcs":
            passes = [ZCSPass(self.ops, self.coords)]
        elif method == "stein":
            sigma = sigma_vector(self.sigma, D, self.coords)
            passes = [
                SteinPass(
                    self.ops, self.coords, self.samples, sigma, self.variance_reduction, x.shape[0]
                )
            ]
        else:
            passes = [TaylorPass()]
        if method in ("collapsed", "stochastic"):
            passes.append(CollapsePass())
        lower = (self.backend == "taylorc" or self.lower_everywhere) and method in (
            "collapsed",
            "taylor",
        )
        if lower:
            passes.append(LowerPass(force=self.lower_everywhere))
        whole = MLPPass(force=self.lower_everywhere)
        if lower and self.whole_mlp and method == "collapsed" and whole.match(cap.gm, ctx):
            passes = [whole]  # one kernel for the whole network replaces the layered passes
        passes.append(CleanupPass())
        if method in ("collapsed", "taylor"):
            passes.append(UnstackPass())  # a no-op off the CPU and for many directions
        if self.backend == "taylorc":
            passes.append(CPUTanhPass())  # a no-op off the CPU and for float64
        dump = Dumper(self.debug_dir) if self.debug_dir else None
        gm = PassManager(passes, dump).run(cap.gm, ctx)
        if self.backend in ("inductor", "taylorc"):
            gm = torch.compile(gm, backend="inductor", dynamic=False)
        self._graphs[key] = shared[shared_key] = (gm, cap, ctx)
        self._last = ctx
        return self._graphs[key]

    def _spec_key(self):
        """A hashable description of the requested operators (callables by identity)."""

        def value_key(v):
            if callable(v) and not isinstance(v, type):
                return ("callable", id(v))
            return repr(v)

        ops = tuple(
            (name, type(op).__name__, tuple(sorted((k, value_key(v)) for k, v in vars(op).items())))
            for name, op in self.ops.items()
        )
        return ops, tuple(self.coords or ())

    def taylor_graph(self, *args: torch.Tensor):
        """The Taylor graph at inputs like ``args``, with its linear sites (for KFAC).

        Built by the sites pipeline (taylor, collapse, a cleanup that keeps every
        column per sample; no fusing), cached per input shape. Returns a
        :class:`taylorc.taylor_graph.TaylorGraph`: ``.gm``, ``.sites``, and
        ``.run(*args)`` with zero taps on the sites' outputs. Methods ``"collapsed"``
        and ``"taylor"`` only (ValueError otherwise). Sites: Dangel, Müller,
        Zeinhofer, "KFAC for PINNs" (NeurIPS 2024).
        """
        from .taylor_graph import build_taylor_graph

        return build_taylor_graph(self, args)

    @property
    def plan(self) -> _ops.JetPlan | None:
        """The jet plan of the last compiled input shape (None before the first call)."""
        return self._last.plan if self._last is not None else None

    # -- calling ------------------------------------------------------------------

    def forward(self, *args: torch.Tensor):
        """Evaluate the operator(s) at the coordinates (``args[wrt]`` for models of several arguments)."""
        from .taylor_graph import RECORDING

        recorder = RECORDING.get()
        if recorder is not None:  # inside taylorc.optim: the Taylor graph with taps on its sites
            return recorder.call(self, args)
        i = self.wrt_index(args)
        x = args[i]
        self._check(x)
        for j, a in enumerate(args):
            if j != i and not isinstance(a, torch.Tensor):
                raise ValueError(f"argument {j} must be a tensor, got {type(a).__name__}")
        method = self.method_for(args, i)
        if method == "nested":
            if self.coords is not None and len(self.coords) != math.prod(x.shape[1:]):
                _ops.build_plan(
                    {}, math.prod(x.shape[1:]), self.coords
                )  # raises the coords ValueError
            if len(args) > 1:
                out = func_loop(self.fn, self.ops, args, i, self.coords)
            else:
                out = nested(self.fn, self.ops, x, self.coords)
            outs = [out[n] for n in self.ops]
        else:
            gm, cap, ctx = self.graph_for(x, args, method)
            inputs = cap.inputs(self.model, *args)
            if method == "zcs":
                inputs += shift_inputs(x.shape[1], x.dtype, x.device)
            elif method == "stein":
                shape = (self.samples, x.shape[0], math.prod(x.shape[1:]))
                inputs.append(
                    torch.randn(shape, generator=self.generator, dtype=x.dtype, device=x.device)
                )
            elif method == "stochastic":
                # a new tensor, not an in-place write: earlier draws stay saved for backward
                gm.directions = sample_directions(ctx.plan, self.generator, x.dtype, x.device)
            outs = gm(*inputs)
        if self._in_shape is None:
            self._in_shape = tuple(x.shape[1:])
        return outs[0] if self.single else dict(zip(self.ops, outs))

    # -- inspection ---------------------------------------------------------------

    def explain(self) -> str:
        """Summary of the pipeline: operator, method, plan, and per pass time, nodes, FLOPs, memory."""
        head = f"taylorc.CompiledOperator(operator={self._op_text()}, method={self.method!r}, backend={self.backend!r})"
        if self.method == "nested":
            return head + "\n  nested autograd (torch.func): no graph passes"
        if self._last is None:
            return head + "\n  not compiled yet: call it on a batch of coordinates"
        return "\n".join([head, self._last.plan.describe(), format_records(self._last.records)])

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


def auto_method(order: int, M: int, N: int) -> str:
    """The method ``method="auto"`` runs for a model of M functions at N points.

    The forward (collapsed Taylor) route shares the trunk's jets among all M
    functions but contracts every propagated coefficient with the branch for
    all M x N pairs; ZCS contracts once per derivative level but nests one
    reverse pass per order. Measured on the CPU (``bench/zcs.py``, docs/zcs.md):
    forward wins at order 4 and for few functions, ZCS for many functions at
    order <= 2 (2.2x at M = 160, N = 1000). N does not change the winner there.

    Returns:
        ``"collapsed"`` or ``"zcs"``.
    """
    if order > 2 or M <= AUTO_ZCS_MIN_FUNCTIONS:
        return "collapsed"
    return "zcs"


AUTO_ZCS_MIN_FUNCTIONS = 100


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


def compile(
    model: torch.nn.Module | Callable,
    operator="laplacian",
    *,
    method: str = "collapsed",
    debug_dir: str | os.PathLike | None = None,
    backend: str = "eager",
    coords=None,
    params: dict | None = None,
    wrt: int | str | None = None,
    samples: int | None = None,
    sigma=None,
    variance_reduction: bool = True,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
) -> CompiledOperator:
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
        backend: ``"eager"`` (run the fx graph op by op), ``"inductor"``
            (``torch.compile`` the rewritten graph), or ``"taylorc"`` (the
            activation steps lowered to fused kernels on CUDA, the rest to inductor).
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

    Method: Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode
    Automatic Differentiation" (NeurIPS 2025).
    """
    return CompiledOperator(
        model,
        operator,
        method=method,
        debug_dir=debug_dir,
        backend=backend,
        coords=coords,
        params=params,
        wrt=wrt,
        samples=samples,
        sigma=sigma,
        variance_reduction=variance_reduction,
        distribution=distribution,
        generator=generator,
    )


__all__ = ["CompiledOperator", "compile", "Captured"]
