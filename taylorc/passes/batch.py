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
from ..ops import facts, having, valued

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
FOLLOWED = (
    REDUCTIONS
    | set(ALONG_DIM)
    | BATCH_NORMS
    | _PRODUCTS
    | _MOVES
    | having("pointwise")
    | having("constant_output")
)


def followed_exactly(gm: torch.fx.GraphModule, coord: str, axis: int | None, lost) -> bool:
    """Whether the analysis's verdict is exact: every op after the coordinates is one it
    follows exactly (or a registered elementwise rule), and it lost the axis nowhere."""
    from .rules import RULES  # the elementwise ops of the registry are pointwise too

    if axis is None or lost:
        return False
    x = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == coord)
    seen = {x}
    for n in gm.graph.nodes:
        if n.op == "output" or not any(a in seen for a in n.all_input_nodes):
            continue
        seen.add(n)
        info = RULES.get(n.target)
        if n.target not in FOLLOWED and (info is None or info.kind != "elementwise"):
            return False
    return True


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


def _batch_dim_of(node: torch.fx.Node, axes: dict, B: int):
    """The batch axis of ``node``'s output, None if it has none, or raise _Coupling."""
    ins = {a: axes[a] for a in node.all_input_nodes if axes.get(a) is not None}
    if not ins:
        return None
    t = node.target
    nd = _ndim(node)
    first = node.args[0] if node.args else None
    bd = ins.get(first) if isinstance(first, torch.fx.Node) else None
    if t in BATCH_NORMS:
        training = (
            node.args[5]
            if t is aten.native_batch_norm.default
            else t is not aten._native_batch_norm_legit_no_training.default
        )
        if training:
            raise _Coupling(
                "batch norm in training mode normalises over the batch (call model.eval())"
            )
        return bd
    if t in REDUCTIONS and bd is not None:
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
    if t in ALONG_DIM:
        if t is aten.cat.default:
            tensors = node.args[0]
            d = node.args[1] if len(node.args) > 1 else 0
            bds = {axes.get(a) for a in tensors}
            b = next(iter(bds - {None}), None)
            if b is not None and d % nd == b:
                raise _Coupling("it concatenates along the batch dimension")
            return b
        pos = ALONG_DIM[t]
        d = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", 0)
        in_nd = _ndim(first)
        dims = [e % in_nd for e in d] if isinstance(d, (list, tuple)) else [d % in_nd]
        if bd is not None and bd in dims:
            if t is aten.slice.Tensor and _shape(node)[bd] == B:
                return bd  # the whole batch: x[:, ...]
            raise _Coupling(f"it indexes along the batch dimension (dim {bd})")
        if t is aten.select.int and bd is not None and d % in_nd < bd:
            return bd - 1
        return bd
    if t in (
        aten.mm.default,
        aten.addmm.default,
        aten.bmm.default,
        aten.matmul.default,
        aten.baddbmm.default,
    ):
        a, b = (
            (node.args[1], node.args[2])
            if t in (aten.addmm.default, aten.baddbmm.default)
            else node.args[:2]
        )
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
    if t is aten.permute.default and bd is not None:
        return (
            list(node.args[1]).index(bd)
            if bd in node.args[1]
            else [d % nd for d in node.args[1]].index(bd)
        )
    if t is aten.transpose.int and bd is not None:
        a, b = node.args[1] % nd, node.args[2] % nd
        return b if bd == a else a if bd == b else bd
    if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        shape_in, shape_out = list(_shape(first)), list(_shape(node))
        if bd is None:
            return None
        before = math.prod(shape_in[:bd])
        for j, size in enumerate(shape_out):  # the axis survives where the elements before it agree
            if size == shape_in[bd] and math.prod(shape_out[:j]) == before:
                return j
        return None  # merged with other dims: stop following rather than guess
    if t is aten.unsqueeze.default and bd is not None:
        return bd + 1 if node.args[1] % nd <= bd else bd
    # elementwise and broadcasting ops: align from the right
    out = None
    for a, b in ins.items():
        aligned = nd - (_ndim(a) - b) if nd is not None and _ndim(a) is not None else None
        if out is not None and aligned is not None and aligned != out:
            raise _Coupling("it combines tensors whose batch dimensions do not line up")
        out = aligned if out is None else out
    return out


def lost_batch_axis() -> ValueError:
    """The error for a coordinate-dependent coefficient when the points' output axis is unknown."""
    return ValueError(
        "a coordinate-dependent coefficient needs to know which output axis holds the "
        "collocation points, and the batch analysis lost track of it (a reshape merged it): "
        "keep the points' axis separate in the model's output"
    )


def analyse_batch_axis(
    gm: torch.fx.GraphModule, coord: str, lost: list | None = None
) -> int | None:
    """Follow the batch axis through the graph; raise where an op would mix the rows.

    Conservative where it knows an op (it may refuse a graph whose rows stay
    independent, e.g. a reduction whose result only feeds a shape), and blind to ops
    it does not know: :func:`check_batch_independence` decides with an exact probe.

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


def _probe_inputs(gm, inputs, index, generator):
    """Perturbed copies: random points near the given ones, parameters off exact zeros."""
    out = []
    for node, t in zip([n for n in gm.graph.nodes if n.op == "placeholder"], inputs):
        t = t.detach() if isinstance(t, torch.Tensor) else t
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            noise = torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(
                t.device
            )
            if node is index:
                finite = t.isfinite()
                t = torch.where(finite, t, noise)  # NaN or inf points: any point will do
                t = t + 1e-2 * (t.abs().mean() + 1) * noise
            elif node.name.startswith("p_"):
                # a coupling term scaled by a parameter that is zero at initialisation
                # would otherwise hide until training moves it
                t = t + 0.1 * (t.abs().mean() + 1e-3) * noise
        out.append(t)
    return out


def probe_rows(gm: torch.fx.GraphModule, coord: str, inputs: list) -> tuple[str, list[int]] | None:
    """Decide exactly whether output rows depend on other input rows (forward-mode probe).

    For each bit i of the row index and each value of that bit, a random tangent on
    the rows whose bit i has that value is pushed through the graph with
    ``torch.func.jvp`` (``2 ceil(log2 B)`` tangents). Any two distinct rows differ in
    some bit, so an output entry depends on two rows iff for some bit both tangents move
    it (exact: structural zeros are exact in floating point). The output's batch axes
    are those along which every tangent stays on its own rows. The
    parameters are perturbed and the points moved slightly, so a coupling hidden by a
    zero parameter or a special point is still seen (with probability one).

    Args:
        gm: the captured graph; ``inputs``: real tensors for its placeholders, in order.
        coord: the coordinates' placeholder (batch axis 0, B rows).

    Returns:
        ``(verdict, axes)``: ``"independent"`` with the output axes of size B along which
        every row stays on its own rows; ``"coupled"`` when an entry depends on two rows
        or rows land on other rows of a batch-sized axis (a shift, a permutation);
        ``"undecided"`` when every entry depends on one row but no axis holds the B rows
        (a flattened layout: the graph analysis decides); None when the probe cannot
        run (the graph fails on real tensors, its output is not one tensor, or a
        tangent is not finite).
    """
    nodes = [n for n in gm.graph.nodes if n.op == "placeholder"]
    x_node = next(n for n in nodes if n.name == coord)
    i = nodes.index(x_node)
    generator = torch.Generator().manual_seed(0)
    try:
        real = _probe_inputs(gm, inputs, x_node, generator)
        x = real[i]
        B = x.shape[0]

        def f(xx):
            out = gm(*real[:i], xx, *real[i + 1 :])
            return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out

        rows = torch.arange(B, device=x.device)
        candidates, coupled, seen, sized = None, False, False, False
        with torch.no_grad():
            for bit in range(max(1, math.ceil(math.log2(B)))):
                hit = []
                for side in (0, 1):
                    picked = ((rows >> bit) & 1) == side
                    mask = picked.reshape([B] + [1] * (x.dim() - 1)).to(x.dtype)
                    v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * mask
                    _, t = torch.func.jvp(f, (x,), (v,))
                    if not isinstance(t, torch.Tensor) or not t.isfinite().all():
                        return None  # not one tensor, or 0 * inf somewhere: no exact verdict
                    if candidates is None:
                        candidates = [a for a in range(t.dim()) if t.shape[a] == B]
                        sized = bool(candidates)
                    nonzero = t != 0
                    hit.append(nonzero)
                    candidates = [a for a in candidates if not nonzero.movedim(a, 0)[~picked].any()]
                # an output entry moved by rows on both sides of a bit depends on two rows
                coupled = coupled or bool((hit[0] & hit[1]).any())
                seen = seen or bool(hit[0].any() or hit[1].any())
    except Exception:  # noqa: BLE001 - the probe is a second opinion; the analysis stands
        return None
    if not seen or candidates:  # nothing varies, or an axis keeps every row on its own
        return "independent", candidates or []
    if coupled or sized:  # an entry moved by two rows, or rows moved to other rows (a shift)
        return "coupled", []
    return "undecided", []  # one row per entry, but no axis of B rows: a flattened layout


def check_batch_independence(
    gm: torch.fx.GraphModule, coord: str, probe_inputs: list | None = None
) -> int | None:
    """Raise if the graph lets output row b depend on input rows other than b.

    The decision is exact when ``probe_inputs`` are given (:func:`probe_rows`): no
    refusal of a model whose rows are independent, whatever ops it uses (a reshape
    round trip, ``torch.func.grad`` of a sum over the batch inside the forward). The
    graph analysis (:func:`analyse_batch_axis`) names the culprit op, node and source
    line when the rows are coupled; where it accepts a graph of ops it follows exactly
    (:func:`followed_exactly`: an MLP, a ResNet, most PINN nets) its verdict stands and
    the probe is skipped.

    Args:
        gm: a captured graph (``meta["val"]`` on every node).
        coord: the name of the coordinates' placeholder (batch axis 0).
        probe_inputs: real tensors for the placeholders, or None (analysis only).

    Returns:
        the output's axis that carries the coordinates' batch axis (0 for a
        per-sample model, 1 for a DeepONet's ``(M, N)`` output), or None when
        it is unknown.

    Raises:
        BatchCouplingError: naming the op, the node, the user's source line and
            the chain of nodes from the coordinates (or, when the analysis cannot
            name an op, what the probe saw).
    """
    lost: list = []
    try:
        axis, refusal = analyse_batch_axis(gm, coord, lost), None
    except BatchCouplingError as e:
        axis, refusal = None, e
    if refusal is None and followed_exactly(gm, coord, axis, lost):
        return axis  # the probe would only confirm it (and costs 2 log2 B evaluations)
    verdict = probe_rows(gm, coord, probe_inputs) if probe_inputs is not None else None
    if verdict is None:
        if refusal is not None:
            raise refusal
        return axis
    status, axes = verdict
    if status == "undecided":
        if refusal is not None:
            raise refusal
        return axis
    if status == "coupled":
        if refusal is not None:
            raise refusal
        raise BatchCouplingError(
            "the model mixes batch rows: a forward-mode probe found output rows that change "
            "when other input rows change (per-sample derivatives are not what this graph "
            "computes), through ops the graph analysis does not follow. Make every output "
            "row depend on its own input row only."
        )
    if axis in axes:
        return axis
    return axes[0] if axes else axis
