"""The one table of what taylorc knows about each ATen op, read by every pass.

Each entry is an :class:`OpFacts` per overload; the passes' sets are views of it
(``having("zero_maker")``), so a fact is written once. What an op *computes* in
Taylor mode lives in the rule registry (:mod:`taylorc.rules.table`); this table holds
the facts around it:

* ``constant_output``: the output does not vary with the inputs' values (a.e.): only the
  value propagates (comparisons, ``sign``, ``zeros_like``);
* ``zero_maker``: the output is all zeros; ``zero_if``: when a known-zero operand makes the
  output zero (``"any"``: a product; ``"first"``: linear in the first operand; ``"all"``:
  every operand zero, as ``cat``);
* ``reduction``: reduces over its dims (``keeps_dim``: the reduced dim stays, as softmax
  or cumsum); ``along_dim``: the position of the dim argument of an op that moves data
  along one dim; ``batch_norm``: one of batch norm's overloads (batch analysis);
* ``free``: a view or reshape that moves no data (the dump's cost estimates);
  ``shape_arg``: its second argument is a target shape (unstack);
* ``activation``: the name of the fused ``taylorc::jet_activation`` step it lowers to;
* ``pointwise``: elementwise with broadcasting (output entry i reads entry i of each
  operand), so the batch analysis follows the batch axis through it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

aten = torch.ops.aten


@dataclass(frozen=True)
class OpFacts:
    """The facts of one ATen overload (see the module docstring)."""

    constant_output: bool = False
    zero_maker: bool = False
    zero_if: str | None = None
    reduction: bool = False
    keeps_dim: bool = False
    along_dim: int | None = None
    batch_norm: bool = False
    free: bool = False
    shape_arg: bool = False
    activation: str | None = None
    pointwise: bool = False


OPS: dict[torch._ops.OpOverload, OpFacts] = {}


@torch.library.custom_op("taylorc::stop_gradient", mutates_args=())
def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x.detach()`` as a graph op: the value of ``x``, a constant of every derivative.

    Capture turns each ``detach`` into it (functionalization would make ``detach`` an
    ``aten.alias``, a view that carries derivatives), so the graph keeps the stop.

    Args:
        x: any tensor, any shape and dtype.

    Returns:
        A copy of ``x`` (same shape and dtype); its gradient is zero.
    """
    return x.clone()


stop_gradient.register_fake(lambda x: torch.empty_like(x))
stop_gradient.register_autograd(lambda ctx, grad: None)


def facts(op) -> OpFacts:
    """The facts of ``op`` (all false for an op the table does not know)."""
    return OPS.get(op, _NONE)


def having(fact: str) -> frozenset:
    """The overloads whose fact ``fact`` is set (truthy)."""
    return frozenset(op for op, f in OPS.items() if getattr(f, fact))


def valued(fact: str) -> dict:
    """``{overload: value}`` for the overloads whose fact ``fact`` is set."""
    return {op: getattr(f, fact) for op, f in OPS.items() if getattr(f, fact) is not None}


def _add(ops, **kw) -> None:
    for op in ops:
        old = OPS.get(op)
        OPS[op] = OpFacts(**{**(vars(old) if old else {}), **kw})


_NONE = OpFacts()
# views and reshapes that keep every element: zero in, zero out; no data moved
_VIEWS = [
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.permute.default,
    aten.transpose.int,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
]

_add(
    [
        aten.zeros_like.default,
        aten.ones_like.default,
        aten.full_like.default,
        aten.empty_like.default,
        aten.detach.default,
        torch.ops.taylorc.stop_gradient.default,
        aten.sign.default,
        aten.floor.default,
        aten.ceil.default,
        aten.round.default,
        aten.trunc.default,
        aten.logical_not.default,
        aten.logical_and.default,
        aten.logical_or.default,
    ]
    + [  # comparisons
        getattr(getattr(aten, name), overload)
        for name in ("gt", "lt", "ge", "le", "eq", "ne")
        for overload in ("Scalar", "Tensor")
    ],
    constant_output=True,
)
_add([aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default], zero_maker=True)
_add(
    [aten.mul.Tensor, aten.matmul.default, aten.mm.default, aten.bmm.default, aten.einsum.default],
    zero_if="any",
)
_add(
    _VIEWS
    + [
        aten.sum.dim_IntList,
        aten.sum.default,
        aten.mean.dim,
        aten.mean.default,
        aten.neg.default,
        aten.select.int,
        aten.slice.Tensor,
        aten.clone.default,
        aten.alias.default,
        aten.flip.default,
        aten.index_select.default,
        aten._to_copy.default,
        aten.div.Tensor,
        aten.t.default,
    ],
    zero_if="first",
)
_add([aten.cat.default, aten.stack.default], zero_if="all")
_add(
    [
        aten.sum.dim_IntList,
        aten.sum.default,
        aten.mean.dim,
        aten.mean.default,
        aten.amax.default,
        aten.amin.default,
        aten.var.correction,
        aten.var_mean.correction,
        aten.prod.dim_int,
        aten.prod.default,
        aten.logsumexp.default,
        aten.linalg_vector_norm.default,
        aten.argmax.default,
        aten.argmin.default,
        aten.std.correction,
    ],
    reduction=True,
)
_add(
    [aten._softmax.default, aten._log_softmax.default, aten.cumsum.default],
    reduction=True,
    keeps_dim=True,
)
for _op, _pos in {
    aten.select.int: 1,
    aten.slice.Tensor: 1,
    aten.index_select.default: 1,
    aten.gather.default: 1,
    aten.cat.default: 1,
    aten.roll.default: 2,
    aten.flip.default: 1,
    aten.split_with_sizes.default: 2,
    aten.split.Tensor: 2,
    aten.unbind.int: 1,
    aten.cumprod.default: 1,
    aten.cummax.default: 1,
    aten.cummin.default: 1,
    aten.slice_scatter.default: 2,
    aten.select_scatter.default: 2,
    aten.scatter_add.default: 1,
    aten.scatter.src: 1,
    aten.scatter.value: 1,
    aten.scatter_reduce.two: 1,
}.items():
    _add([_op], along_dim=_pos)
_add(
    [
        aten.native_batch_norm.default,
        aten._native_batch_norm_legit_functional.default,
        aten._native_batch_norm_legit.default,
        aten._native_batch_norm_legit_no_training.default,
    ],
    batch_norm=True,
)
_add(
    _VIEWS
    + [
        aten.select.int,
        aten.slice.Tensor,
        aten.alias.default,
        aten.t.default,
        aten.detach.default,
        aten.lift_fresh_copy.default,
    ],
    free=True,
)
_add([aten.expand.default, aten.reshape.default, aten.view.default], shape_arg=True)
for _op, _name in {
    aten.tanh.default: "tanh",
    aten.sin.default: "sin",
    aten.cos.default: "cos",
    aten.sigmoid.default: "sigmoid",
    aten.exp.default: "exp",
    aten.gelu.default: "gelu",
}.items():
    _add([_op], activation=_name)
_add(
    [
        aten.add.Tensor,
        aten.add.Scalar,
        aten.sub.Tensor,
        aten.sub.Scalar,
        aten.mul.Tensor,
        aten.mul.Scalar,
        aten.div.Tensor,
        aten.div.Scalar,
        aten.where.self,
        aten.neg.default,
        aten.pow.Tensor_Scalar,
        aten.pow.Tensor_Tensor,
        aten.clone.default,
        aten.alias.default,
        aten._to_copy.default,
        aten.lift_fresh_copy.default,
        aten.detach.default,
        aten.expand.default,
        aten.clamp.default,
        aten.clamp_min.default,
        aten.clamp_max.default,
    ],
    pointwise=True,
)
# -- indexing, diagonals, pooling, triangles; binary pointwise ops --
_add(
    [
        aten.index.Tensor,
        aten.diagonal.default,
        aten.avg_pool2d.default,
        aten.tril.default,
        aten.triu.default,
        aten.diag_embed.default,
    ],
    zero_if="first",
)
_add([aten.diagonal.default], free=True)
_add([aten.logcumsumexp.default], along_dim=1)
_add(
    [
        aten.atan2.default,
        aten.hypot.default,
        aten.maximum.default,
        aten.minimum.default,
        aten.clamp.Tensor,
        aten.hardtanh.default,
    ],
    pointwise=True,
)
