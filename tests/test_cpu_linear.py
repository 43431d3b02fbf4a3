"""The CPU linear pass (``taylorc/passes/cpu_linear.py``): oneDNN's linear for wide float32
layer products, with its own derivative."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import taylorc
from taylorc.passes.cpu_linear import MIN_WIDTH, onednn_available, rewrite_linear

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 130), (3, 5, 130)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_op_is_linear_and_its_gradient_is_linears(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(140, 130, requires_grad=True)
    b = torch.randn(140, requires_grad=True) if bias else None
    got = torch.ops.taylorc.linear_onednn(x, w, b)
    want = torch.nn.functional.linear(x, w, b)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    g = torch.randn_like(want)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(got, leaves, g)
    refs = torch.autograd.grad(want, leaves, g)
    for a, r in zip(grads, refs):
        assert torch.allclose(a, r, atol=1e-3, rtol=1e-4)


def test_the_gradient_formula_in_float64():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.taylorc.linear_onednn, (x, w, b))


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    )


@needs_onednn
@pytest.mark.parametrize("width, rewritten", [(MIN_WIDTH, True), (64, False)])
def test_wide_products_of_a_taylor_graph_are_rewritten_and_agree(width, rewritten):
    torch.manual_seed(2)
    model, x = mlp(width), torch.randn(16, 3)
    op = taylorc.compile(model, "laplacian", backend="eager")
    op.config.whole_mlp = False
    gm = op.graph_for(x)[0]
    inputs = op.graph_for(x)[1].inputs(model, x)
    want = gm(*inputs)[0]
    count = rewrite_linear(gm)
    assert (count > 0) == rewritten
    assert torch.allclose(gm(*inputs)[0], want, atol=1e-5, rtol=1e-4)


@needs_onednn
def test_the_default_path_compiles_with_the_op_and_trains(monkeypatch):
    torch.manual_seed(3)
    model, x = mlp(MIN_WIDTH), torch.randn(32, 3)
    reference = copy.deepcopy(model)
    op = taylorc.compile(model, "laplacian")
    op.config.auto_compile_after, op.config.background_compile = 0, False
    op.config.whole_mlp = False  # the layered graph, compiled
    out = op(x)
    graph = next(iter(op._graphs.values()))[0]
    assert graph.compiled is not None and graph.failed is None
    targets = [n.target for n in graph.compiled._orig_mod.graph.nodes]
    assert torch.ops.taylorc.linear_onednn.default in targets
    ref_op = taylorc.compile(reference, "laplacian", backend="eager")
    want = ref_op(x)
    assert torch.allclose(out, want, atol=1e-5, rtol=1e-4)
    out.pow(2).mean().backward()
    want.pow(2).mean().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        if q.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-3)
