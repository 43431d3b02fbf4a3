"""``torch.compile(fn, backend="taylorc")``: taylorc's cleanup and lowering, then inductor.

Registered by name through the ``torch_dynamo_backends`` entry point (see
pyproject.toml), so it works right after ``pip install`` without importing taylorc.
Dynamo hands over a graph of torch-level ops; the backend removes common
subexpressions and dead code (torch.fx's ``CSEPass``), lowers what the lowering
pass recognises (graphs carrying taylorc's jet metadata, on CUDA), and compiles
the result with inductor (``torch._inductor.compile_fx``). Guards and graph
breaks are Dynamo's, exactly as with ``backend="inductor"``.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.passes.dialect.common.cse_pass import CSEPass


def cleanup(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """CSE and DCE on any fx graph (impure and random ops are left alone by ``CSEPass``)."""
    out = CSEPass()(gm).graph_module
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


def taylorc_backend(gm: torch.fx.GraphModule, example_inputs):
    """The Dynamo backend: cleanup, then inductor.

    Args:
        gm: Dynamo's graph; example_inputs: its example tensors.

    Returns:
        the compiled callable from inductor.
    """
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(cleanup(gm), example_inputs)


__all__ = ["taylorc_backend", "cleanup"]
