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

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.dialect.common.cse_pass import CSEPass

from .config import CONFIG

log = logging.getLogger(__name__)


def cleanup(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """CSE and DCE on any fx graph (impure and random ops are left alone by ``CSEPass``)."""
    out = CSEPass()(gm).graph_module
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


def lower_foreign(gm: torch.fx.GraphModule, example_inputs) -> torch.fx.GraphModule:
    """The ATen trace of ``gm`` with its Taylor steps lowered, or ``gm`` when none matched."""
    from .passes.lower import lower_structural

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
    from torch._inductor.compile_fx import compile_fx

    gm = cleanup(gm)
    tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
    if CONFIG.lower_everywhere or any(t.is_cuda for t in tensors):
        gm = lower_foreign(gm, example_inputs)
    return compile_fx(gm, example_inputs)


__all__ = ["taylorc_backend", "cleanup", "lower_foreign"]
