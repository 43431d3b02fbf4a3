"""Capture: trace a model to a functional graph of core ATen ops.

The model's parameters and buffers become named placeholders (``p_<name>``,
``b_<name>``) followed by the coordinates ``x``; the compiled operator feeds
the live tensors at every call, so optimiser steps are seen without
recompiling and gradients flow back to the model. Tracing uses ``make_fx``
with PyTorch's core-ATen decompositions on fake tensors (no real compute).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch._decomp import core_aten_decompositions
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from . import ir
from .errors import InputMutationError, TraceError, UnsupportedOperatorError, user_source_line
from .ir import facts as ops  # noqa: F401 - ops defines taylorc::stop_gradient
from .ir.coupling import check_batch_independence

_DATA_DEPENDENT = (
    "data-dependent",
    "data dependent",
    "DataDependent",
    "GuardOnDataDependent",
    "item()",
    "Could not guard",
    "dynamic shape",
    "aten._local_scalar_dense",
)


@dataclass
class Captured:
    """A captured model.

    Attributes:
        gm: the functional ATen graph; placeholders are parameters, buffers, then
            the call's arguments (``x`` for the coordinates, ``arg<i>`` for others).
        param_names: qualified names of the parameters, in placeholder order.
        buffer_names: qualified names of the buffers, in placeholder order.
        coord: the placeholder name of the coordinates (``"x"``).
    """

    gm: torch.fx.GraphModule
    param_names: list[str]
    buffer_names: list[str]
    coord: str = "x"

    def inputs(self, model, *args: torch.Tensor) -> list[torch.Tensor]:
        """The live tensors to feed the graph: parameters, buffers, then the call's arguments."""
        if not isinstance(model, torch.nn.Module):
            return list(args)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        return (
            [params[n] for n in self.param_names]
            + [buffers[n] for n in self.buffer_names]
            + list(args)
        )


def _is_mutating(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _mutated_inputs(gm: torch.fx.GraphModule) -> dict:
    """Mutating node -> the placeholder it writes into (through views), by the alias
    classes of :func:`taylorc.ir.aliases`; a node writing no placeholder is absent."""
    klass, writes = ir.aliases(gm.graph)
    inputs = {klass[n]: n for n in gm.graph.nodes if n.op == "placeholder"}
    out = {}
    for node, arg in writes:
        if klass[arg] in inputs:
            out.setdefault(node, inputs[klass[arg]])
    return out


def _functional_variant(op):
    """``aten.foo.overload`` for an in-place ``aten.foo_.overload``, or None."""
    packet = getattr(op, "_overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return None
    functional = getattr(torch.ops.aten, name[:-1], None)
    return getattr(functional, op._overloadname, None) if functional is not None else None


def functionalize_leftovers(gm: torch.fx.GraphModule) -> None:
    """Rewrite in-place writes into intermediates that no view shares into functional ops.

    Decompositions run below functionalization, so one that writes in place (the core
    ATen decomposition of ``cosine_similarity`` calls ``clamp_min_`` on a fresh norm)
    leaves its write in the graph. Where the written tensor has no alias but the op's
    own result, ``y = foo_(t, ...)`` becomes ``y = foo(t, ...)`` and the later readers
    of ``t`` read ``y``: the same values, and a graph the rules can differentiate.
    """
    klass, writes = ir.aliases(gm.graph)
    members: dict = {}
    for n in gm.graph.nodes:
        members.setdefault(klass[n], set()).add(n)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node, arg in writes:
        functional = _functional_variant(node.target)
        if (
            functional is None
            or arg.op != "call_function"
            or members[klass[arg]] != {arg, node}
            or node.args[0] is not arg
            or not _same_dtypes(node)
        ):
            continue
        for user in list(arg.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(arg, node)
        node.target = functional
    gm.recompile()


def _same_dtypes(node: torch.fx.Node) -> bool:
    """Every tensor argument has the dtype of the in-place result: the functional op would
    promote where an in-place one keeps ``self``'s dtype."""
    dtype = getattr(node.meta.get("val"), "dtype", None)
    vals = [a.meta.get("val") for a in node.all_input_nodes]
    return dtype is not None and all(getattr(v, "dtype", dtype) == dtype for v in vals)


def refuse_mutations(gm: torch.fx.GraphModule, coord: str = "x") -> None:
    """Raise for every side-effecting node left in a functionalized capture.

    After functionalization the only mutations left write the graph's inputs (the
    model's parameters or buffers, or its arguments): per-point derivatives of a
    model that changes its own inputs while it runs are not defined by one graph,
    and ignoring the write would give silently wrong derivatives.

    Raises:
        BatchCouplingError: the mutation comes with a coupling of the batch rows (batch
            norm in training mode).
        InputMutationError: naming the op, the mutated input and the user's source line.
    """
    mutating = [n for n in gm.graph.nodes if _is_mutating(n)]
    if mutating:
        # batch norm in training mode updates its running statistics: the coupling of the
        # batch rows is the cause to report
        check_batch_independence(gm, coord)
    targets = _mutated_inputs(gm)
    for node in mutating:
        target = targets.get(node)
        what = (
            f"the model's {'parameter' if target.name.startswith('p_') else 'buffer'} "
            f"{target.meta.get('taylorc_input')!r}"
            if target is not None and target.meta.get("taylorc_input")
            else f"the input '{target.name}'"
            if target is not None
            else f"the intermediate '{node.args[0].name}', which a view shares"
            if isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "call_function"
            else "a tensor outside the graph"
        )
        # the copy_ itself comes from functionalization; the value written carries the user's line
        source = next((a for a in node.args[1:] if isinstance(a, torch.fx.Node)), node)
        where = user_source_line(source) or user_source_line(node)
        raise InputMutationError(
            f"the model writes into {what} in place ({node.target}, graph node '{node.name}')"
            + (f", from your code at\n  {where}" if where else "")
            + "\nA differential operator needs a model that leaves its inputs, parameters and "
            "buffers unchanged: write into a new tensor (y = x.clone(); y[...] = ...) or update "
            "state outside the model (batch norm: call model.eval())."
        )


@dataclass(frozen=True)
class OutputStructure:
    """A model that returns a tuple or list of tensors ``(B, *out_i)``.

    Every method works on the outputs flattened per point and concatenated
    (:func:`flatten_outputs`, one propagation for all); the operator's results are
    split back into the model's structure by :meth:`unflatten`.

    Attributes:
        container: ``tuple`` or ``list``.
        shapes: the per-point shape ``out_i`` of each output.
    """

    container: type
    shapes: tuple[tuple[int, ...], ...]

    def unflatten(self, t: torch.Tensor):
        """``(B, N, *rest)`` (``N = sum prod(out_i)``) -> the container of ``(B, *out_i, *rest)``."""
        sizes = [math.prod(s) for s in self.shapes]
        parts = torch.split(t, sizes, dim=1)
        lead, rest = t.shape[:1], t.shape[2:]
        return self.container(
            p.reshape(*lead, *s, *rest) for p, s in zip(parts, self.shapes, strict=True)
        )


def _is_structure(out) -> bool:
    return (
        isinstance(out, (tuple, list))
        and len(out) > 1
        and all(isinstance(o, torch.Tensor) for o in out)
    )


def flatten_outputs(out):
    """A tuple or list of ``(B, *out_i)`` tensors as one ``(B, N)`` tensor; others unchanged."""
    if not _is_structure(out):
        return out
    return torch.cat([o.reshape(o.shape[0], -1) for o in out], 1)


def flattened(fn: Callable) -> Callable:
    """``fn`` with its outputs passed through :func:`flatten_outputs`."""
    return lambda *a: flatten_outputs(fn(*a))


def output_structure(model: Callable, args: tuple) -> OutputStructure | None:
    """The structure of ``model(*args)`` when it returns several tensors, else None.

    Evaluated on fake tensors (no compute, no write into the model's buffers).
    A model that fake tensors cannot run is taken to return one tensor; capture
    then reports what fails.
    """
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            out = model(*(mode.from_tensor(a) for a in args))
    except Exception:  # noqa: BLE001 - capture names the failure with its diagnosis
        return None
    if not _is_structure(out):
        return None
    return OutputStructure(type(out), tuple(tuple(o.shape[1:]) for o in out))


class _StopGradients(torch.overrides.TorchFunctionMode):
    """Records every stop of the gradient as :func:`taylorc.ir.facts.stop_gradient` while a
    model is traced: ``detach()``, ``.data`` and the results of ops run under
    ``torch.no_grad()``; refuses ``detach_()``.

    Functionalization turns ``detach`` into ``aten.alias``, a view that carries
    derivatives, and the trace does not record grad mode: the Taylor graph would
    differentiate through what the model keeps constant.
    """

    _DETACH = {torch.Tensor.detach, torch.detach, torch.Tensor.data.__get__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._DETACH:
            return torch.ops.taylorc.stop_gradient(args[0])
        if func is torch.Tensor.detach_:
            raise UnsupportedOperatorError(
                "the model calls detach_() (in place): taylorc cannot stop the gradient of a "
                "tensor other ops already hold; write y = y.detach() instead"
            )
        out = func(*args, **(kwargs or {}))
        if (
            not torch.is_grad_enabled()
            and isinstance(out, torch.Tensor)
            and ir.carries_derivatives(out)
        ):
            return torch.ops.taylorc.stop_gradient(out)  # computed under torch.no_grad()
        return out


def decomposed_by_capture(op) -> bool:
    """Whether :func:`capture` never shows the ATen overload ``op``: core-ATen
    decompositions or a CompositeImplicitAutograd kernel rewrite it first.

    Args:
        op: a ``torch._ops.OpOverload`` (anything else: False).
    """
    if not isinstance(op, torch._ops.OpOverload):
        return False
    if op in core_aten_decompositions():
        return True
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")


def capture(
    model: torch.nn.Module | Callable,
    x: torch.Tensor,
    args: tuple[torch.Tensor, ...] | None = None,
    wrt: int = 0,
) -> Captured:
    """Trace ``model`` on an input like ``x`` to a core-ATen fx graph.

    Args:
        model: an ``nn.Module`` or a function mapping ``(B, *in)`` to ``(B, *out)``.
            Tensors a plain function closes over are baked in as constants.
        x: example coordinates ``(B, *in)``, floating point; only shape, dtype
            and device are used.
        args: all positional arguments of a model that takes more than the
            coordinates (a DeepONet's ``(branch_input, trunk_input)``); ``args[wrt]``
            is ``x``. The others become placeholders ``arg<i>`` that carry no jet.
        wrt: index of the coordinates in ``args``.

    Returns:
        :class:`Captured`, with ``meta["val"]`` (fake tensors) and recorded
        stack traces on every node.

    Raises:
        TraceError: data-dependent control flow or other untraceable code.
    """
    module = isinstance(model, torch.nn.Module)
    params = dict(model.named_parameters()) if module else {}
    buffers = dict(model.named_buffers()) if module else {}
    pnames, bnames = list(params), list(buffers)
    call_args = list(args) if args is not None else [x]
    example = list(params.values()) + list(buffers.values()) + call_args
    gm = _trace(_functional(model, pnames, bnames), example)
    _name_placeholders(gm, pnames, bnames, len(call_args), wrt)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain positional signature
    functionalize_leftovers(gm)
    refuse_mutations(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return Captured(gm, pnames, bnames, "x")


def _functional(model, pnames: list[str], bnames: list[str]) -> Callable:
    """``fn(*parameters, *buffers, *args)``: the model called on the given state, its
    outputs flattened (:func:`flatten_outputs`)."""
    n_state = len(pnames) + len(bnames)

    def fn(*inputs):
        p = dict(zip(pnames, inputs[: len(pnames)]))
        b = dict(zip(bnames, inputs[len(pnames) : n_state]))
        # grad mode on while tracing (the caller's no_grad must not make every op a
        # constant); the model's own no_grad regions are stops (_StopGradients)
        with torch.enable_grad(), _StopGradients():
            if isinstance(model, torch.nn.Module):
                out = torch.func.functional_call(model, {**p, **b}, tuple(inputs[n_state:]))
            else:
                out = model(*inputs[n_state:])
        return flatten_outputs(out)

    return fn


def _trace(fn: Callable, example: list) -> torch.fx.GraphModule:
    """``make_fx`` of the functionalized ``fn`` with core-ATen decompositions on fake
    tensors, stack traces recorded; a failure re-raised with its diagnosis."""
    try:
        # functionalization turns in-place ops and writes into views into functional ops
        # (slice_scatter, index_put, ...) that the rules see; mutations of the graph's inputs
        # survive only as trailing copy_ nodes, refused by refuse_mutations
        return make_fx(
            torch.func.functionalize(fn, remove="mutations"),
            decomposition_table=core_aten_decompositions(),
            tracing_mode="fake",
            record_stack_traces=True,
            _allow_non_fake_inputs=True,
        )(*example)
    except Exception as e:  # noqa: BLE001 - re-raised with a diagnosis
        why = _trace_failure(e)
        if why is None:
            raise
        raise why from e


def _trace_failure(e: Exception) -> Exception | None:
    """The error to report for a failed trace (None: the original error is the report)."""
    msg = str(e)
    if any(s in msg or s in type(e).__name__ for s in _DATA_DEPENDENT):
        return TraceError(
            "taylorc could not trace the model: it branches on or reads the value of a tensor "
            f"({type(e).__name__}: {msg.splitlines()[0] if msg else ''}). Remove data-dependent Python "
            "control flow and .item()/.tolist() calls on inputs (use torch.where), or compute that "
            "part outside the model."
        )
    if "leaf Variable that requires grad is being used in an in-place operation" in msg:
        return InputMutationError(
            "the model writes into one of its parameters in place while it runs "
            f"({msg.splitlines()[0]}). A differential operator needs a model that leaves its "
            "parameters unchanged: update them outside the model (an optimiser step)."
        )
    return None


def _name_placeholders(gm, pnames: list[str], bnames: list[str], n_args: int, wrt: int) -> None:
    """``p_<param>``, ``b_<buffer>``, then ``x`` for the coordinates and ``arg<i>`` for the
    call's other arguments; ``meta["taylorc_input"]`` holds the qualified names."""
    arg_names = ["x" if i == wrt else f"arg{i}" for i in range(n_args)]
    state = [f"p_{n}" for n in pnames] + [f"b_{n}" for n in bnames]
    names = [re.sub(r"\W", "_", n) for n in state] + arg_names
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, name, qual in zip(placeholders, names, pnames + bnames + [None] * n_args):
        node.name = node.target = name
        node.meta["taylorc_input"] = qual
