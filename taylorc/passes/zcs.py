"""The zero-coordinate-shift (ZCS) pass: operator terms of many-function models by reverse mode.

Leng, Shankar, Thiyagalingam, "Zero coordinate shift: whetted automatic
differentiation for physics-informed operator learning" (J. Comput. Phys.
2024), Sec. 3. A model maps M functions and N points ``x`` of shape ``(N, D)``
to ``u`` of shape ``(M, N)``. Instead of making the ``N x D`` coordinates leaves
of reverse mode for every function, the pass adds ONE scalar leaf ``z_j`` per
coordinate dimension, ``x -> x + z`` with ``z = 0``, and differentiates the
single scalar root ``omega = sum(a * u)`` (``a = 1`` a dummy of u's shape):

    d^alpha u = d/da (d^alpha omega / dz^alpha)        (Leng et al. 2024, Eq. 10)

since ``d^alpha omega / dz^alpha = sum a * d^alpha u``. Every derivative of
omega w.r.t. z is a scalar, one reverse pass gives all D children of a
multi-index, and higher orders reuse the lower ones
(:class:`~taylorc.operators.assembly.MultiIndexCache`, the caching of DeepXDE's ``LazyGrad``).

The pass traces this computation itself (``make_fx`` through
``torch.autograd.grad``) into an explicit fx graph of forward and backward ATen
ops: it can be dumped, cleaned up and compiled like the Taylor graphs, and
training differentiates through it. The graph's placeholders are those of the
captured model followed by the D shift leaves ``z_<coord>`` (fed zeros).
"""

from __future__ import annotations

import torch
import torch.fx
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from .. import ir
from ..operators.assembly import MultiIndexCache, assemble_terms
from . import PassContext


def shift_names(D: int, coords) -> list[str]:
    """Placeholder names of the shift leaves: ``z_x, z_t`` or ``z_0, z_1``."""
    return [f"z_{c}" for c in coords] if coords else [f"z_{j}" for j in range(D)]


class ZCSPass:
    """Rewrite a captured many-function model into its ZCS derivative graph.

    Reads ``ctx.coord`` (the ``(N, D)`` coordinates' placeholder) and the
    requested operators; returns a GraphModule whose placeholders are the
    source's followed by D scalar shift leaves and whose output is the tuple of
    terms, each shaped like u (the gradient appends D).

    Args:
        ops: name -> :class:`~taylorc.operators.Operator` (value, gradient, or linear).
        coords: coordinate names, or None.

    Raises:
        BatchCouplingError: the model mixes the points (see :mod:`taylorc.ir.coupling`).
        ValueError: the output's point axis cannot be followed (x-dependent
            coefficients need it).
    """

    name = "zcs"
    requires = ("captured",)
    forbids = ("operator",)
    ensures = ("operator",)

    def __init__(self, ops: dict, coords=None):
        self.ops = ops
        self.coords = coords

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        ctx.batch_axis = axis = ctx.check_batch(gm)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        ix = next(i for i, n in enumerate(placeholders) if n.name == ctx.coord)
        x_val = placeholders[ix].meta["val"]
        if x_val.dim() != 2:
            raise ValueError(
                f"ZCS needs coordinates of shape (N, D), got {tuple(x_val.shape)}: flatten them"
            )
        D, n_in = x_val.shape[1], len(placeholders)
        ops, coords = self.ops, self.coords

        def derivative_graph(*inputs):
            base, leaves = list(inputs[:n_in]), inputs[n_in:]
            with torch.enable_grad():
                z = [leaf.detach().requires_grad_() for leaf in leaves]
                x = base[ix]
                base[ix] = x + torch.stack(z).reshape(1, D)
                u = gm(*base)
                a = torch.ones_like(u).requires_grad_()
                omega = (a * u).sum()

                def children(q):
                    return list(torch.autograd.grad(q, z, create_graph=True, allow_unused=True))

                omegas = MultiIndexCache(omega, D, children)

                def derivative(alpha):
                    w = omegas(alpha)
                    if w is None or not w.requires_grad:
                        return None
                    return torch.autograd.grad(w, a, create_graph=True, allow_unused=True)[0]

                terms = assemble_terms(derivative, u, ops, x, coords, axis)
            return tuple(terms[k] for k in ops)

        examples = [
            torch.zeros(n.meta["val"].shape, dtype=n.meta["val"].dtype, device=ctx.device)
            for n in placeholders
        ] + [torch.zeros((), dtype=ctx.dtype, device=ctx.device) for _ in range(D)]
        out = make_fx(
            derivative_graph,
            decomposition_table=core_aten_decompositions(),
            tracing_mode="fake",
            record_stack_traces=True,
        )(*examples)
        names = [n.name for n in placeholders] + shift_names(D, coords)
        for node, name in zip([n for n in out.graph.nodes if n.op == "placeholder"], names):
            node.name = node.target = name
        shifts = list(out.graph.nodes)[n_in : n_in + D]
        for node in shifts:
            ir.set_tag(node, ir.Tag(None, 0, role="zcs_shift"))
        out.graph._codegen = torch.fx.graph.CodeGen()
        out.graph.eliminate_dead_code()
        out.recompile()
        ir.set_info(out, ir.GraphInfo("zcs", gm, inputs={"zcs_shift": shifts}))
        return out


def shift_inputs(D: int, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """The zero values fed to the D shift placeholders."""
    return [torch.zeros((), dtype=dtype, device=device) for _ in range(D)]
