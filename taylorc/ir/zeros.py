"""The one known-zero analysis: which nodes of a graph are zero by construction.

Read from the op facts (:mod:`taylorc.ir.facts`): a zero maker is zero; a zero
operand makes a product zero (``zero_if="any"``), an op linear in its first operand
zero (``"first"``: views, reductions, ``neg``, quotients), a concatenation of zeros
zero (``"all"``); a sum or difference of two zeros is zero. The zeros come from the
input jet (its coefficients of order >= 2 vanish: the input moves on a straight line)
and from what the collapse makes of them. The cleanup pass prunes them
(:func:`taylorc.passes.cleanup.prune_zeros`); the linear layers mark them as zero inputs
(:func:`taylorc.passes.layers.find_layers`).
"""

from __future__ import annotations

import torch
import torch.fx

from .facts import having, valued

aten = torch.ops.aten

ZERO_MAKERS = having("zero_maker")
# zero if ANY tensor operand is zero / if the FIRST operand is zero / if ALL are zero
_ZERO_IF = valued("zero_if")
ABSORBING = {op for op, how in _ZERO_IF.items() if how == "any"}
LINEAR_IN_FIRST = {op for op, how in _ZERO_IF.items() if how == "first"}
ALL_ZERO = {op for op, how in _ZERO_IF.items() if how == "all"}
SUMS = (aten.add.Tensor, aten.sub.Tensor)


def zero_by_facts(node: torch.fx.Node, zero: set) -> bool:
    """Whether the ``call_function`` node ``node`` is zero when the nodes in ``zero`` are."""
    t, ins = node.target, node.all_input_nodes
    if t in ZERO_MAKERS:
        return True
    if t in ABSORBING:
        return any(a in zero for a in ins)
    if t in LINEAR_IN_FIRST:
        return bool(node.args) and node.args[0] in zero
    if t in ALL_ZERO:
        return bool(ins) and all(a in zero for a in ins)
    return t in SUMS and len(node.args) >= 2 and node.args[0] in zero and node.args[1] in zero


def known_zeros(graph: torch.fx.Graph, exclude=frozenset()) -> set[torch.fx.Node]:
    """The nodes of ``graph`` that are zero by construction, in one pass in graph order.

    Args:
        exclude: nodes never taken as zero (what an in-place op may write: a zeros
            tensor written through a view is not zero).
    """
    zero: set[torch.fx.Node] = set()
    for n in graph.nodes:
        if n.op == "call_function" and n not in exclude and zero_by_facts(n, zero):
            zero.add(n)
    return zero


def known_zero(node: torch.fx.Node | None) -> bool:
    """Whether one node is zero by construction (None, a coefficient never made: yes)."""
    return node is None or node in known_zeros(node.graph)
