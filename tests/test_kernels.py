"""Fused Taylor kernels: Triton vs reference vs nested autograd; the lowering pass; the backend."""

from __future__ import annotations

import math

import pytest
import torch

import taylorc
from taylorc.kernels import ACTIVATIONS, jet_activation, jet_activation_reference
from taylorc.kernels.jet_activation import derivatives, jet_activation_triton, triton

DT = torch.float64
needs_triton = pytest.mark.skipif(triton is None, reason="triton not installed")


def inputs(K, collapsed, R=3, N=1000 + 37, dtype=DT, seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    x0 = torch.randn(N, generator=g, dtype=dtype)
    xs = [torch.randn(R, N, generator=g, dtype=dtype) for _ in range(K - collapsed)]
    top = torch.randn(N, generator=g, dtype=dtype) if collapsed else None
    w = torch.rand(R, generator=g, dtype=dtype) if collapsed else None
    return x0, xs, top, w


def flat(out):
    y0, ys, ytop = out
    return [y0, *ys] + ([ytop] if ytop is not None and ytop.numel() else [])


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_derivative_tables_match_autograd(act):
    x = torch.linspace(-2.5, 2.5, 41, dtype=DT)
    fn = {
        "tanh": torch.tanh,
        "sin": torch.sin,
        "cos": torch.cos,
        "sigmoid": torch.sigmoid,
        "silu": torch.nn.functional.silu,
        "softplus": torch.nn.functional.softplus,
        "gelu": torch.nn.functional.gelu,
        "exp": torch.exp,
    }[act]
    g = lambda v: fn(v)  # noqa: E731
    expected = [fn(x)]
    for _ in range(4):
        g = torch.func.grad(g if g is not fn else fn)
        expected.append(torch.vmap(g)(x))
        g = (lambda h: lambda v: h(v))(g)
    for k, (a, b) in enumerate(zip(derivatives(act, x, 4), expected)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{act} order {k}")


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_reference_is_the_taylor_expansion(act, K):
    """y_k = d^k/dt^k act(x(t)) for the curve x(t) = sum_k x_k t^k / k! (nested jvp)."""
    x0, xs, _, _ = inputs(K, False, R=2, N=7)
    y0, ys, _ = jet_activation_reference(x0, xs, None, None, act)
    fn = lambda t: derivatives(
        act, x0 + sum(xk * t**k / math.factorial(k) for k, xk in enumerate(xs, 1)), 0
    )[0]  # noqa: E731
    d = fn
    for k in range(1, K + 1):
        d = (lambda h: lambda t: torch.func.jvp(h, (t,), (torch.ones_like(t),))[1])(d)
        torch.testing.assert_close(
            ys[k - 1], d(torch.zeros(2, 1, dtype=DT)).expand(2, 7), rtol=1e-9, atol=1e-11
        )


@needs_triton
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_reference(act, dtype):
    for K in (1, 2, 3, 4):
        for collapsed in (False, True):
            if collapsed and K == 1:
                continue
            for R, N in ((1, 5), (3, 1000 + 37)):  # masking: N not a multiple of the block
                args = inputs(K, collapsed, R=R, N=N, dtype=dtype)
                ref = flat(jet_activation_reference(*args, act))
                got = flat(jet_activation_triton(*args, act))
                tol = 1e-12 if dtype == DT else 2e-5
                for a, b in zip(ref, got):
                    torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("collapsed", [False, True])
def test_op_backward_matches_reference_backward(collapsed):
    x0, xs, top, w = inputs(3, collapsed, R=2, N=9)
    leaves = [t.requires_grad_() for t in [x0, *xs] + ([top, w] if collapsed else [])]
    out = flat(jet_activation(x0, xs, top, w, "tanh"))
    ref = flat(jet_activation_reference(x0, xs, top, w, "tanh"))
    cot = [torch.randn_like(o) for o in out]
    a = torch.autograd.grad(out, leaves, cot)
    b = torch.autograd.grad(ref, leaves, cot)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)


def test_op_passes_opcheck():
    x0, xs, top, w = inputs(2, True, R=2, N=6)
    for t in [x0, *xs, top, w]:
        t.requires_grad_()
    torch.library.opcheck(torch.ops.taylorc.jet_activation.default, (x0, xs, top, w, "silu"))
    torch.library.opcheck(torch.ops.taylorc.jet_activation.default, (x0, xs, None, None, "gelu"))


def count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target is target)


@pytest.mark.parametrize("act", [torch.nn.Tanh, torch.nn.SiLU, torch.nn.GELU, torch.nn.Sigmoid])
@pytest.mark.parametrize(
    "spec", ["laplacian", "biharmonic", {"u": "u", "u_t": "u_t", "u_xx": "u_xx"}]
)
def test_lowering_replaces_activation_steps(act, spec):
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(3, 7), act(), torch.nn.Linear(7, 5), act(), torch.nn.Linear(5, 1)
    ).to(DT)
    x = torch.rand(11, 3, dtype=DT)
    kw = dict(coords="x y t") if isinstance(spec, dict) else {}
    ref = taylorc.compile(m, spec, method="nested", **kw)(x)
    for method in ("collapsed", "taylor"):
        op = taylorc.compile(m, spec, method=method, **kw)
        op.lower_everywhere = True
        op.whole_mlp = False  # the layered lowering (tests/test_mlp_kernel.py: the whole MLP)
        out = op(x)
        gm = op.graph_for(x, (x,), method)[0]
        # first layer: the elementwise step (its directions need no GEMM); second: fused
        assert count(gm, torch.ops.taylorc.jet_activation.default) == 1
        assert count(gm, torch.ops.taylorc.jet_linear_activation.default) == 1
        left = [
            torch.ops.aten.tanh.default,
            torch.ops.aten.sigmoid.default,
            torch.ops.aten.gelu.default,
        ]
        assert sum(count(gm, t) for t in left) == 0
        outs, refs = (out, ref) if isinstance(out, dict) else ({"o": out}, {"o": ref})
        for k in refs:
            torch.testing.assert_close(outs[k], refs[k], rtol=1e-10, atol=1e-12)
    # training through the lowered graph
    grads = torch.autograd.grad(
        sum(v.pow(2).sum() for v in outs.values()), list(m.parameters()), allow_unused=True
    )
    refg = torch.autograd.grad(
        sum(v.pow(2).sum() for v in refs.values()), list(m.parameters()), allow_unused=True
    )
    for a, b in zip(grads, refg):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(torch.get_default_device().type != "cpu", reason="CPU default")
def test_lowering_is_off_on_cpu_by_default():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(DT)
    x = torch.rand(5, 3, dtype=DT)
    op = taylorc.compile(m, "laplacian")
    op(x)
    assert count(op.graph_for(x)[0], torch.ops.taylorc.jet_activation.default) == 0


def test_torch_compile_backend_by_name_matches_eager():
    from importlib.metadata import entry_points

    assert any(e.name == "taylorc" for e in entry_points(group="torch_dynamo_backends"))
    torch._dynamo.reset()

    def f(x, w):
        h = torch.tanh(x @ w)
        return (h * h + torch.tanh(x @ w)).sum(-1)

    x, w = torch.randn(8, 3, dtype=DT), torch.randn(3, 4, dtype=DT)
    torch.testing.assert_close(torch.compile(f, backend="taylorc")(x, w), f(x, w))


@needs_triton
@pytest.mark.parametrize("act", ["tanh", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_linear_matches_reference(act, dtype):
    from taylorc.kernels.jet_linear import (
        jet_linear_activation_reference,
        jet_linear_activation_triton,
    )

    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    B, IN, OUT, R = 37, 19, 45, 2  # odd sizes: masking in every tile dimension
    for K, collapsed in ((2, True), (4, False), (3, True)):
        x0 = torch.randn(B, IN, generator=g, dtype=dtype)
        xs = [torch.randn(R, B, IN, generator=g, dtype=dtype) for _ in range(K - collapsed)]
        top = torch.randn(B, IN, generator=g, dtype=dtype) if collapsed else None
        W = torch.randn(OUT, IN, generator=g, dtype=dtype) / IN**0.5
        b = torch.randn(OUT, generator=g, dtype=dtype)
        w = torch.rand(R, generator=g, dtype=dtype) if collapsed else None
        ref = flat(jet_linear_activation_reference(x0, xs, top, W, b, w, act))
        got = flat(jet_linear_activation_triton(x0, xs, top, W, b, w, act, blocks=(16, 16, 16)))
        tol = 1e-11 if dtype == DT else 1e-4
        for a, c in zip(ref, got):
            torch.testing.assert_close(c, a, rtol=tol, atol=tol)


def test_fused_linear_op_backward_and_opcheck():
    from taylorc.kernels.jet_linear import jet_linear_activation, jet_linear_activation_reference

    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    x0 = torch.randn(5, 4, generator=g, dtype=DT)
    xs = [torch.randn(2, 5, 4, generator=g, dtype=DT)]
    top = torch.randn(5, 4, generator=g, dtype=DT)
    W, b = torch.randn(3, 4, generator=g, dtype=DT), torch.randn(3, generator=g, dtype=DT)
    leaves = [t.requires_grad_() for t in [x0, *xs, top, W, b]]
    out = flat(jet_linear_activation(x0, xs, top, W, b, None, "tanh"))
    ref = flat(jet_linear_activation_reference(x0, xs, top, W, b, None, "tanh"))
    cot = [torch.randn_like(o) for o in out]
    for p, q in zip(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(ref, leaves, cot)):
        torch.testing.assert_close(p, q)
    torch.library.opcheck(
        torch.ops.taylorc.jet_linear_activation.default, (x0, xs, top, W, b, None, "tanh")
    )


def hand_written_step(x0, x1, top, W):
    """A collapsed Laplacian step of tanh written by hand (not by taylorc), then a linear layer."""
    t = torch.tanh(x0)
    d1 = 1 - t * t
    y1 = d1 * x1
    ytop = d1 * top + (-2 * t * d1 * x1 * x1).sum(0)
    return t @ W, y1 @ W, ytop @ W


def step_inputs():
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    shapes = [(5, 8), (3, 5, 8), (5, 8), (8, 2)]
    return [torch.randn(*s, generator=g, dtype=DT) for s in shapes]


def test_structural_lowering_of_a_foreign_graph():
    from torch.fx.experimental.proxy_tensor import make_fx

    from taylorc.passes.lower import lower_structural

    args = step_inputs()
    gm = make_fx(hand_written_step)(*args)
    assert lower_structural(gm) == 1
    assert count(gm, torch.ops.taylorc.jet_activation.default) == 1
    assert count(gm, torch.ops.aten.tanh.default) == 0
    for a, b in zip(gm(*args), hand_written_step(*args)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # an algebraically equal step in another form is left alone
    other = make_fx(lambda x0, x1: (1 - torch.tanh(x0) ** 2) * x1)(args[0], args[1])
    assert lower_structural(other) == 0


def test_backend_lowers_foreign_steps_and_trains(monkeypatch, caplog):
    import taylorc.runtime.backend

    monkeypatch.setattr(taylorc.runtime.config.CONFIG, "lower_everywhere", True)
    torch._dynamo.reset()
    args = step_inputs()
    args[3].requires_grad_(True)
    with caplog.at_level("INFO", logger="taylorc.runtime.backend"):
        out = torch.compile(hand_written_step, backend="taylorc")(*args)
    assert "1 Taylor step(s) lowered" in caplog.text
    ref = hand_written_step(*args)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(sum(o.sum() for o in out), args[3])
    (g_ref,) = torch.autograd.grad(sum(o.sum() for o in ref), args[3])
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
