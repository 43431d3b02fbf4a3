"""The graph cache of :class:`~taylorc.api.CompiledOperator`: build, key, share, compile.

A graph is built per (method, per-sample input shape, dtype, device) and serves every
batch size ``B >= 2`` when :func:`taylorc.runtime.batch_size.generalize` proves it;
otherwise per full input shape. Graphs are shared by every compiled operator of the
same model and spec (a module-level ``WeakKeyDictionary``). Every method's graph goes
through here, the layer-keeping variant KFAC reads included
(:class:`~taylorc.methods.taylor.LayerVariant`).
"""

from __future__ import annotations

import math
import time
import weakref

import torch

from .. import methods as _methods
from ..capture import Captured, capture
from ..debug import Dumper
from ..passes import PassContext, PassManager
from .backend import TRACING, AutoGraph, CompiledGraph
from .batch_size import generalize
from .config import BUILD_COUNT
from .cpu import auto_tune

# Graphs built for a model, shared by every CompiledOperator of it (compiling the same model
# again reuses the work); weak keys: the cache dies with the model.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


class GraphCache:
    """Mixin of :class:`~taylorc.api.CompiledOperator`: the graphs and how they are built."""

    def graph_for(self, x: torch.Tensor, args: tuple | None = None, method=None):
        """The compiled graph for inputs like ``x``: ``(GraphModule, Captured, PassContext)``.

        Builds and caches it on first use (capture, then the passes of the method).
        ``args`` are all the call's arguments for models of several (``wrt``);
        ``method`` a name or :class:`~taylorc.methods.Method` (default: this operator's).

        One graph serves every batch size ``B >= 2`` of a per-sample shape, dtype and
        device when :func:`taylorc.runtime.batch_size.generalize` proves it (the graph is
        built a second time at ``B + 1`` and the two must differ only by multiples of
        B); otherwise (a method whose graph depends on B, such as Stein's replicated
        batch, B < 2, ``config.dynamic_batch = False``, or a failed proof) the graph is
        keyed on the full shape. ``ctx.batch`` says which, ``ctx.latency`` what the
        first call cost.
        """
        method = self._method(method)
        if not method.builds_graph:
            raise ValueError(
                f"method={method.name!r} builds no graph (it runs torch.func directly)"
            )
        args = args if args is not None else (x,)
        i = next(j for j, a in enumerate(args) if a is x)
        static = method.key() + (i,) + tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        shared = _SHARED.setdefault(self.fn, {}) if _weakrefable(self.fn) else {}
        prefix = self._shared_prefix()
        dynamic = self._dynamic_key(method, args, i, shared, prefix)
        for key in (dynamic, static):
            hit = None if key is None else self._graphs.get(key, shared.get(prefix + (key,)))
            if hit is not None:  # built by this operator, or another one of this model
                self._graphs[key], self._last = hit, hit[2]
                return hit
        BUILD_COUNT[0] += 1
        gm, cap, ctx = self._build_method(method, x, args, i)
        coord = len(cap.param_names) + len(cap.buffer_names) + i  # x among gm's inputs
        key = static
        if dynamic is not None:
            general, why = self._generalize(gm, method, x, args, i, coord, ctx)
            if general is not None:
                gm, key, ctx.built_batch = general, dynamic, x.shape[0]
            else:
                shared[prefix + ("refused", dynamic)] = self._refused[dynamic] = why
        else:
            ctx.batch = self._static_reason(method, x)
        dyn = coord if key is dynamic and self.config.dynamic_compile else None
        backend = self.backend if method.compiled_by_backend else "eager"
        if backend in ("inductor", "taylorc"):
            gm = CompiledGraph(gm, dyn, ctx.latency)
        elif backend == "auto" and method.compilable:
            cpu32 = x.device.type == "cpu" and x.dtype == torch.float32
            gm = AutoGraph(gm, dyn, ctx.latency, self.config, rewrite_tanh=cpu32)
        if self.backend == "auto" and x.device.type == "cpu" and self.config.tune_allocator:
            auto_tune()
        self._graphs[key] = shared[prefix + (key,)] = (gm, cap, ctx)
        self._last = ctx
        return self._graphs[key]

    def _shared_prefix(self) -> tuple:
        """What a graph shared between operators of one model must also agree on."""
        lowering = (self.config.lower_everywhere, self.config.whole_mlp)
        return (self._spec_key(), self.backend, self.debug_dir, lowering)

    def _dynamic_key(self, method, args: tuple, i: int, shared: dict, prefix: tuple):
        """The cache key of a graph for every batch size, or None where none may be built
        (``shared``, ``prefix``: the model's shared cache and this operator's prefix in it)."""
        x = args[i]
        if not (self.config.dynamic_batch and method.dynamic_batch and x.shape[0] >= 2):
            return None
        shapes = tuple(
            ((None,) + tuple(a.shape[1:]) if j == i else tuple(a.shape), a.dtype, a.device)
            for j, a in enumerate(args)
        )
        key = method.key() + (i,) + shapes
        refused = key in self._refused or prefix + ("refused", key) in shared
        return None if refused else key

    def _static_reason(self, method, x) -> str:
        why = (
            method.static_reason
            if not method.dynamic_batch
            else "B < 2 gets a graph of its own"
            if x.shape[0] < 2
            else "config.dynamic_batch is off"
            if not self.config.dynamic_batch
            else "an earlier build of this model found its graph depends on B"
        )
        return f"specialised to B={x.shape[0]}: {why}"

    def _build_method(self, method, x, args: tuple, i: int, dump: bool = True):
        plan = method.plan(self, math.prod(x.shape[1:]))
        example, args = method.example(x, args)
        pipeline = lambda cap, ctx: method.passes(self, cap, ctx, x)  # noqa: E731
        return self.build(x, example, args, i, plan, pipeline, dump=dump)

    def _generalize(self, gm, method, x, args, i, coord, ctx):
        """The graph for every batch size (see :meth:`graph_for`), or ``(None, reason)``."""
        t0 = time.perf_counter()
        B = x.shape[0]
        rows = torch.arange(B + 1, device=x.device) % B  # real rows: the probe may run them
        x1 = x.detach()[rows]
        args1 = tuple(x1 if j == i else a for j, a in enumerate(args))
        try:
            g1 = self._build_method(method, x1, args1, i, dump=False)[0]
        except Exception as e:  # noqa: BLE001 - e.g. a model that hard-codes B: keep B's graph
            g1, why = None, f"the model fails at B={B + 1} ({type(e).__name__}: {str(e)[:200]})"
        general, why = generalize(gm, g1, B, B + 1, coord) if g1 is not None else (None, why)
        ctx.latency["batch check"] = time.perf_counter() - t0
        ctx.batch = (
            f"dynamic: one graph for every B >= 2 (built at B={B}, the same but for multiples "
            f"of B at B={B + 1})"
            if general is not None
            else f"specialised to B={B}: {why}"
        )
        return general, why

    def _method(self, method) -> _methods.Method:
        if method is None:
            return self.method_obj
        if isinstance(method, _methods.Method):
            return method
        if method == self.method_obj.name:
            return self.method_obj
        return _methods.from_name(method)

    def build(self, x, example, args: tuple, i: int, plan, pipeline, dump: bool = True):
        """Capture the model on ``args`` (``example`` at position i) and run the passes
        ``pipeline(cap, ctx)`` returns; ``(GraphModule, Captured, PassContext)``, not cached.

        Shared by :meth:`graph_for` and the layer-keeping pipeline (:meth:`taylor_graph`).
        ``ctx.latency`` gets the seconds of ``"capture"`` and ``"passes"``; ``dump=False``
        writes no debug dump (the second build of :meth:`graph_for`'s batch check).
        """
        with TRACING:  # the passes trace too (composite rules, ZCS, Stein)
            t0 = time.perf_counter()
            cap = self._capture(x, example, args, i)
            t1 = time.perf_counter()
            ctx = PassContext(plan, cap.gm, cap.coord, x.dtype, x.device)
            ctx.probe_inputs = cap.inputs(self.model, *args)  # the exact batch-coupling probe
            ctx.batch = f"specialised to B={x.shape[0]}"
            dumper = Dumper(self.debug_dir) if self.debug_dir and dump else None
            gm = PassManager(pipeline(cap, ctx), dumper).run(cap.gm, ctx)
        ctx.latency = {"capture": t1 - t0, "passes": time.perf_counter() - t1}
        ctx.records[0]["seconds"] = t1 - t0  # the pass manager's "capture" stage
        return gm, cap, ctx

    def _capture(self, x, example, args, i) -> Captured:
        try:
            return capture(self.fn, example, args, i)
        except RuntimeError as e:
            w = self._expected_width()
            if w is not None and x.shape[-1] != w:
                raise ValueError(
                    f"expected input shape (B, {w}), got {tuple(x.shape)}: the model failed on it "
                    f"({type(e).__name__}: {str(e).splitlines()[0]})"
                ) from e
            raise

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


__all__ = ["GraphCache"]
