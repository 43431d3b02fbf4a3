"""Shapes on every node: ``meta["val"]`` (fake tensors) by fake-tensor propagation."""

from __future__ import annotations

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp


def annotate_shapes(gm: torch.fx.GraphModule) -> None:
    """Set ``meta["val"]`` (fake tensors) on every node by fake-tensor propagation."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    inputs = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta["val"]
            with mode:
                inputs.append(
                    torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
                )
    FakeTensorProp(gm, mode).propagate(*inputs)


def ensure_shapes(gm: torch.fx.GraphModule) -> None:
    """Annotate ``meta["val"]`` where a node lacks it (a pass's new nodes); never raises."""
    if any("val" not in n.meta for n in gm.graph.nodes if n.op != "output"):
        try:
            annotate_shapes(gm)
        except Exception:  # noqa: BLE001 - shapes are an aid; a graph that fake mode cannot run still runs
            pass
