"""The graph IR, the bottom layer of taylorc: one node tag, one graph description, one
way to rewrite, one check, and the analyses every pass shares. It imports nothing of
taylorc but :mod:`taylorc.errors`.

* ``schema``: :class:`Tag`, :class:`GraphInfo`, the layouts, :func:`info` /
  :func:`set_info`, :func:`validate` (the invariants, checked after every pass);
* ``rewrite``: :func:`replace`, :func:`cse`, :func:`dce`, :func:`forget_dead` (rewrites
  that keep tags and the description's references);
* ``values``: :func:`carries_derivatives`, :func:`aliases`, :func:`written` (derivatives
  by dtype, alias classes and in-place writes by the ops' schemas);
* ``shapes``: :func:`annotate_shapes`, :func:`ensure_shapes` (fake-tensor propagation);
* ``facts``: the one table of op facts (zero makers, reductions, views, activations, ...);
* ``zeros``: :func:`~taylorc.ir.zeros.known_zeros`, the nodes zero by construction;
* ``stats``: node counts, FLOP and coefficient-byte estimates of a graph;
* ``batch``: the batch-axis analysis (which op couples the rows, the output's batch axis);
* ``probe``: the exact forward-mode probe of batch coupling;
* ``coupling``: :func:`~taylorc.ir.coupling.check_batch_independence`, the decision by
  the analysis where it is exact, else by the probe.

Method: Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic
Differentiation" (NeurIPS 2025).
"""

from __future__ import annotations

from . import batch, coupling, facts, probe, stats, zeros  # noqa: F401 - read as ir.<module>
from .rewrite import cse, dce, forget_dead, replace
from .schema import (
    LAYOUTS,
    META,
    GraphInfo,
    IRError,
    Tag,
    info,
    layout_of,
    set_info,
    set_tag,
    tag_new,
    tag_of,
    validate,
)
from .shapes import annotate_shapes, ensure_shapes
from .values import aliases, carries_derivatives, written

__all__ = [
    "LAYOUTS",
    "META",
    "GraphInfo",
    "IRError",
    "Tag",
    "aliases",
    "annotate_shapes",
    "carries_derivatives",
    "cse",
    "dce",
    "ensure_shapes",
    "forget_dead",
    "info",
    "layout_of",
    "replace",
    "set_info",
    "set_tag",
    "tag_new",
    "tag_of",
    "validate",
    "written",
]
