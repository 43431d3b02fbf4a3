"""The CPU tanh pass: float32 ``tanh`` nodes compute ``-copysign(e / (e + 2), x)``,
``e = expm1(-2|x|)``, so that inductor's C++ code evaluates them in one fused loop;
their derivative stays ``1 - tanh^2`` of the output, as for ``torch.tanh``.

Why: torch's vectorised CPU ``tanh`` (Sleef, 1 ulp, also what inductor emits) is slow
on AVX2, many times a multiply of the same size, and a tanh-MLP's Laplacian spends
much of its time there. The identity ``tanh|x| = -expm1(-2|x|) / (expm1(-2|x|) + 2)``
costs one ``expm1`` and a division and keeps the relative accuracy near 0 that the
textbook ``2 / (1 + exp(-2x)) - 1`` (inductor's opt-in ``cpp.use_decompose_tanh``)
loses to cancellation (timings and errors: docs/benchmarks.md). float64 graphs and
other devices are left alone: there the exact ``tanh`` is either not the bottleneck
or must stay exact.

Applied by ``taylorc.compile(..., backend="taylorc")`` on the CPU, after cleanup; the
derivative coefficients of a Taylor step are polynomials in the value ``tanh(x)``
(``1 - t*t``, ...), so one rewritten node per layer speeds up the whole step.
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ir
from . import PassContext

aten = torch.ops.aten


def tanh_by_expm1(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` as ``-copysign(e / (e + 2), x)`` with ``e = expm1(-2|x|)``.

    Args:
        x: any floating tensor.

    Returns:
        a tensor of x's shape and dtype; exact at 0, ±inf and NaN (NaN stays NaN).
    """
    e = torch.expm1(x.abs() * -2.0)
    return torch.copysign(-(e / (e + 2.0)), x)


class _Tanh(torch.autograd.Function):
    """Forward by :func:`tanh_by_expm1`, backward ``g * (1 - y*y)`` from the saved output,
    as torch's ``tanh`` does (differentiable again, since ``y`` keeps this node)."""

    @staticmethod
    def forward(x):
        return tanh_by_expm1(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def tanh_expm1(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` by :func:`tanh_by_expm1` with torch's ``tanh`` derivative; the node
    target :func:`rewrite_tanh` inserts. Shapes and dtype as ``torch.tanh``."""
    return _Tanh.apply(x)


def rewrite_tanh(gm: torch.fx.GraphModule) -> int:
    """Replace every float32 ``aten.tanh`` node of ``gm`` by a call of :func:`tanh_expm1`.

    Args:
        gm: an ATen graph whose nodes carry ``meta["val"]`` (nodes without it are left
            alone: their dtype is unknown).

    Returns:
        the number of ``tanh`` nodes replaced (the graph is recompiled when > 0).
    """
    count = 0
    for node in list(gm.graph.nodes):
        val = node.meta.get("val")
        if node.target is not aten.tanh.default or getattr(val, "dtype", None) != torch.float32:
            continue
        with gm.graph.inserting_before(node):
            out = gm.graph.call_function(tanh_expm1, node.args)
        out.meta.update(node.meta)
        ir.replace(gm, node, out)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


class CPUTanhPass:
    """Rewrite float32 ``tanh`` on the CPU (see the module docstring); a no-op elsewhere.

    Attributes:
        rewritten: after a run, how many ``tanh`` nodes were replaced.
    """

    name = "cpu_tanh"
    requires = ("clean",)
    forbids = ()
    ensures = ("cpu_tanh",)

    def __init__(self):
        self.rewritten = 0

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        on_cpu = torch.device(ctx.device).type == "cpu"
        self.rewritten = rewrite_tanh(gm) if on_cpu and ctx.dtype == torch.float32 else 0
        return gm
