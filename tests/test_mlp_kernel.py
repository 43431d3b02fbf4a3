"""Whole-MLP Laplacian kernel: Triton (interpreter on CPU) vs reference vs nested autograd; the pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taylorc
from taylorc.kernels import ACTIVATIONS
from taylorc.kernels.jet_activation import triton
from taylorc.kernels.mlp_laplacian import (
    block_rows,
    mlp_laplacian_reference,
    mlp_laplacian_triton,
    pack,
)

needs_triton = pytest.mark.skipif(triton is None, reason="triton not installed")
MODULES = {
    "tanh": nn.Tanh,
    "sin": None,
    "cos": None,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "exp": None,
}


class Elementwise(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def activation(act: str) -> nn.Module:
    cls = MODULES[act]
    return cls() if cls is not None else Elementwise(getattr(torch, act))


def random_mlp(D, widths, act="tanh", out=1, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers, d = [], D
    for w in widths:
        layers += [nn.Linear(d, w), activation(act)]
        d = w
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers).to(dtype)


def packed(model):
    lins = [m for m in model if isinstance(m, nn.Linear)]
    return pack([m.weight for m in lins], [m.bias for m in lins])


def nested_laplacian(model, x):
    """(B, out) Laplacian per output component by torch.func (the oracle)."""

    def lap(xi):
        H = torch.func.jacfwd(torch.func.jacrev(model))(xi)  # (out, D, D)
        return H.diagonal(dim1=-2, dim2=-1).sum(-1)

    return torch.vmap(lap)(x)


ARCHS = [(1, [8]), (3, [20, 17]), (5, [64, 64, 64]), (16, [33, 128, 7, 9]), (2, [5] * 7)]


@needs_triton
@pytest.mark.parametrize("D,widths", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_nested_autograd(D, widths, dtype):
    model = random_mlp(D, widths, out=2, dtype=dtype, seed=D)
    B = block_rows(16, 128) + 13  # not a multiple of the tile
    x = torch.rand(B, D, dtype=dtype)
    w, b = packed(model)
    u, lap = mlp_laplacian_triton(x, w.detach(), b.detach(), "tanh")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    expected = nested_laplacian(model, x).detach()
    assert torch.allclose(lap[:, :2], expected, rtol=tol, atol=tol)
    assert torch.allclose(u[:, :2], model(x).detach(), rtol=tol, atol=tol)
    assert lap[:, 2:].abs().max() == 0  # padding stays zero


@needs_triton
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(act):
    model = random_mlp(3, [9, 11], act=act, seed=1)
    x = torch.rand(19, 3, dtype=torch.float64) - 0.5
    w, b = packed(model)
    _, lap = mlp_laplacian_triton(x, w.detach(), b.detach(), act)
    _, lap_ref = mlp_laplacian_reference(x, w.detach(), b.detach(), act)
    expected = nested_laplacian(model, x).detach()
    assert torch.allclose(lap_ref[:, :1], expected, rtol=1e-10, atol=1e-10)
    assert torch.allclose(lap, lap_ref, rtol=1e-10, atol=1e-10)


def test_op_backward_matches_nested_autograd():
    model = random_mlp(3, [7, 6])
    x = torch.rand(11, 3, dtype=torch.float64, requires_grad=True)
    w, b = packed(model)
    _, lap = torch.ops.taylorc.mlp_laplacian(x, w, b, "tanh")
    r = torch.randn(11, dtype=torch.float64)
    grads = torch.autograd.grad((lap[:, 0] * r).sum(), [x, *model.parameters()])
    expected = torch.autograd.grad(
        (nested_laplacian(model, x)[:, 0] * r).sum(), [x, *model.parameters()], allow_unused=True
    )
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e if e is not None else torch.zeros_like(g), atol=1e-10)


def test_op_passes_opcheck_and_checks_its_inputs():
    model = random_mlp(3, [7, 6])
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    w, b = (t.detach().requires_grad_() for t in packed(model))
    torch.library.opcheck(torch.ops.taylorc.mlp_laplacian.default, (x, w, b, "sin"))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        torch.ops.taylorc.mlp_laplacian(x, w, b, "relu")
    with pytest.raises(ValueError, match="D <= 16"):
        torch.ops.taylorc.mlp_laplacian(torch.rand(5, 17, dtype=torch.float64), w, b, "tanh")


def compiled(model, operator="laplacian", backend="eager"):
    op = taylorc.compile(model, operator, backend=backend)
    op.lower_everywhere = True  # the kernels otherwise lower on CUDA only
    return op


def kernel_calls(op, x):
    gm = op.graph_for(x)[0]
    gm = getattr(gm, "_orig_mod", gm)
    names = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes]
    return names.count("collapsed_laplacian"), sum(
        "jet_linear" in n or "jet_activation" in n for n in names
    )


@pytest.mark.parametrize(
    "D,widths,backend", [(*a, "eager") for a in ARCHS[:3]] + [(3, [9], "taylorc")]
)
def test_pass_lowers_a_whole_mlp_and_trains(D, widths, backend):
    model = random_mlp(D, widths, seed=2)
    x = torch.rand(23, D, dtype=torch.float64)
    op = compiled(model, backend=backend)
    assert kernel_calls(op, x) == (1, 0)
    assert torch.allclose(op(x), nested_laplacian(model, x), atol=1e-10)
    op(x).pow(2).mean().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nested_laplacian(model, x).pow(2).mean().backward()
    for g, p in zip(got, model.parameters()):
        assert torch.allclose(g, p.grad if p.grad is not None else torch.zeros_like(g), atol=1e-10)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.c(h + torch.tanh(self.b(h)))


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.c(torch.sin(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize(
    "model,operator,D",
    [
        (random_mlp(17, [8]), "laplacian", 17),  # D beyond the kernel
        (random_mlp(3, [129]), "laplacian", 3),  # width beyond the kernel
        (random_mlp(3, [8] * 8), "laplacian", 3),  # 9 linear layers
        (random_mlp(2, [8]), "u_xx", 2),  # a partial Laplacian
        (random_mlp(2, [8]), "biharmonic", 2),
        (Residual().double(), "laplacian", 3),
        (Mixed().double(), "laplacian", 3),
    ],
)
def test_pass_falls_back_to_the_layered_path(model, operator, D):
    op = taylorc.compile(model, operator, coords="x y" if D == 2 else None)
    op.lower_everywhere = True
    x = torch.rand(9, D, dtype=torch.float64)
    whole, layered = kernel_calls(op, x)
    assert whole == 0 and layered > 0
    ref = taylorc.compile(model, operator, method="nested", coords="x y" if D == 2 else None)(x)
    assert torch.allclose(op(x), ref, atol=1e-8)


@pytest.mark.skipif(torch.get_default_device().type != "cpu", reason="CPU default")
def test_pass_is_off_on_cpu_by_default():
    model = random_mlp(3, [8])
    op = taylorc.compile(model, "laplacian", backend="taylorc")
    assert kernel_calls(op, torch.rand(4, 3, dtype=torch.float64)) == (0, 0)
