"""Direction blocks of linear layers held as products ``P ⊙ Q`` (:class:`Factored`).

For one hidden layer under the collapsed Laplacian (the 5 -> 64 -> 1 net of Dangel,
Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature for Physics-Informed Neural
Networks", NeurIPS 2024), two ``(R, N, d)`` blocks of the layer graph factor as
(per-point vector) ⊙ (per-direction vector): the last layer's direction inputs
``σ'(a) ⊙ W e_r``, which reach nothing, and the g of the first layer's directions, read
through ``Σ_r z_r²``. :class:`~taylorc.passes.layers.LayerPass` (without perturbations) calls
:func:`factor_inputs` and :func:`factor_outputs` so that neither block is built;
Kronecker factors take their Gram as ``(PᵀP) ⊙ (QᵀQ)`` (:mod:`taylorc.optim.factors`).
Anything that does not match the two patterns exactly keeps its dense columns. The
``layer`` arguments are :class:`~taylorc.passes.layers.LinearLayer` records (not imported:
layers imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from .. import ir

aten = torch.ops.aten


@dataclass
class Factored:
    """Columns of a layer held as a product ``P[n] ⊙ Q[j]`` instead of one tensor per column.

    ``side="input"``: column ``cols[j]``'s input is ``P (M, d_in) ⊙ Q[rows[j]]``; only for
    columns whose outputs do not reach the result (the last layer's directions under a
    Laplacian: ``σ'(a) ⊙ W e_r``). ``side="output"``: the column's g is
    ``dr/dP (M, d_out) ⊙ Q[rows[j]]``, P the per-point node r reads them through (the
    first layer's directions under a collapsed Laplacian: ``Σ_r z_r²`` per point is the
    expand of one sum, ``dr/dz_r = dr/dP ⊙ 2 z_r``). Either way the ``(R, M, d)`` block
    of per-point columns is never built: Kronecker factors take its Gram as
    ``(PᵀP) ⊙ (QᵀQ)`` (:mod:`taylorc.optim.factors`).

    Attributes:
        side: ``"input"`` or ``"output"``.
        cols: the layer's columns s held so.
        rows: for each of ``cols``, its row of Q.
        P, Q: nodes ``(M, d)`` and ``(R, d)``.
    """

    side: str
    cols: tuple[int, ...]
    rows: tuple[int, ...]
    P: torch.fx.Node | None
    Q: torch.fx.Node | None


def _broadcast_source(node, N: int):
    """``Q (R, 1, d)`` when ``node`` is ``expand(Q, [R, N, d])``: one row for every point
    (the first layer's direction columns, hoisted out of the matmul); else None."""
    if not isinstance(node, torch.fx.Node) or node.target is not aten.expand.default:
        return None
    src = node.args[0]
    sv = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    ov = node.meta.get("val")
    if sv is None or ov is None or sv.dim() != 3 or ov.dim() != 3 or sv.shape[1] != 1:
        return None
    return src if tuple(ov.shape) == (sv.shape[0], N, sv.shape[2]) else None


def _product(node: torch.fx.Node, N: int):
    """``(P, Q)`` when ``node`` is ``mul(P (N, d), expand(Q (R, 1, d)))`` (either order)."""
    if node.op != "call_function" or node.target is not aten.mul.Tensor or node.kwargs:
        return None
    for p, e in (node.args, node.args[::-1]):
        Q = _broadcast_source(e, N)
        pv = p.meta.get("val") if isinstance(p, torch.fx.Node) else None
        if Q is None or pv is None or pv.dtype != Q.meta["val"].dtype:
            continue
        if tuple(pv.shape) == (N, Q.meta["val"].shape[2]):
            return p, Q
    return None


def _blocks(layer, what: str) -> dict:
    """Direction columns by the ``(R, M, d)`` node holding their ``what`` (input/output)."""
    blocks: dict = {}
    for s, c in enumerate(layer.columns):
        node = getattr(c, what)
        if c.kind == "direction" and node is not None:
            blocks.setdefault(node, []).append(s)
    return blocks


def _rows_of(Q: torch.fx.Node, graph, layer, cols: list[int]):
    """``reshape(Q (R, 1, d), (R, d))`` and each column's row of it."""
    R, _, d = Q.meta["val"].shape
    with graph.inserting_after(Q):
        flat = graph.call_function(aten.reshape.default, (Q, [R, d]))
    layer.tag(flat, layer.columns[cols[0]], "factor")
    return flat, tuple(layer.columns[s].index for s in cols)


def factor_inputs(graph, layer, N: int) -> list[Factored]:
    """The input blocks ``mul(P, expand(Q))`` of columns whose outputs reach nothing, as
    :class:`Factored` inputs (their columns' ``input`` becomes None: they are not stacked).

    Args:
        graph: the layer graph (gains one ``reshape`` of Q per block), shapes annotated.
        layer: a :class:`~taylorc.passes.layers.LinearLayer` of it (its columns are changed).
        N: the number of points; blocks are ``(R, N, d_in)``, P ``(N, d_in)``, Q ``(R, d_in)``.

    Returns:
        the blocks held so (none for ``rows_per_point`` > 1). Raises nothing: a block
        that does not match stays dense.
    """
    if layer.rows_per_point != 1:
        return []
    out = []
    for node, cols in _blocks(layer, "input").items():
        pq = None if any(layer.columns[s].output is not None for s in cols) else _product(node, N)
        if pq is None:
            continue
        Q, rows = _rows_of(pq[1], graph, layer, cols)
        out.append(Factored("input", tuple(cols), rows, pq[0], Q))
        for s in cols:
            layer.columns[s].input = None
    return out


def _live_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Users that are read (a user nothing reads, such as a kept input or an unstacked input, is not)."""
    return [u for u in node.users if u.users or u.op == "output"]


def factor_outputs(gm: torch.fx.GraphModule, layer, N: int) -> list[Factored]:
    """Output blocks ``O = expand(Q)`` that the result reads only as ``sum(O * O, 0)`` (the
    collapsed Laplacian's ``Σ_r z_r²``), rewritten ``expand(sum(Q * Q, 0))``: per point
    ``dr/dO_r = dr/dP ⊙ 2 Q_r``, read through the expand P (a :class:`Factored` output;
    the columns' ``output`` becomes None). Same values, bit for bit: the per-point sum
    was of identical rows, and ``2 Q`` is what the product rule gives exactly.

    Args:
        gm: the layer graph, shapes annotated, perturbations not added, kept inputs
            removed from its output (a kept input would count as a use of the block).
        layer: a :class:`~taylorc.passes.layers.LinearLayer` of it (its columns are changed).
        N: the number of points; blocks are ``(R, N, d_out)``, P ``(N, d_out)``,
            Q ``(R, d_out)``.

    Returns:
        the blocks held so (none for ``rows_per_point`` > 1). Raises nothing: a block
        read any other way stays dense.
    """
    if layer.rows_per_point != 1:
        return []
    graph, out = gm.graph, []
    for block, cols in _blocks(layer, "output").items():
        Q = _broadcast_source(block, N)
        users = _live_users(block)
        if Q is None or len(users) != 1 or users[0].target is not aten.mul.Tensor:
            continue
        square = users[0]
        if tuple(square.args) != (block, block) or square.kwargs or len(square.users) != 1:
            continue
        red = next(iter(square.users))
        if red.target is not aten.sum.dim_IntList or red.kwargs or list(red.args[1]) != [0]:
            continue
        if len(red.args) > 2 and red.args[2]:  # keepdim
            continue
        d = Q.meta["val"].shape[2]
        with graph.inserting_before(red):
            small = graph.call_function(aten.mul.Tensor, (Q, Q))
            small = graph.call_function(aten.sum.dim_IntList, (small, [0]))
            P = graph.call_function(aten.expand.default, (small, [N, d]))
        ir.tag_new((small.args[0], small, P), ir.tag_of(red))
        flat, rows = _rows_of(Q, graph, layer, cols)
        with graph.inserting_after(flat):
            twice = graph.call_function(aten.mul.Tensor, (flat, 2))
        layer.tag(twice, layer.columns[cols[0]], "factor")
        ir.replace(gm, red, P)
        out.append(Factored("output", tuple(cols), rows, P, twice))
        for s in cols:
            layer.columns[s].output = None
    return out
