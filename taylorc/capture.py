"""Capture: trace a model to a functional graph of core ATen ops.

The model's parameters and buffers become named placeholders (``p_<name>``,
``b_<name>``) followed by the coordinates ``x``; the compiled operator feeds
the live tensors at every call, so optimiser steps are seen without
recompiling and gradients flow back to the model. Tracing uses ``make_fx``
with PyTorch's core-ATen decompositions on fake tensors (no real compute).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from .errors import TraceError

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


def _sanitize(name: str) -> str:
    return re.sub(r"\W", "_", name)


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
    if isinstance(model, torch.nn.Module):
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
    else:
        params, buffers = {}, {}
    pnames, bnames = list(params), list(buffers)
    call_args = list(args) if args is not None else [x]
    n_state = len(pnames) + len(bnames)

    def fn(*inputs):
        p = dict(zip(pnames, inputs[: len(pnames)]))
        b = dict(zip(bnames, inputs[len(pnames) : n_state]))
        if isinstance(model, torch.nn.Module):
            return torch.func.functional_call(model, {**p, **b}, tuple(inputs[n_state:]))
        return model(*inputs[n_state:])

    example = list(params.values()) + list(buffers.values()) + call_args
    try:
        gm = make_fx(
            fn,
            decomposition_table=core_aten_decompositions(),
            tracing_mode="fake",
            record_stack_traces=True,
            _allow_non_fake_inputs=True,
        )(*example)
    except Exception as e:  # noqa: BLE001 - re-raised with a diagnosis
        msg = str(e)
        if any(s in msg or s in type(e).__name__ for s in _DATA_DEPENDENT):
            raise TraceError(
                "taylorc could not trace the model: it branches on or reads the value of a tensor "
                f"({type(e).__name__}: {msg.splitlines()[0] if msg else ''}). Remove data-dependent Python "
                "control flow and .item()/.tolist() calls on inputs (use torch.where), or compute that "
                "part outside the model."
            ) from e
        raise
    arg_names = ["x" if i == wrt else f"arg{i}" for i in range(len(call_args))]
    names = (
        [f"p_{_sanitize(n)}" for n in pnames] + [f"b_{_sanitize(n)}" for n in bnames] + arg_names
    )
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, name, qual in zip(placeholders, names, pnames + bnames + [None] * len(call_args)):
        node.name = node.target = name
        node.meta["taylorc_input"] = qual
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain positional signature
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return Captured(gm, pnames, bnames, "x")
