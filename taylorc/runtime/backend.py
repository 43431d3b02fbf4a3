"""``torch.compile(fn, backend="taylorc")``: taylorc's cleanup and lowering, then inductor.

Registered by name through the ``torch_dynamo_backends`` entry point (see
pyproject.toml), so it works right after ``pip install`` without importing taylorc.
Dynamo hands over a graph of torch-level ops; the backend removes common
subexpressions and dead code (torch.fx's ``CSEPass``); on CUDA it traces the
graph to ATen (``make_fx``) and lowers the Taylor steps it recognises
structurally (:func:`taylorc.passes.lower.lower_structural`) to the fused kernels;
then it compiles the result with inductor (``torch._inductor.compile_fx``).
Guards and graph breaks are Dynamo's, exactly as with ``backend="inductor"``.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.dialect.common.cse_pass import CSEPass

from ..passes.cpu_linear import rewrite_linear
from ..passes.cpu_tanh import rewrite_tanh
from ..passes.lower import lower_structural
from .config import CONFIG

log = logging.getLogger(__name__)

# Tracing (make_fx, Dynamo, AOTAutograd) patches torch.nn.Module.__call__ and __getattr__
# process-wide while it runs: a trace on the main thread and the background compile of
# AutoGraph must not interleave, or one restores the other's patch for good. Every trace
# taylorc starts holds this lock (graphs' builds, the background compile, optim's traces).
TRACING = threading.RLock()


def cleanup(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """CSE and DCE on any fx graph (impure and random ops are left alone by ``CSEPass``)."""
    out = CSEPass()(gm).graph_module
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


def lower_foreign(gm: torch.fx.GraphModule, example_inputs) -> torch.fx.GraphModule:
    """The ATen trace of ``gm`` with its Taylor steps lowered, or ``gm`` when none matched."""
    aten_gm = make_fx(gm, tracing_mode="fake")(*example_inputs)
    n = lower_structural(aten_gm)
    log.info("taylorc backend: %d Taylor step(s) lowered structurally", n)
    return aten_gm if n else gm


def taylorc_backend(gm: torch.fx.GraphModule, example_inputs):
    """The Dynamo backend: cleanup, structural lowering on CUDA, then inductor.

    Args:
        gm: Dynamo's graph; example_inputs: its example tensors.

    Returns:
        the compiled callable from inductor.
    """
    # imported here: torch._inductor is heavy to import, and only this backend's calls
    # need it (not `import taylorc`)
    from torch._inductor.compile_fx import compile_fx

    gm = cleanup(gm)
    tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
    if CONFIG.lower_everywhere or any(t.is_cuda for t in tensors):
        gm = lower_foreign(gm, example_inputs)
    return compile_fx(gm, example_inputs)


class CompiledGraph:
    """A taylorc graph under ``torch.compile`` (inductor), its first call timed.

    Args:
        gm: the graph; ``dynamic``: the position of the input whose dim 0 (the batch)
            is dynamic (None: every shape static, one compile per shape); ``latency``: a
            dict that receives ``"compile"``, the seconds of the first call (Dynamo,
            inductor, and one evaluation).

    The batch dim is marked *unbacked* (``torch._dynamo.decorators.mark_unbacked``): a
    plain dynamic dim gets guards from inductor's size heuristics (a small first batch
    compiles for ``2 <= B <= 24`` only, and the next batch recompiles); an unbacked one
    gets none, so one compile serves every B. Should a graph need a guard on B, the
    compile fails and is redone with ``maybe_mark_dynamic`` (then inductor may recompile
    across its thresholds). The mark goes on an alias, never on the caller's tensor.
    Calls return what ``gm`` returns; attributes not found here are the graph's
    (``_orig_mod`` is the graph, as on ``torch.compile``'s own wrapper).
    """

    def __init__(self, gm: torch.fx.GraphModule, dynamic: int | None, latency: dict):
        self._orig_mod = gm
        self.dynamic, self.latency = dynamic, latency
        self.mark = None if dynamic is None else torch._dynamo.decorators.mark_unbacked
        self.compiled = self._compile()
        self._timed = False

    def _compile(self):
        # dynamic=None: only the marked dim is dynamic; dynamic=False: every shape static
        return torch.compile(
            self._orig_mod, backend="inductor", dynamic=False if self.dynamic is None else None
        )

    def _call(self, inputs):
        if self.mark is not None:
            inputs = list(inputs)
            x = inputs[self.dynamic] = inputs[self.dynamic].view(inputs[self.dynamic].shape)
            self.mark(x, 0)
        return self.compiled(*inputs)

    def __call__(self, *inputs):
        if self._timed:
            return self._call(inputs)
        t0 = time.perf_counter()
        try:
            out = self._call(inputs)
        except Exception as e:  # noqa: BLE001 - retried once, else re-raised
            if self.mark is not torch._dynamo.decorators.mark_unbacked or not _unbacked_failure(e):
                raise
            log.info("taylorc: the graph guards on the batch size; compiling with a dynamic dim")
            self.mark, self.compiled = torch._dynamo.maybe_mark_dynamic, self._compile()
            out = self._call(inputs)
        self.latency["compile"] = time.perf_counter() - t0
        self._timed = True
        return out

    def __getattr__(self, name):
        if name.startswith("__") or name == "_orig_mod":
            raise AttributeError(name)
        return getattr(self._orig_mod, name)


class AutoGraph:
    """``backend="auto"``: the graph runs eagerly, then compiled once it has been warmed up.

    The first ``config.auto_compile_after`` calls run ``gm`` op by op (the first call
    stays as fast as the eager backend's). At the next call the compile starts: the CPU's
    float32 ``tanh`` and wide layer products rewritten (:func:`taylorc.passes.cpu_tanh.rewrite_tanh`,
    :func:`taylorc.passes.cpu_linear.rewrite_linear`, as ``backend="taylorc"`` does) on a
    copy of the graph, compiled as a
    :class:`CompiledGraph` (batch dim dynamic when ``dynamic`` is given) and run once,
    forward and backward, on detached copies of that call's inputs. With
    ``config.background_compile`` (the default) this happens in a background thread while
    the eager graph keeps serving calls, so no call of a training loop waits for
    inductor; the compiled graph serves the first call after it is ready (so which call
    switches depends on wall time: compiled and eager results differ by rounding, and a
    seeded run is bitwise reproducible only with ``background_compile=False``). Both grad
    modes are compiled. A process that ends while the compile runs waits for it at exit.
    Otherwise the call that starts the compile waits for it. No compile starts from a
    call under ``torch.inference_mode``. A compile that fails is reported once
    with a warning and the graph stays eager. ``config.auto_compile_after = None`` never
    compiles; the value is read at every call until the compile starts. A call at another
    intra-op thread count than the compile's (the contention policy of
    :mod:`taylorc.runtime.threads` lowers it while other processes keep the cores busy)
    runs eagerly while a variant for that count compiles the same way (Dynamo guards on
    the count: the compiled graph would otherwise recompile inside the call).

    Args:
        gm: the graph; dynamic, latency: as for :class:`CompiledGraph`; config: the
            operator's :class:`taylorc.runtime.config.Config`; rewrite_tanh: whether the graph
            is a CPU float32 one (then ``tanh`` is rewritten before compiling).
    """

    def __init__(self, gm, dynamic: int | None, latency: dict, config, rewrite_tanh: bool):
        self._orig_mod = gm
        self.dynamic, self.latency, self.config = dynamic, latency, config
        self.rewrite_tanh, self.calls, self.compiled, self.failed = rewrite_tanh, 0, None, None
        self._job: threading.Thread | None = None
        self._result: dict = {}
        self.counts: set[int] = set()  # the thread counts the compiled graph has variants for
        self._variant: threading.Thread | None = None
        self.no_variant: set[int] = set()  # counts whose compile failed: eager there

    def __call__(self, *inputs):
        if self.compiled is not None:
            if torch.get_num_threads() in self.counts:
                return self.compiled(*inputs)
            return self._other_count(inputs)
        after = self.config.auto_compile_after
        self.calls += 1
        if self.failed is not None or (
            self._job is None
            and (after is None or self.calls <= after or torch.is_inference_mode_enabled())
        ):  # under inference_mode the twins would be inference tensors: start at a later call
            return self._orig_mod(*inputs)
        if self._job is None:
            self._start(inputs)
            if not self.config.background_compile:
                self.wait()
        elif self._job is not _INLINE and not self._job.is_alive():
            self.wait()
        if self.compiled is not None:
            return self.compiled(*inputs)
        return self._orig_mod(*inputs)

    def _start(self, inputs) -> None:
        self.latency["compile call"] = self.calls
        # copies (of the same type: Dynamo guards on it): the caller's optimiser may update
        # its tensors while the compile runs
        example = _twins(inputs)
        grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
        gm = _copy(self._orig_mod)  # rewritten and compiled while the eager graph runs on
        if not self.config.background_compile:  # on this thread (it may hold TRACING)
            self._job = _INLINE
            self._compile(gm, example, grad, threads)
            return
        # not a daemon: the interpreter waits for it at exit (a compile killed mid-way
        # aborts the process: "terminate called without an active exception")
        self._job = threading.Thread(
            target=self._compile, args=(gm, example, grad, threads), name="taylorc-compile"
        )
        self._job.start()

    def _compile(self, gm, example, grad: bool, threads: int) -> None:
        # the caller's thread-local settings: Dynamo guards on them (a recompile otherwise)
        torch.set_num_threads(threads)
        try:
            with TRACING:
                if self.rewrite_tanh:  # a CPU float32 graph
                    rewrite_tanh(gm)
                    rewrite_linear(gm)
                compiled = CompiledGraph(gm, self.dynamic, self.latency)
                _warm(compiled, example, grad)
            self.counts.add(threads)
            self._result["compiled"] = compiled
        except Exception as e:  # noqa: BLE001 - reported by wait(); the eager graph serves on
            self._result["error"] = e

    def _other_count(self, inputs):
        """A call at a thread count the compiled graph has no variant for (the contention
        policy lowered it, :mod:`taylorc.runtime.threads`): Dynamo guards on the count, so
        the compiled graph would recompile inside this call. It runs eagerly instead while
        the variant compiles (in the background, as the first compile)."""
        threads = torch.get_num_threads()
        if threads in self.no_variant:
            return self._orig_mod(*inputs)
        if self._variant is None or not self._variant.is_alive():
            example = _twins(inputs)
            args = (example, torch.is_grad_enabled(), threads)
            if not self.config.background_compile:
                self._add_count(*args)
                return self.compiled(*inputs)
            self._variant = threading.Thread(
                target=self._add_count, args=args, name="taylorc-compile-variant"
            )
            self._variant.start()
        return self._orig_mod(*inputs)

    def _add_count(self, example, grad: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        try:
            with TRACING:
                _warm(self.compiled, example, grad)
            self.counts.add(threads)
        except Exception as e:  # noqa: BLE001 - this count stays eager; the others compiled
            self.no_variant.add(threads)
            log.info("taylorc: compiling the %d-thread variant failed (%s)", threads, e)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a started compile (and a thread-count variant's) and install it; True
        when the compiled graph serves."""
        if self._variant is not None:
            self._variant.join(timeout)
        if self._job is not None and self._job is not _INLINE:
            self._job.join(timeout)
            if self._job.is_alive():
                return False
        if "compiled" in self._result and self.compiled is None:
            self.compiled = self._result.pop("compiled")
            self.latency["compile ready call"] = self.calls
        elif "error" in self._result:
            self.failed = e = self._result.pop("error")
            warnings.warn(
                f"taylorc backend='auto': compiling the graph failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); it keeps running eagerly. "
                "Pass backend='eager' to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return self.compiled is not None

    def __getattr__(self, name):
        if name.startswith("__") or name == "_orig_mod":
            raise AttributeError(name)
        return getattr(self._orig_mod, name)


class _Inline:
    """The job of a compile that ran on the calling thread (``background_compile=False``)."""

    @staticmethod
    def is_alive() -> bool:
        return False


_INLINE = _Inline()


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A GraphModule with its own copy of ``gm``'s graph (nodes keep their meta), sharing
    the buffers: a rewrite of the copy leaves ``gm`` as it is."""
    graph = torch.fx.Graph()
    graph._codegen = gm.graph._codegen
    env: dict = {}
    graph.output(graph.graph_copy(gm.graph, env))
    return torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__)


def _twins(inputs) -> list:
    """``inputs`` with every tensor replaced by :func:`_twin`."""
    return [_twin(t) if isinstance(t, torch.Tensor) else t for t in inputs]


def _twin(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` with its type and ``requires_grad``."""
    c = t.detach().clone()
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(c, requires_grad=t.requires_grad)
    return c.requires_grad_(t.requires_grad)


def _warm(compiled, example, grad: bool) -> None:
    """Run ``compiled`` in both grad modes (Dynamo guards on it: a training loop that also
    evaluates under no_grad would recompile on its thread), ``grad`` first, with a backward."""
    for mode in (grad, not grad):
        with torch.set_grad_enabled(mode):
            out = compiled(*example)
            if mode:
                _backward(out, example)


def _backward(out, example) -> None:
    """One backward through a compiled graph's outputs, so that its backward is compiled
    before a training loop needs it; a failure here leaves the forward compile in use."""
    outs = [o for o in _tensors(out) if o.requires_grad]
    leaves = [t for t in example if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outs or not leaves:
        return
    try:
        total = sum((o.real if o.is_complex() else o).sum() for o in outs)
        torch.autograd.grad(total, leaves, allow_unused=True)
    except Exception as e:  # noqa: BLE001 - the first real backward compiles it then
        log.info("taylorc: warming up the compiled backward failed (%s)", e)


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _unbacked_failure(e: Exception) -> bool:
    text = f"{type(e).__name__}: {e}"
    return any(
        s in text for s in ("DataDependent", "data-dependent", "unbacked", "Could not guard")
    )


__all__ = ["AutoGraph", "CompiledGraph", "taylorc_backend", "cleanup", "lower_foreign"]
