"""Rewrites that keep tags and the graph description: :func:`replace`, :func:`cse`,
:func:`dce`, :func:`forget_dead`.

Passes that replace nodes go through :func:`replace` (it keeps tags and updates
every reference of the description) and delete dead nodes with :func:`dce`.
"""

from __future__ import annotations

import torch.fx
from torch.utils._pytree import tree_flatten

from .schema import info, set_tag, tag_of


def replace(gm: torch.fx.GraphModule, old: torch.fx.Node, new: torch.fx.Node) -> None:
    """Replace every use of ``old`` by ``new``, keeping tags and the graph description.

    ``new`` inherits ``old``'s tag when it has none, and every reference of the
    description to ``old`` now names ``new``. ``old`` is left in the graph (dead:
    :func:`dce` or the caller erases it).
    """
    tag = tag_of(old)
    if tag is not None and tag_of(new) is None:
        set_tag(new, tag)
    old.replace_all_uses_with(new)
    description = info(gm)
    if description is not None:
        description.remap(lambda n: new if n is old else n)


def dce(gm: torch.fx.GraphModule) -> None:
    """Dead-code elimination that also drops the description's references to erased nodes."""
    gm.graph.eliminate_dead_code()
    forget_dead(gm)


def forget_dead(gm: torch.fx.GraphModule) -> None:
    """Drop the references of the description to nodes no longer in the graph."""
    description = info(gm)
    if description is None:
        return
    alive = set(gm.graph.nodes)
    description.remap(lambda n: n if n in alive else None)


_RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "randperm", "normal"}
_RANDOM |= {"bernoulli", "dropout", "native_dropout", "multinomial", "poisson"}


def cse(gm: torch.fx.GraphModule, keep=frozenset()) -> int:
    """Common-subexpression elimination in place, through :func:`replace`; returns the count.

    Two ``call_function``/``call_module`` nodes with the same target and the same
    arguments (after earlier merges) are merged into the first; random ops never are.
    Nodes in ``keep`` are neither merged away nor merged into (a node whose gradient
    is read must keep exactly its own users). The graph must be functional
    (taylorc's graphs are).
    """
    seen: dict = {}
    merged = 0
    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_module") or n in keep:
            continue
        packet = getattr(n.target, "overloadpacket", None)
        if packet is not None and packet.__name__ in _RANDOM:
            continue
        args, spec = tree_flatten((n.args, n.kwargs))
        key = (n.op, n.target, spec, tuple((type(a), a) for a in args))
        try:
            first = seen.setdefault(key, n)
        except TypeError:  # an unhashable literal: leave the node alone
            continue
        if first is not n:
            replace(gm, n, first)
            gm.graph.erase_node(n)
            merged += 1
    return merged
