"""The batch-coupling decision: the graph analysis where its verdict is exact, else the probe.

The analysis (:mod:`taylorc.ir.batch`) names the culprit op, node and source line of a
coupling; the forward-mode probe (:mod:`taylorc.ir.probe`) decides exactly whatever ops
the graph uses. On a graph of ops the analysis follows exactly (an MLP, a ResNet, most
PINN nets) the probe is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx

from ..errors import BatchCouplingError
from .batch import FOLLOWED, analyse_batch_axis
from .probe import probe_rows

# which further ops count as pointwise (followed exactly): the caller's registry knows
Pointwise = Callable[[object], bool] | None


def followed_exactly(
    gm: torch.fx.GraphModule, coord: str, axis: int | None, lost, pointwise: Pointwise = None
) -> bool:
    """Whether the analysis's verdict is exact: every op after the coordinates is one it
    follows exactly (or one ``pointwise`` names), and it lost the axis nowhere."""
    if axis is None or lost:
        return False
    x = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == coord)
    seen = {x}
    for n in gm.graph.nodes:
        if n.op == "output" or not any(a in seen for a in n.all_input_nodes):
            continue
        seen.add(n)
        if n.target not in FOLLOWED and not (pointwise is not None and pointwise(n.target)):
            return False
    return True


def check_batch_independence(
    gm: torch.fx.GraphModule,
    coord: str,
    probe_inputs: list | None = None,
    pointwise: Pointwise = None,
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
        pointwise: ``op -> bool``, ops the analysis follows exactly beyond the op facts'
            (the rule registry's elementwise ops: :func:`taylorc.rules.define.elementwise`).

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
    if refusal is None and followed_exactly(gm, coord, axis, lost, pointwise):
        return axis  # the probe would only confirm it (and costs 2 log2 B evaluations)
    verdict = probe_rows(gm, coord, probe_inputs) if probe_inputs is not None else None
    status, axes = verdict if verdict is not None else ("undecided", [])
    if status != "independent" and refusal is not None:
        raise refusal  # the analysis names the culprit; an exact "independent" overrules it
    if status == "coupled":
        raise BatchCouplingError(
            "the model mixes batch rows: a forward-mode probe found output rows that change "
            "when other input rows change (per-sample derivatives are not what this graph "
            "computes), through ops the graph analysis does not follow. Make every output "
            "row depend on its own input row only."
        )
    if status == "undecided" or axis in axes:
        return axis
    return axes[0] if axes else axis
