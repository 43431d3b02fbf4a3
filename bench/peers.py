"""Adapters for the peer libraries the benchmarks compare against (each optional).

torch-jet (``jet-for-pytorch`` 1.0) declares Python >= 3.12; on 3.11 it installs with
``pip install --no-deps --ignore-requires-python jet-for-pytorch==1.0.0`` once the
single PEP 695 alias in ``jet/utils.py`` (``type PyTree[Leaf] = ...``, typing only)
is replaced by a class whose ``__class_getitem__`` returns ``Any``. Nothing of it is
committed here.
"""

from __future__ import annotations


def jet_operator(operator: str, model, x):
    """torch-jet's collapsed ``"laplacian"`` or ``"biharmonic"`` of ``model`` at every row of
    ``x``: a callable ``x -> (B,)``, or None when jet is not importable.

    Built as jet's own benchmark does: ``jet.laplacian`` / ``jet.bilaplacian`` on one
    datum, captured to an fx graph with common subexpressions eliminated, then
    ``torch.vmap`` over the batch.
    """
    try:
        import jet
    except ImportError:
        return None
    import torch

    transform = {"laplacian": jet.laplacian, "biharmonic": jet.bilaplacian}[operator]
    graph, _ = jet.capture_graph(transform(model, (x[0],)), (x[0],))
    jet.common_subexpression_elimination(graph.graph)
    graph.recompile()
    batched = torch.vmap(graph)
    return lambda x: batched(x).reshape(-1)
