"""One graph for every batch size: the batch size made symbolic by comparing two builds.

A graph built on fake tensors holds the batch size B as plain integers (``view(h,
[B, 64])``, ``expand(v, [R, B, D])``, ``new_zeros([R, B, W])``). :func:`generalize`
takes the same pipeline's graphs built at two batch sizes ``B0 != B1`` and accepts
them only when they are the same graph node for node, except for integer arguments
``n`` that equal ``a * B0`` in the first and ``a * B1`` in the second (a positive
integer ``a``); every other difference -- a node, a target, a float or tensor
constant, a buffer, an integer that moved otherwise -- means the graph depends on
the batch size in a way this does not express, and the answer is None with the
reason. The accepted graph reads ``B = x.size(0)`` once (``aten.sym_size.int``) and
computes ``a * B`` where it held ``a * B0``, so it runs at any batch size of at
least 2 (B = 0 and 1 are specialised everywhere in PyTorch, and keep graphs of their
own) and compiles once under ``torch.compile`` with the batch dimension marked
dynamic.

What two builds cannot see is a model whose Python code branches on the batch size
and computes a different per-point function on each branch; a per-sample operator
is assumed not to (chunking a large batch computes the same function).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx
from torch.fx.node import map_aggregate

from .. import ir


class _Differs(Exception):
    pass


class _BatchInt:
    """``a * B`` in an argument, before the size nodes exist."""

    def __init__(self, a: int):
        self.a = a


def _merge(u, v, b0: int, b1: int, pos0: dict, pos1: dict):
    """The argument of the generalized graph for ``u`` (first build) and ``v`` (second)."""
    if isinstance(u, torch.fx.Node) or isinstance(v, torch.fx.Node):
        if not (isinstance(u, torch.fx.Node) and isinstance(v, torch.fx.Node)):
            raise _Differs("a node argument against a constant")
        if pos0[u] != pos1[v]:
            raise _Differs(f"node '{u.name}' reads different inputs")
        return u
    if isinstance(u, bool) or isinstance(v, bool):
        if u is not v:
            raise _Differs(f"flag {u!r} against {v!r}")
        return u
    if isinstance(u, int) and isinstance(v, int):
        if u == v:
            return u
        if u > 0 and u % b0 == 0 and (u // b0) * b1 == v:
            return _BatchInt(u // b0)
        raise _Differs(f"integer {u} at B={b0} became {v} at B={b1} (not a multiple of B)")
    if isinstance(u, float) and isinstance(v, float):
        if u == v or (math.isnan(u) and math.isnan(v)):
            return u
        raise _Differs(f"constant {u!r} at B={b0} became {v!r} at B={b1}")
    if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
        if len(u) != len(v) or isinstance(u, tuple) != isinstance(v, tuple):
            raise _Differs(f"argument lists {u!r} and {v!r} differ")
        out = [_merge(a, b, b0, b1, pos0, pos1) for a, b in zip(u, v)]
        return tuple(out) if isinstance(u, tuple) else out
    if isinstance(u, dict) and isinstance(v, dict):
        if u.keys() != v.keys():
            raise _Differs("keyword arguments differ")
        return {k: _merge(u[k], v[k], b0, b1, pos0, pos1) for k in u}
    if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
        if not _same_tensor(u, v):
            raise _Differs("a tensor constant differs")
        return u
    if type(u) is not type(v) or u != v:
        raise _Differs(f"argument {u!r} at B={b0} became {v!r} at B={b1}")
    return u


def _same_tensor(u, v) -> bool:
    if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)):
        return False
    if u.shape != v.shape or u.dtype != v.dtype:
        return False
    if torch.equal(u, v):
        return True
    return (
        u.is_floating_point()
        and torch.equal(u.isnan(), v.isnan())
        and torch.equal(u.nan_to_num(), v.nan_to_num())
    )


def _attribute(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check_attribute(g0, g1, target: str) -> None:
    a, b = _attribute(g0, target), _attribute(g1, target)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not _same_tensor(a, b):
            raise _Differs(f"constant '{target}' differs")
    elif type(a) is not type(b):
        raise _Differs(f"submodule '{target}' differs")
    elif isinstance(a, torch.nn.Module):
        for (n, p), (m, q) in zip(a.state_dict().items(), b.state_dict().items()):
            if n != m or not _same_tensor(p, q):
                raise _Differs(f"submodule '{target}' holds different tensors")


def generalize(
    g0: torch.fx.GraphModule, g1: torch.fx.GraphModule, b0: int, b1: int, coord: int
) -> tuple[torch.fx.GraphModule | None, str]:
    """Make ``g0`` (built at batch size b0) run at any batch size >= 2, if ``g1`` proves it may.

    Args:
        g0, g1: the same pipeline's graphs for coordinates of ``b0`` and ``b1`` rows
            (``b0 != b1``, both >= 2), the coordinates being placeholder number ``coord``.

    Returns:
        ``(g0 rewritten in place, "")`` when the graphs differ only by integer
        arguments ``a * b0`` -> ``a * b1``; ``(None, reason)`` otherwise (g0 untouched).

    Raises:
        ValueError: ``b0 == b1`` or either below 2.
    """
    if b0 == b1 or min(b0, b1) < 2:
        raise ValueError(f"two distinct batch sizes >= 2 are needed, got {b0} and {b1}")
    n0, n1 = list(g0.graph.nodes), list(g1.graph.nodes)
    if len(n0) != len(n1):
        return None, f"the graph has {len(n0)} nodes at B={b0} and {len(n1)} at B={b1}"
    for g, b in ((g0, b0), (g1, b1)):  # the size is read off the right input
        xs = [n for n in g.graph.nodes if n.op == "placeholder"]
        val = xs[coord].meta.get("val") if coord < len(xs) else None
        if not isinstance(val, torch.Tensor) or val.dim() == 0 or val.shape[0] != b:
            return None, f"input {coord} of the graph does not hold the {b} points"
    pos0 = {n: k for k, n in enumerate(n0)}
    pos1 = {n: k for k, n in enumerate(n1)}
    merged = []
    try:
        for u, v in zip(n0, n1):
            if u.op != v.op or u.target != v.target:
                raise _Differs(f"node '{u.name}' ({u.target}) became '{v.name}' ({v.target})")
            if u.op in ("get_attr", "call_module"):
                _check_attribute(g0, g1, u.target)
            merged.append(
                (
                    _merge(u.args, v.args, b0, b1, pos0, pos1),
                    _merge(u.kwargs, v.kwargs, b0, b1, pos0, pos1),
                )
            )
    except _Differs as why:
        return None, str(why)
    _rewrite(g0, merged, coord, b0)
    return g0, ""


def _rewrite(gm: torch.fx.GraphModule, merged: list, coord: int, b0: int) -> None:
    """Put ``B = x.size(0)`` and its multiples where the merged arguments hold ``_BatchInt``."""
    nodes = list(gm.graph.nodes)
    if not any(_has_batch_int(m) for m in merged):
        return
    placeholders = [n for n in nodes if n.op == "placeholder"]
    sizes: dict[int, torch.fx.Node] = {}
    tag = ir.Tag(None, 0, role="batch_size")
    with gm.graph.inserting_after(placeholders[-1]):
        size = gm.graph.call_function(torch.ops.aten.sym_size.int, (placeholders[coord], 0))
    size.meta["val"], size.meta[ir.META] = b0, tag
    sizes[1] = size

    def node_for(v):
        if not isinstance(v, _BatchInt):
            return v
        if v.a not in sizes:
            with gm.graph.inserting_after(size):
                sizes[v.a] = gm.graph.call_function(operator.mul, (size, v.a))
            sizes[v.a].meta["val"], sizes[v.a].meta[ir.META] = v.a * b0, tag
        return sizes[v.a]

    for node, (args, kwargs) in zip(nodes, merged):
        if _has_batch_int((args, kwargs)):
            node.args = map_aggregate(args, node_for)
            node.kwargs = map_aggregate(kwargs, node_for)
    gm.graph.lint()
    gm.recompile()


def _has_batch_int(value) -> bool:
    found = []
    map_aggregate(value, lambda v: found.append(v) if isinstance(v, _BatchInt) else None)
    return bool(found)


__all__ = ["generalize"]
