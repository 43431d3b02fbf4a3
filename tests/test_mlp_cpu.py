"""The CPU whole-MLP kernel (``taylorc/kernels/mlp_laplacian_cpu.c``) and its use by calls
without autograd, against nested autograd in float64 (torch.func)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

import taylorc
from taylorc.kernels import mlp_laplacian_cpu as cpu_kernel
from taylorc.kernels.mlp_laplacian import pack

built = pytest.mark.skipif(
    cpu_kernel.library(64) is None, reason="no working C compiler: the kernel is not built"
)


def mlp(D: int, widths: list[int], bias: bool = True, act=nn.Tanh) -> nn.Sequential:
    layers, d = [], D
    for i, w in enumerate(widths):
        layers.append(nn.Linear(d, w, bias=bias))
        if i < len(widths) - 1:
            layers.append(act())
        d = w
    return nn.Sequential(*layers)


def nested_laplacian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, out) Laplacian of every output, float64, by torch.func Hessians."""
    m64 = copy.deepcopy(model).double()

    def lap(xi):
        hess = torch.func.hessian(lambda z: m64(z[None])[0])(xi)  # (out, D, D)
        return hess.diagonal(dim1=-2, dim2=-1).sum(-1)

    return torch.vmap(lap)(x.double())


CASES = [  # D, widths (the last is the output), B: tiles of 16 points with remainders
    (3, [20, 20, 2], 17),
    (5, [64, 64, 64, 1], 333),
    (1, [16, 1], 5),
    (16, [100, 100, 3], 40),
    (4, [32, 32, 32, 32, 1], 1),
]


TOL = {torch.float32: 2e-6, torch.float64: 1e-13}  # of the largest |Laplacian|


@built
@pytest.mark.parametrize("D, widths, B", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_nested_autograd_in_float64(D, widths, B, bias, dtype):
    torch.manual_seed(D + B)
    model = mlp(D, widths, bias).to(dtype)
    x = torch.randn(B, D, dtype=dtype)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        w, b = pack([m.weight for m in lins], [m.bias for m in lins])
        u, lap = cpu_kernel.mlp_laplacian_cpu(x, w, b, "tanh")
        value = model(x)
    out = widths[-1]
    ref = nested_laplacian(model, x)
    scale = ref.abs().max().item()
    assert (lap[:, :out].double() - ref).abs().max().item() <= TOL[dtype] * scale
    assert torch.allclose(u[:, :out], value, atol=TOL[dtype], rtol=TOL[dtype] * 10)
    assert not lap[:, out:].any() and not u[:, out:].any()  # the padding stays zero


@built
def test_calls_without_autograd_take_the_kernel_and_agree_with_the_graph(monkeypatch):
    torch.manual_seed(0)
    model, x = mlp(5, [64, 64, 64, 1]), torch.randn(333, 5)
    op = taylorc.compile(model, "laplacian")
    calls = []
    run = cpu_kernel.mlp_laplacian_cpu
    monkeypatch.setattr(
        sys.modules["taylorc.kernels.mlp_laplacian"],  # the package's name is the op
        "mlp_laplacian_cpu",
        lambda *a: calls.append(1) or run(*a),
    )
    trained = op(x)  # parameters require grad: the layered graph, differentiable
    assert trained.requires_grad and not calls
    with torch.no_grad():
        evaluated = op(x)
    assert calls, "a call without autograd did not reach the C kernel"
    assert op.graph_for(x)[2].inference is not None
    assert "calls without autograd: the CPU whole-MLP kernel (4 layers, tanh" in op.explain()
    ref = nested_laplacian(model, x)
    scale = ref.abs().max().item()
    assert (evaluated.double() - ref).abs().max().item() <= 2e-6 * scale
    assert (trained.detach().double() - ref).abs().max().item() <= 2e-6 * scale
    trained.sum().backward()  # training calls keep their gradient
    assert all(m.weight.grad is not None for m in model if isinstance(m, nn.Linear))


@built
@pytest.mark.parametrize("what", ["float16 coordinates", "sigmoid", "second derivative in x"])
def test_graphs_the_kernel_does_not_serve_keep_the_layered_path(what):
    torch.manual_seed(1)
    model = mlp(3, [16, 16, 1], act=nn.Sigmoid if what == "sigmoid" else nn.Tanh)
    x = torch.randn(9, 3)
    spec = "laplacian"
    if what == "float16 coordinates":  # not a dtype the kernel is built for
        model, x = model.half(), x.half()
    if what == "second derivative in x":
        spec = "u_xx"
    op = taylorc.compile(model, spec, coords=None if spec == "laplacian" else "x y z")
    with torch.no_grad():
        got = op(x)
    assert op.graph_for(x)[2].inference is None
    m64 = copy.deepcopy(model).double()
    full = torch.vmap(torch.func.hessian(lambda z: m64(z[None])[0]))(x.double())
    want = full[:, 0, 0, 0] if spec != "laplacian" else full[:, 0].diagonal(0, -2, -1).sum(-1)
    tol = 3e-2 if what == "float16 coordinates" else 1e-5
    assert torch.allclose(got.double().reshape(-1), want.reshape(-1), rtol=tol, atol=tol / 10)


def test_without_a_compiler_nothing_is_built_and_the_graph_serves(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TAYLORC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_LIBS", {})
    assert cpu_kernel.library(32) is None
    torch.manual_seed(2)
    model, x = mlp(3, [32, 32, 1]), torch.randn(7, 3)
    op = taylorc.compile(model, "laplacian")
    with torch.no_grad():
        got = op(x)
    assert op.graph_for(x)[2].inference is None
    ref = nested_laplacian(model, x)
    assert (got.double() - ref).abs().max().item() <= 2e-6 * ref.abs().max().item()
    w, b = pack([m.weight for m in model if isinstance(m, nn.Linear)], [None] * 3)
    with pytest.raises(ValueError, match="working C compiler"):
        cpu_kernel.mlp_laplacian_cpu(x, w, b, "tanh")


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_coordinate_gives_nan_not_a_number(dtype):
    """tanh's range reduction clamps its argument: a NaN must not come out finite."""
    torch.manual_seed(3)
    model, x = mlp(3, [16, 16, 1]).to(dtype), torch.randn(20, 3, dtype=dtype)
    x[4, 1] = float("nan")
    x[7, 0] = float("inf")
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        w, b = pack([m.weight for m in lins], [m.bias for m in lins])
        u, lap = cpu_kernel.mlp_laplacian_cpu(x, w, b, "tanh")
        value = model(x)
    assert torch.isnan(lap[4, 0]) and torch.isnan(u[4, 0])
    assert torch.isfinite(lap[7, 0]) and torch.allclose(u[7, 0], value[7, 0], atol=1e-6)
    finite = torch.ones(20, dtype=torch.bool)
    finite[4] = False
    assert torch.isfinite(lap[finite, 0]).all()
