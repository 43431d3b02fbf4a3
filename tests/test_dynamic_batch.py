"""Issue 17, item 3: one graph for every batch size, proved by two builds (passes/batch_size.py).

Every value is checked against nested autograd (torch.func, ``method="nested"``) at each
batch size; builds are counted with ``taylorc.api.BUILD_COUNT``.
"""

import pytest
import torch
from helpers import assert_close, mlp
from torch import nn

import taylorc
from taylorc import api
from taylorc.errors import BatchCouplingError
from taylorc.runtime.batch_size import generalize
from taylorc_contrib.models import DeepONet

SIZES = (7, 64, 1000)


def nested(model, operator, *args, **kw):
    return taylorc.compile(model, operator, method="nested", **kw)(*args)


def builds(op, calls):
    """Run ``op`` on each argument tuple; return (outputs, graphs built meanwhile)."""
    before = api.BUILD_COUNT[0]
    outs = [op(*args) for args in calls]
    return outs, api.BUILD_COUNT[0] - before


@pytest.mark.parametrize("method", ["collapsed", "taylor"])
def test_batch_sizes_share_one_graph_float64(method):
    torch.manual_seed(0)
    model = mlp(5, [16, 16])
    op = taylorc.compile(model, {"lap": "laplacian", "u": "u"}, method=method)
    xs = [torch.randn(B, 5, dtype=torch.float64) for B in SIZES]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 1 and len(op._graphs) == 1
    for x, out in zip(xs, outs):
        ref = nested(model, {"lap": "laplacian", "u": "u"}, x)
        assert out["lap"].shape == (x.shape[0], 1)
        assert_close(out["lap"], ref["lap"], 1e-10)
        assert_close(out["u"], ref["u"], 1e-12)
    assert "dynamic: one graph for every B >= 2" in op.explain()
    assert "build:" in op.explain() and "batch check" in op.explain()


def test_batch_sizes_share_one_graph_float32():
    torch.manual_seed(1)
    model = mlp(3, [32, 32]).float()
    op = taylorc.compile(model, "laplacian")
    xs = [torch.randn(B, 3) for B in SIZES]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 1
    reference = mlp(3, [32, 32])
    reference.load_state_dict(model.state_dict())
    for x, out in zip(xs, outs):
        assert out.dtype == torch.float32
        assert_close(out.double(), nested(reference, "laplacian", x.double()), 1e-5)


def test_per_sample_shape_and_dtype_changes_rebuild():
    def f(x):  # any width: sum_i sin(x_i) x_i^2
        return (torch.sin(x) * x * x).sum(-1, keepdim=True)

    op = taylorc.compile(f, "laplacian")
    before = api.BUILD_COUNT[0]
    for D, dtype in [(3, torch.float64), (4, torch.float64), (4, torch.float32)]:
        for B in (5, 9):
            x = torch.randn(B, D, dtype=dtype)
            gm, _, _ = op.graph_for(x)
            out = gm(x)[0]
            ref = nested(f, "laplacian", x.double())
            assert out.dtype == dtype
            assert_close(out.double(), ref, 1e-10 if dtype == torch.float64 else 1e-4)
    assert api.BUILD_COUNT[0] - before == 3  # one per (per-sample shape, dtype)


def test_batch_one_gets_its_own_graph():
    torch.manual_seed(2)
    model = mlp(2, [8])
    op = taylorc.compile(model, "laplacian")
    xs = [torch.randn(B, 2, dtype=torch.float64) for B in (6, 1, 1, 11)]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 2  # B >= 2 and B = 1
    for x, out in zip(xs, outs):
        assert_close(out, nested(model, "laplacian", x), 1e-10)


def test_batch_size_read_as_an_integer_becomes_symbolic():
    """``x.shape[0]`` in the model is an integer argument of the graph: generalised, exact."""

    def g(x):
        return torch.tanh(x @ torch.ones(3, 4, dtype=x.dtype)).sum(-1, keepdim=True)

    def f(x):
        return g(x.reshape(x.shape[0], -1)) / x.shape[0]

    op = taylorc.compile(f, "laplacian")
    xs = [torch.randn(B, 3, dtype=torch.float64) for B in SIZES]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 1
    for x, out in zip(xs, outs):  # nested autograd runs per point: B enters by hand
        assert_close(out, nested(g, "laplacian", x) / x.shape[0], 1e-10)


def test_batch_size_baked_into_a_float_is_specialised():
    """``1.0 / B`` is a float constant of the graph: the proof fails, every B is built."""

    def g(x):
        return torch.tanh(x).sum(-1, keepdim=True)

    def f(x):
        return g(x) * (1.0 / x.shape[0])

    op = taylorc.compile(f, "laplacian")
    xs = [torch.randn(B, 3, dtype=torch.float64) for B in (7, 64)]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 2
    for x, out in zip(xs, outs):
        assert_close(out, nested(g, "laplacian", x) / x.shape[0], 1e-10)
    assert "specialised to B=64" in op.explain()


def test_model_that_hard_codes_its_batch_size_keeps_its_graph():
    def f(x):
        return torch.tanh(x.view(6, 3)).sum(-1, keepdim=True)

    op = taylorc.compile(f, "laplacian")
    x = torch.randn(6, 3, dtype=torch.float64)
    assert_close(op(x), nested(lambda z: torch.tanh(z).sum(-1, keepdim=True), "laplacian", x))
    assert "specialised to B=6: the model fails at B=7" in op.explain()


def test_generalize_refuses_graphs_that_differ_otherwise():
    def g(B, c):
        gm = torch.fx.symbolic_trace(lambda x: (x.reshape(B, -1) * c).sum(-1))
        for n in gm.graph.nodes:  # the points' fake value, as capture records it
            if n.op == "placeholder":
                n.meta["val"] = torch.empty(B, 2, device="meta")
        return gm

    assert generalize(g(4, 2.0), g(5, 3.0), 4, 5, 0)[0] is None  # a float moved
    general, why = generalize(g(4, 2.0), g(5, 2.0), 4, 5, 0)
    assert why == "" and general is not None
    x = torch.randn(9, 2)
    torch.testing.assert_close(general(x), (x * 2.0).sum(-1))
    assert generalize(g(4, 2.0), g(5, 2.0), 5, 4, 0)[0] is None  # sizes on the wrong graphs
    with pytest.raises(ValueError):
        generalize(g(4, 2.0), g(4, 2.0), 4, 4, 0)


def test_deeponet_points_share_one_graph():
    torch.manual_seed(3)
    net = DeepONet(4, 2, width=8, depth=2, basis=5).double()
    f = torch.randn(3, 4, dtype=torch.float64)
    for method in ("collapsed", "zcs"):
        op = taylorc.compile(net, "u_xx + u_t", coords="x t", wrt=1, method=method)
        xs = [torch.rand(N, 2, dtype=torch.float64) for N in (7, 64, 200)]
        outs, n = builds(op, [(f, x) for x in xs])
        assert n == 1, method
        for x, out in zip(xs, outs):
            ref = nested(net, "u_xx + u_t", f, x, coords="x t", wrt=1)
            assert out.shape == (3, x.shape[0])
            assert_close(out, ref, 1e-10)


def test_stein_says_its_graph_depends_on_the_batch():
    torch.manual_seed(4)
    model = mlp(2, [8])
    op = taylorc.compile(model, "laplacian", method="stein", samples=8, sigma=1e-2)
    outs, n = builds(op, [(torch.randn(B, 2, dtype=torch.float64),) for B in (7, 12)])
    assert n == 2
    assert all(out.shape == (B, 1) and out.isfinite().all() for out, B in zip(outs, (7, 12)))
    assert "replicated batch" in op.explain()


def test_batch_coupled_model_still_refused():
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    with pytest.raises(BatchCouplingError):
        taylorc.compile(model, "laplacian")(torch.randn(16, 2, dtype=torch.float64))


def test_switch_off_keys_on_the_full_shape():
    model = mlp(2, [8])
    op = taylorc.compile(model, "laplacian")
    op.config.dynamic_batch = False
    _, n = builds(op, [(torch.randn(B, 2, dtype=torch.float64),) for B in (7, 8)])
    assert n == 2
    assert "config.dynamic_batch is off" in op.explain()


@pytest.mark.skipif(torch.get_default_device().type != "cpu", reason="CPU compile")
def test_auto_backend_compiles_once_after_warmup():
    """The default backend: eager for the first calls, then one inductor compile for every B."""
    from torch._dynamo.utils import counters

    from taylorc.passes.cpu_tanh import tanh_expm1

    torch.manual_seed(5)
    model = mlp(2, [8]).float()
    op = taylorc.compile(model, "laplacian")
    assert op.backend == "auto"
    op.config.auto_compile_after = 2
    reference = mlp(2, [8])
    reference.load_state_dict(model.state_dict())
    counters.clear()
    xs = [torch.randn(B, 2) for B in (7, 64, 1000, 30)]
    outs, n = builds(op, [(x,) for x in xs])
    assert n == 1
    graph = next(iter(op._graphs.values()))[0]
    assert graph.wait(), graph.failed  # the background compile that call 3 started
    outs += [op(x) for x in xs]  # the compiled graph serves every B
    with torch.no_grad():
        outs += [op(x) for x in xs]  # evaluation (the CPU kernel serves it); both modes compiled
    xs = xs + xs + xs
    assert counters["stats"]["unique_graphs"] == 2  # once per grad mode, no recompile per B
    assert graph.compiled is not None and graph.failed is None
    assert tanh_expm1 in [n.target for n in graph.compiled._orig_mod.graph.nodes]
    for x, out in zip(xs, outs):
        assert_close(out.double(), nested(reference, "laplacian", x.double()), 1e-5)
    assert "at call 3" in op.explain().splitlines()[-1]


def test_auto_backend_overrides():
    model = mlp(2, [8])
    op = taylorc.compile(model, "laplacian")  # the suite's CONFIG: never compile
    for _ in range(3):
        op(torch.randn(5, 2, dtype=torch.float64))
    graph = next(iter(op._graphs.values()))[0]
    assert graph.compiled is None and graph.calls == 3
    eager = taylorc.compile(mlp(2, [8]), "laplacian", backend="eager")
    eager(torch.randn(5, 2, dtype=torch.float64))
    assert isinstance(next(iter(eager._graphs.values()))[0], torch.fx.GraphModule)
    stochastic = taylorc.compile(model, "laplacian", method="stochastic", samples=2)
    assert stochastic(torch.randn(5, 2, dtype=torch.float64)).shape == (5, 1)


def test_auto_tune_respects_the_users_allocator(monkeypatch):
    from taylorc.runtime import cpu

    calls = []
    monkeypatch.setattr(cpu, "tune_allocator", lambda: calls.append(1) or True)
    for env, expected in [
        ({"TAYLORC_TUNE_ALLOCATOR": "0"}, False),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, False),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, False),
        ({}, True),
    ]:
        monkeypatch.setattr(cpu, "_AUTO", [None])
        for k in ("TAYLORC_TUNE_ALLOCATOR", "LD_PRELOAD", *cpu._USER_SETTINGS):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert cpu.auto_tune() is expected
        assert cpu.auto_tune() is expected  # decided once
    assert calls == [1]


def test_auto_backend_compiles_in_the_background_or_at_the_call():
    """The call that starts the compile does not wait for it (background_compile, the
    default); with background_compile=False it does, and serves compiled at once."""
    torch.manual_seed(6)
    x = torch.randn(9, 2, dtype=torch.float64)
    for background in (True, False):
        op = taylorc.compile(mlp(2, [6]), "laplacian")
        op.config.auto_compile_after, op.config.background_compile = 1, background
        eager = op(x)  # call 1: eager
        started = op(x)  # call 2: the compile starts
        graph = next(iter(op._graphs.values()))[0]
        assert (graph.compiled is None) == background
        assert graph.wait() and graph.failed is None
        assert_close(started, eager, 1e-12)
        assert_close(op(x), eager, 1e-12)
        op.taylor_graph(x)  # the sites graph's cache entry is no compiled graph
        assert op.wait_for_compile()
        params = list(op.model.parameters())
        got = torch.autograd.grad(op(x).sum(), params, allow_unused=True)  # compiled backward
        eager = taylorc.compile(op.model, "laplacian", backend="eager")
        want = torch.autograd.grad(eager(x).sum(), params, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                assert_close(a, b, 1e-12)
