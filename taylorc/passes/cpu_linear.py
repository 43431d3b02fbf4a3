"""The CPU linear pass: float32 products with a transposed weight of at least
:data:`MIN_WIDTH` inputs and outputs, ``mm``/``matmul(X, permute(W, [1, 0]))`` and
``addmm(b, X, permute(W, [1, 0]))``, become ``taylorc::linear_onednn(X, W, b)``: oneDNN's
linear instead of MKL's GEMM.

Why (issue 33; docs/benchmarks.md, "oneDNN's linear"): on the 2-core EPYC, oneDNN's linear
(``torch.ops.mkldnn._linear_pointwise``, the op inductor's freezing path uses) runs the
collapsing paper's layer GEMMs (6400 x 768 -> 768 and the like) 1.1-1.2x faster than
``aten.mm`` (MKL), without prepacking the weight, so the parameters stay ordinary inputs of
every call; the paper config's collapsed Laplacian is GEMMs almost entirely. oneDNN's op has
no derivative in PyTorch; :func:`linear_onednn` is a ``torch.library`` op that gives it one
(``dx = g W``, ``dW = g^T x``, ``db = sum g``, plain torch ops), and inductor calls it as it
is. Narrower products are left to ``mm``: on the PINN config's 64-wide layers the rewritten
graph was slower (a Python call per product), and oneDNN's op traced into inductor instead
(an autograd function) was slower on every shape.

Applied where :mod:`taylorc.passes.cpu_tanh` is: by ``backend="taylorc"`` on the CPU after
cleanup, and by ``backend="auto"`` to the copy of a CPU float32 graph it compiles. float64
graphs, other devices and a PyTorch without oneDNN are left alone.
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ir
from . import PassContext
from .patterns import weight_product

aten = torch.ops.aten
MIN_WIDTH = 128  # in and out features of a product worth oneDNN's call


def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.library.custom_op("taylorc::linear_onednn", mutates_args=())
def linear_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` by oneDNN's linear; the op :func:`rewrite_linear` inserts.

    Args:
        x: ``(..., in)`` float32 CPU; w: ``(out, in)``; b: ``(out,)`` or None.

    Returns:
        ``(..., out)``, as ``torch.nn.functional.linear(x, w, b)`` up to rounding (that
        function itself for other dtypes or devices, or without oneDNN).
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or not onednn_available():
        return torch.nn.functional.linear(x, w, b)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w.contiguous(), b, "none", [], "")


@linear_onednn.register_fake
def _(x, w, b):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _setup(ctx, inputs, output):
    x, w, b = inputs
    ctx.has_bias = b is not None
    ctx.save_for_backward(x, w)


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    g2 = grad.reshape(-1, grad.shape[-1])
    dx = grad @ w if ctx.needs_input_grad[0] else None
    dw = g2.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db


linear_onednn.register_autograd(_backward, setup_context=_setup)


def _float32_cpu(node) -> bool:
    val = getattr(node, "meta", {}).get("val")
    return getattr(val, "dtype", None) == torch.float32 and getattr(val, "device", None) == (
        torch.device("cpu")
    )


def _operands(node: torch.fx.Node):
    """``(X, W, b)`` of a product this pass rewrites, else None: a
    :func:`~taylorc.passes.patterns.weight_product` written ``permute(W, [1, 0])``, without
    keyword arguments, on float32 CPU values, W 2-D and at least :data:`MIN_WIDTH` wide."""
    product = weight_product(node)
    if product is None or node.kwargs:  # addmm's beta/alpha: not a plain layer
        return None
    x, w, bias, wt = product
    if wt.target is not aten.permute.default or not (_float32_cpu(w) and _float32_cpu(x)):
        return None
    if w.meta["val"].dim() != 2 or x.meta["val"].dim() < 2:
        return None
    if min(w.meta["val"].shape) < MIN_WIDTH:
        return None
    if bias is not None and (not _float32_cpu(bias) or bias.meta["val"].dim() != 1):
        return None  # addmm broadcasting a 2-D input: not a linear layer's bias
    return x, w, bias


def rewrite_linear(gm: torch.fx.GraphModule) -> int:
    """Replace every float32 CPU product ``X @ W^T (+ b)`` of ``gm`` with at least
    :data:`MIN_WIDTH` inputs and outputs by ``taylorc::linear_onednn`` (none without oneDNN).

    Args:
        gm: an ATen graph whose nodes carry ``meta["val"]`` (nodes without it are left
            alone: their dtype and device are unknown).

    Returns:
        the number of products replaced (the graph is recompiled when > 0).
    """
    count = 0
    for node in list(gm.graph.nodes) if onednn_available() else []:
        operands = _operands(node)
        if operands is None:
            continue
        with gm.graph.inserting_before(node):
            out = gm.graph.call_function(torch.ops.taylorc.linear_onednn.default, operands)
        out.meta.update(node.meta)
        ir.replace(gm, node, out)
        gm.graph.erase_node(node)
        count += 1
    if count:
        ir.dce(gm)  # the transposes the products read
        gm.graph.lint()
        gm.recompile()
    return count


class CPULinearPass:
    """Rewrite wide float32 CPU products with a transposed weight (see the module docstring).

    Attributes:
        rewritten: after a run, how many products were replaced.
    """

    name = "cpu_linear"
    requires = ("clean",)
    forbids = ()
    ensures = ("cpu_linear",)

    def __init__(self):
        self.rewritten = 0

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        self.rewritten = rewrite_linear(gm)
        return gm
