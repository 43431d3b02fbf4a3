"""Batch-independence check: per-sample operators need output row b to depend on input row b only.

A dependency analysis over the captured graph (a networkx DiGraph of the fx
nodes, in topological order) follows the batch axis of the coordinates
through every op: elementwise ops keep it (aligned from the right), matrix
products keep it when it is not contracted, views and permutations move it.
An op that reduces over it (batch norm in training mode, a mean over the
batch), contracts it (attention across points, ``x.T @ x``), or selects,
slices, concatenates or gathers along it couples the rows: the taylor pass
would compute derivatives of something other than per-sample derivatives, so
a :class:`~taylorc.errors.BatchCouplingError` is raised naming the op, the
node, the user's source line and the path from the coordinates. Where the
axis cannot be followed (a reshape that merges it with other dims) the
analysis stops following it rather than guess.
"""

from __future__ import annotations

import math

import networkx as nx
import torch
import torch.fx

from ..errors import BatchCouplingError, user_source_line
from .facts import facts, having, valued

aten = torch.ops.aten

REDUCTIONS = having("reduction")
ALONG_DIM = valued("along_dim")  # ops that move data along one dim: coupling on the batch dim
BATCH_NORMS = having("batch_norm")
_PRODUCTS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.matmul.default,
    aten.baddbmm.default,
}
_MOVES = {
    aten.permute.default,
    aten.transpose.int,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
}
# ops the analysis follows exactly: on a graph of these only, its verdict needs no probe
# (:func:`taylorc.ir.coupling.followed_exactly`)
FOLLOWED = (
    REDUCTIONS
    | set(ALONG_DIM)
    | BATCH_NORMS
    | _PRODUCTS
    | _MOVES
    | {aten.diagonal.default, aten.index.Tensor, aten.avg_pool2d.default}
    | having("pointwise")
    | having("constant_output")
)


def _ndim(node) -> int | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v.dim() if isinstance(v, torch.Tensor) else None


def _shape(node):
    v = node.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _dims_arg(node, index, default=None):
    args = node.args
    d = args[index] if len(args) > index else node.kwargs.get("dim", default)
    if d is None:
        return None
    return list(d) if isinstance(d, (list, tuple)) else [d]


class _Coupling(Exception):
    pass


def _batch_norm_axis(node, bd):
    t = node.target
    training = (
        node.args[5]
        if t is aten.native_batch_norm.default
        else t is not aten._native_batch_norm_legit_no_training.default
    )
    if training:
        raise _Coupling("batch norm in training mode normalises over the batch (call model.eval())")
    return bd


def _reduction_axis(node, bd):
    t, first = node.target, node.args[0]
    at = 2 if t is aten.linalg_vector_norm.default else 1  # (x, ord, dim, keepdim)
    dims = _dims_arg(node, at)
    in_nd = _ndim(first)
    dims = list(range(in_nd)) if not dims else [d % in_nd for d in dims]
    if bd in dims:
        raise _Coupling(f"it reduces over the batch dimension (dim {bd})")
    keep = (
        node.args[at + 1]
        if len(node.args) > at + 1 and isinstance(node.args[at + 1], bool)
        else node.kwargs.get("keepdim", False)
    )
    return bd if keep or facts(t).keeps_dim else bd - sum(d < bd for d in dims)


def _along_dim_axis(node, bd, axes, B):
    t, nd = node.target, _ndim(node)
    if t is aten.cat.default:
        d = node.args[1] if len(node.args) > 1 else 0
        b = next(iter({axes.get(a) for a in node.args[0]} - {None}), None)
        if b is not None and d % nd == b:
            raise _Coupling("it concatenates along the batch dimension")
        return b
    pos = ALONG_DIM[t]
    d = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", 0)
    in_nd = _ndim(node.args[0])
    dims = [e % in_nd for e in d] if isinstance(d, (list, tuple)) else [d % in_nd]
    if bd is not None and bd in dims:
        if t is aten.slice.Tensor and _shape(node)[bd] == B:
            return bd  # the whole batch: x[:, ...]
        raise _Coupling(f"it indexes along the batch dimension (dim {bd})")
    if t is aten.select.int and bd is not None and d % in_nd < bd:
        return bd - 1
    return bd


def _product_axis(node, axes):
    t, nd = node.target, _ndim(node)
    bias_first = t in (aten.addmm.default, aten.baddbmm.default)
    a, b = (node.args[1], node.args[2]) if bias_first else node.args[:2]
    na, nb = _ndim(a), _ndim(b)
    ba, bb = axes.get(a), axes.get(b)
    if ba is not None and ba == na - 1 or bb is not None and nb >= 2 and bb == nb - 2:
        raise _Coupling("it contracts the batch dimension (a product across points)")
    if ba is not None and bb is not None:
        lined_up = ba < na - 2 and bb < nb - 2 and nd - (na - ba) == nd - (nb - bb)
        if not lined_up:  # rows of one point meet columns of another: (B, B) scores
            raise _Coupling("it contracts the batch dimension (a product across points)")
        return nd - (na - ba)
    if ba is not None:
        return nd - (na - ba) if ba == na - 2 else ba
    return nd - 1 if bb == nb - 1 else bb


def _move_axis(node, bd):
    """permute, transpose, view/reshape, unsqueeze of a tensor whose batch axis is bd."""
    t, nd = node.target, _ndim(node)
    if t is aten.permute.default:
        dims = list(node.args[1])
        return dims.index(bd) if bd in dims else [d % nd for d in dims].index(bd)
    if t is aten.transpose.int:
        a, b = node.args[1] % nd, node.args[2] % nd
        return b if bd == a else a if bd == b else bd
    if t is aten.unsqueeze.default:
        return bd + 1 if node.args[1] % nd <= bd else bd
    shape_in, shape_out = list(_shape(node.args[0])), list(_shape(node))
    before = math.prod(shape_in[:bd])
    for j, size in enumerate(shape_out):  # the axis survives where the elements before it agree
        if size == shape_in[bd] and math.prod(shape_out[:j]) == before:
            return j
    return None  # merged with other dims: stop following rather than guess


def _diagonal_axis(node, bd):
    """diagonal(x, offset, dim1, dim2): both dims leave, the diagonal is appended last."""
    a = list(node.args) + [None] * 4
    kw = node.kwargs
    in_nd = _ndim(node.args[0])
    d1 = a[2] if a[2] is not None else kw.get("dim1", 0)
    d2 = a[3] if a[3] is not None else kw.get("dim2", 1)
    d1, d2 = d1 % in_nd, d2 % in_nd
    if bd in (d1, d2):
        raise _Coupling(f"it takes a diagonal across the batch dimension (dim {bd})")
    return bd - (d1 < bd) - (d2 < bd)


def _index_axis(node, bd, ins):
    """x[i0, :, i1] (aten.index.Tensor): where the batch axis lands among the indexed dims."""
    if bd is None or len(ins) > 1:  # an index tensor that carries the batch axis: lost
        return None
    in_nd, nd = _ndim(node.args[0]), _ndim(node)
    positions, d = [], 0
    for i in node.args[1]:
        width = 1
        if i is not None:
            v = i.meta.get("val") if isinstance(i, torch.fx.Node) else i
            width = v.dim() if isinstance(v, torch.Tensor) and v.dtype == torch.bool else 1
            positions += range(d, d + width)
        d += width
    if bd in positions:
        raise _Coupling(f"it indexes along the batch dimension (dim {bd})")
    if not positions:
        return bd
    rest_before = sum(1 for j in range(bd) if j not in positions)  # dims kept before bd
    broadcast = nd - (in_nd - len(positions))  # dims of the broadcast indices
    adjacent = positions == list(range(positions[0], positions[-1] + 1))
    if adjacent and bd < positions[0]:
        return bd
    # adjacent: the indexed block stays in place; otherwise it moves to the front
    return rest_before + broadcast


def _pool_axis(node, bd):
    """2-d pooling windows slide over the last two dims: the batch axis must be in front."""
    if bd >= _ndim(node.args[0]) - 2:
        raise _Coupling(f"it pools over the batch dimension (dim {bd})")
    return bd


def _group_norm_axis(node, bd):
    """Group norm normalises each sample (dim 0) over its channels and space."""
    if bd != 0:
        raise _Coupling(f"it normalises over the batch dimension (dim {bd})")
    return 0


def _cdist_axis(node, axes):
    """cdist(x1, x2) = distances of the rows of x1 to the rows of x2, a product x1 x2^T."""
    a, b = node.args[:2]
    nd, na, nb = _ndim(node), _ndim(a), _ndim(b)
    ba, bb = axes.get(a), axes.get(b)
    if ba == na - 1 or bb == nb - 1:
        raise _Coupling("it reduces over the batch dimension (the coordinates of a distance)")
    if ba is not None and bb is not None:
        if ba >= na - 2 or bb >= nb - 2 or nd - (na - ba) != nd - (nb - bb):
            raise _Coupling("it measures distances across points (a product across points)")
        return nd - (na - ba)
    if ba is not None:
        return nd - (na - ba)
    return nd - 1 if bb == nb - 2 else nd - (nb - bb)


# ops whose batch axis follows from the first operand's alone
_AXIS_RULES = {
    aten.diagonal.default: _diagonal_axis,
    aten.avg_pool2d.default: _pool_axis,
    aten.max_pool2d_with_indices.default: _pool_axis,
    aten.native_group_norm.default: _group_norm_axis,
}


def _aligned_axis(node, ins):
    """Elementwise and broadcasting ops: the batch axes of the operands align from the right.

    Never negative: an op the analysis does not know that drops dims (the axis would fall
    off the left) loses the axis instead (None: the exact probe decides).
    """
    nd, out = _ndim(node), None
    for a, b in ins.items():
        aligned = nd - (_ndim(a) - b) if nd is not None and _ndim(a) is not None else None
        if aligned is not None and aligned < 0:
            return None
        if out is not None and aligned is not None and aligned != out:
            raise _Coupling("it combines tensors whose batch dimensions do not line up")
        out = aligned if out is None else out
    return out


def _batch_dim_of(node: torch.fx.Node, axes: dict, B: int):
    """The batch axis of ``node``'s output, None if it has none, or raise _Coupling."""
    ins = {a: axes[a] for a in node.all_input_nodes if axes.get(a) is not None}
    if not ins:
        return None
    t = node.target
    first = node.args[0] if node.args else None
    bd = ins.get(first) if isinstance(first, torch.fx.Node) else None
    if t in BATCH_NORMS:
        return _batch_norm_axis(node, bd)
    if t in REDUCTIONS and bd is not None:
        return _reduction_axis(node, bd)
    if t in ALONG_DIM:
        return _along_dim_axis(node, bd, axes, B)
    if t in _PRODUCTS:
        return _product_axis(node, axes)
    if t in _MOVES:
        return None if bd is None else _move_axis(node, bd)
    if t in _AXIS_RULES:
        return None if bd is None else _AXIS_RULES[t](node, bd)
    if t is aten.index.Tensor:
        return _index_axis(node, bd, ins)
    if t is aten._cdist_forward.default:
        return _cdist_axis(node, axes)
    return _aligned_axis(node, ins)


def analyse_batch_axis(
    gm: torch.fx.GraphModule, coord: str, lost: list | None = None
) -> int | None:
    """Follow the batch axis through the graph; raise where an op would mix the rows.

    Conservative where it knows an op (it may refuse a graph whose rows stay
    independent, e.g. a reduction whose result only feeds a shape), and blind to ops
    it does not know: :func:`taylorc.ir.coupling.check_batch_independence` decides
    with an exact probe.

    Args:
        gm: a captured graph (``meta["val"]`` on every node).
        coord: the name of the coordinates' placeholder (batch axis 0).
        lost: if given, receives the nodes after the coordinates whose batch axis the
            analysis could not follow (there it can miss a coupling).

    Returns:
        the output's axis that carries the coordinates' batch axis (0 for a
        per-sample model, 1 for a DeepONet's ``(M, N)`` output), or None when
        the analysis lost track of it.

    Raises:
        BatchCouplingError: naming the op, the node, the user's source line and
            the chain of nodes from the coordinates.
    """
    g = nx.DiGraph()
    for n in gm.graph.nodes:
        g.add_node(n)
        for a in n.all_input_nodes:
            g.add_edge(a, n)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == coord)
    B = _shape(x)[0]
    axes = {x: 0}
    downstream = nx.descendants(g, x)
    for n in nx.topological_sort(g):
        if n.op != "call_function" or n not in downstream:
            continue
        try:
            axes[n] = _batch_dim_of(n, axes, B)
        except _Coupling as why:
            path = " -> ".join(m.name for m in nx.shortest_path(g, x, n))
            where = user_source_line(n)
            raise BatchCouplingError(
                f"the model mixes batch rows at node '{n.name}' ({n.target}): {why}. Per-sample derivatives "
                f"are not what this graph computes (path from the coordinates: {path})"
                + (f"\n  from your code at {where}" if where else "")
                + "\nMake every output row depend on its own input row only (model.eval() for batch norm; "
                "no attention or reductions across collocation points)."
            ) from None
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if isinstance(out, (tuple, list)):
        out = out[0] if len(out) == 1 else None
    if lost is not None:  # nodes after the coordinates whose batch axis the analysis lost
        lost.extend(n for n in downstream if n.op == "call_function" and axes.get(n) is None)
    return axes.get(out, 0 if out is x else None)
