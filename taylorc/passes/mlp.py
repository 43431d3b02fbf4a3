"""Whole-MLP lowering: a captured ``linear -> act -> ... -> linear`` network whose operator
is the full Laplacian becomes ONE ``taylorc::mlp_laplacian`` call.

The match is structural on the captured ATen graph (so any module that traces to
this chain matches, not only ``nn.Sequential``; :func:`taylorc.passes.patterns.match_mlp`):
the output is ``addmm(b, h, permute(W, [1, 0]))`` of parameter placeholders, and every
``h`` is one activation (the same everywhere) of such an addmm, down to the coordinates.
It applies where the kernel does (D <= 16, <= 8 layers, widths <= 128, float32 or
float64, the plan being the collapsed Laplacian over every coordinate with unit
weights); everywhere else :meth:`MLPPass.match` returns None and the layered
Taylor passes run (the fallback). Like :class:`~taylorc.passes.lower.LowerPass`,
it acts on CUDA graphs unless forced (the tests force it on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from .. import ir
from ..kernels import mlp_laplacian_cpu as cpu_kernel
from ..kernels.mlp_laplacian import collapsed_laplacian, fits, padded_width
from . import PassContext, PassResult
from .patterns import MLPMatch, match_mlp

aten = torch.ops.aten


def _is_unit_laplacian(plan, D: int) -> bool:
    """The plan reads one collapsed order-2 coefficient of the D unit directions, weight 1."""
    # one direction: collapsed and standard Taylor are the same propagation
    collapsed = plan.collapsible or plan.R == 1
    if plan.K != 2 or not collapsed or plan.G != 1 or plan.stochastic is not None:
        return False
    units = [tuple(int(i == d) for i in range(D)) for d in range(D)]
    if [tuple(d) for d in plan.directions] != units or any(w != 1 for w in plan.top_weights[0]):
        return False
    if len(plan.terms) != 1 or plan.terms[0].kind != "linear":
        return False
    parts = plan.terms[0].parts
    return len(parts) == 1 and parts[0].coef is None and parts[0].top == (0, 1)


class MLPPass:
    """Replace the whole Taylor graph of a matched MLP by one ``taylorc::mlp_laplacian`` call.

    Args:
        force: lower also when the coordinates are not on CUDA.

    :meth:`match` tells whether the kernel applies (the method's pipeline asks it);
    ``__call__`` matches again and builds the new graph.
    """

    name = "mlp"
    requires = ("captured",)
    forbids = ("operator",)  # it replaces the whole Taylor pipeline
    ensures = ("operator", "taylor", "collapsed", "lowered")

    def __init__(self, force: bool = False):
        self.force = force

    def match(self, gm: torch.fx.GraphModule, ctx: PassContext) -> MLPMatch | None:
        """The network's layers when the kernel applies to this captured graph, else None."""
        if not (torch.device(ctx.device).type == "cuda" or self.force):
            return None
        if ctx.dtype not in (torch.float32, torch.float64):
            return None
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        coord = next((n for n in placeholders if n.name == ctx.coord), None)
        if coord is None or coord.meta["val"].dim() != 2:
            return None
        D = coord.meta["val"].shape[1]
        if not _is_unit_laplacian(ctx.plan, D):
            return None
        params = {n: n.name for n in placeholders if n.name.startswith("p_")}
        m = match_mlp(gm, coord, params)
        if m is None or not fits(D, [w.meta["val"].shape[0] for w in m.weights]):
            return None
        return m

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        m = self.match(gm, ctx)
        if m is None:
            raise ValueError("MLPPass: the graph is not an MLP whose Laplacian the kernel computes")
        graph = torch.fx.Graph()
        env, coord = {}, None
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                env[n] = graph.placeholder(n.name)
                env[n].meta = dict(n.meta)
                coord = env[n] if n.name == ctx.coord else coord
        lap = graph.call_function(
            collapsed_laplacian,
            (
                coord,
                [env[w] for w in m.weights],
                [env[b] if b is not None else None for b in m.biases],
                m.activation,
            ),
        )
        ir.set_tag(lap, ir.Tag(None, 0, role="mlp"))
        graph.output((lap,))
        new = torch.fx.GraphModule(gm, graph)
        ir.set_info(new, ir.GraphInfo("mlp", gm, options={"mlp": m}))
        return PassResult(new, {"layers": len(m.weights), "activation": m.activation})


@dataclass
class InferenceMLP:
    """A CPU MLP's Laplacian by the C kernel (float32 or float64), for calls without autograd.

    Why not the graph: the kernel has no backward of its own (its autograd rule recomputes
    the PyTorch reference, about 2x the layered graph's compiled backward), so training
    calls keep the layered graph and only calls without autograd (``torch.no_grad``,
    evaluation) take the kernel (issue 33: about 1.4x the layered graph in float32 and 2.5x
    in float64 at D = 5, B = 4096, tanh 64 x 3; docs/benchmarks.md).

    Attributes:
        weights, biases: positions of each linear layer's parameters among the graph's
            inputs (None: no bias), in forward order.
        coord: position of the coordinates ``(B, D)``; activation: ``"tanh"``.
    """

    weights: list[int]
    biases: list[int | None]
    coord: int
    activation: str

    @staticmethod
    def applies(inputs) -> bool:
        """Whether this call records no autograd graph (so the kernel may serve it)."""
        if not torch.is_grad_enabled():
            return True
        return not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)

    def __call__(self, inputs) -> tuple[torch.Tensor]:
        """The graph's outputs, ``(lap,)`` with ``lap`` ``(B, out)``, from its inputs."""
        weights = [inputs[i] for i in self.weights]
        biases = [None if i is None else inputs[i] for i in self.biases]
        return (collapsed_laplacian(inputs[self.coord], weights, biases, self.activation),)


def cpu_inference(gm: torch.fx.GraphModule, ctx: PassContext) -> InferenceMLP | None:
    """The :class:`InferenceMLP` of a captured CPU float32/float64 graph when the whole-MLP
    match holds (unit-weight collapsed Laplacian, an activation the C kernel has, widths it
    is built for, a working C compiler: :mod:`taylorc.kernels.mlp_laplacian_cpu`), else None."""
    if torch.device(ctx.device).type != "cpu" or ctx.dtype not in cpu_kernel.DTYPES:
        return None
    m = MLPPass(force=True).match(gm, ctx)
    if m is None or m.activation not in cpu_kernel.ACTIVATIONS or len(m.weights) < 2:
        return None
    P = padded_width([w.meta["val"] for w in m.weights])
    if P not in cpu_kernel.WIDTHS or cpu_kernel.library(P, ctx.dtype) is None:
        return None
    index = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    coord = next(n for n in index if n.name == ctx.coord)
    biases = [None if b is None else index[b] for b in m.biases]
    return InferenceMLP([index[w] for w in m.weights], biases, index[coord], m.activation)
