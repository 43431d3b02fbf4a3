"""The compiled linearisation (taylorc.optim.compiled) against the eager one, float64.

Oracle: :func:`taylorc.optim.linearization.linearize` run eagerly at the same parameters and
points (itself checked against torch.func in test_kfac.py). Each case compiles with
inductor (a few seconds), so the cases are few and each covers several structures.
"""

import warnings

import pytest
import torch
from helpers import mlp
from test_kfac import OPERATORS, residual

import taylorc
from taylorc.errors import KFACError
from taylorc.optim import KFAC
from taylorc.optim.factors import jvp, layer_factors, layer_gradient
from taylorc.optim.linearization import linearize
from taylorc.optim.linearizer import Linearizer

DT = torch.float64


def assert_same_linearization(a, b, tol=1e-10):
    """Every tensor of two Linearizations equal up to rounding (relative to its scale)."""

    def close(x, y):
        assert x.shape == y.shape
        scale = max(x.abs().max().item(), 1e-30)
        assert (x - y).abs().max().item() <= tol * scale

    close(a.r, b.r)
    assert list(a.layers) == list(b.layers)
    for w in a.layers:
        la, lb = a.layers[w], b.layers[w]
        assert (la.bias, la.bias_columns, la.live, la.shared) == (
            lb.bias,
            lb.bias_columns,
            lb.live,
            lb.shared,
        )
        assert la.x_columns.cols == lb.x_columns.cols
        assert [c for c, _, _ in la.g_columns.factored] == [c for c, _, _ in lb.g_columns.factored]
        close(la.X, lb.X)
        close(la.g, lb.g)


def assert_same_statistics(got, want, approx, tol=1e-10):
    """The compiled evaluation's factors and gradients equal those computed from the
    eager linearisation."""
    assert got.approx == approx and list(got.factors) == list(want.layers)
    for w, layer in want.layers.items():
        pairs = [*zip(got.factors[w], layer_factors(layer, approx))]
        pairs.append((got.gradients[w], layer_gradient(layer, want.r)))
        other = "reduce" if approx == "expand" else "expand"  # KFAC's approx changed since
        pairs += zip(got.kronecker_factors(w, other), layer_factors(layer, other))
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
    gen = torch.Generator().manual_seed(5)
    dirs = [  # the compiled Jacobian-vector products (got.jvps) against the eager ones
        {
            w: torch.randn(*(L.d_out, L.d_in), dtype=DT, generator=gen)
            for w, L in want.layers.items()
        }
        for _ in range(2)
    ]
    assert got.jvps is not None
    with warnings.catch_warnings():  # compiled, not the eager fallback
        warnings.filterwarnings("error", "the Jacobian-vector products run eagerly")
        compiled = jvp(got, *dirs)
    for a, b in zip(compiled, jvp(want, *dirs)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


CASES = {  # operator, hidden widths, activation, outputs, approximation
    "laplacian-1-hidden-factored": ("laplacian", [16], "tanh", 1, "expand"),
    "heat-2-hidden-two-outputs": ("heat", [6, 5], "tanh", 2, "reduce"),
    "burgers-dict-sin": ("burgers", [7, 6], "sin", 1, "expand"),
}


# one inductor compile in the default tier, the other cases in the slow one
@pytest.mark.parametrize(
    "case", [c if i == 0 else pytest.param(c, marks=pytest.mark.slow) for i, c in enumerate(CASES)]
)
def test_compiled_linearization_equals_eager(case):
    name, widths, act, out, approx = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    torch.manual_seed(len(case))
    model = mlp(3, widths, act, out)
    f = residual(model, name)
    x = torch.rand(40, 3, dtype=DT, generator=gen)
    lin = Linearizer(model, backend="inductor", approx=approx)
    lin("interior", f, x)  # first call: eager, checked
    got = lin("interior", f, x)
    assert len(lin.compiled) == 1 and all(lin.compiled.values())
    want = linearize(model, f, x)
    assert_same_linearization(got, want)
    assert_same_statistics(got, want, approx)
    # the parameters are inputs of the compiled graph, not constants of the trace
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=DT, generator=gen))
    x2 = torch.rand(40, 3, dtype=DT, generator=gen)
    got, want = lin("interior", f, x2), linearize(model, f, x2)
    assert_same_linearization(got, want)
    assert_same_statistics(got, want, approx)


def test_compiled_linearization_with_a_frozen_layer():
    torch.manual_seed(3)
    model = mlp(3, [8, 6]).to(DT)
    first = next(model.parameters())
    f = residual(model, "laplacian")
    x = torch.rand(30, 3, dtype=DT)
    lin = Linearizer(model, backend="inductor")
    lin("interior", f, x)
    for p in list(model.parameters())[:2]:
        p.requires_grad_(False)
    lin("interior", f, x)  # another θ: a new key, checked eagerly first
    got = lin("interior", f, x)
    assert first.requires_grad is False and len(lin.compiled) == 1
    want = linearize(model, f, x)
    assert "0.weight" not in got.layers
    assert_same_linearization(got, want)


@pytest.mark.slow  # inductor compiles
def test_a_shared_column_that_stops_being_shared_drops_the_compiled_graph():
    """A first layer at zero makes the next layer's value input the same for every point
    (taken as shared at the compile); once it is trained, the graph's count sees it."""
    torch.manual_seed(4)
    model = mlp(2, [6, 5])
    with torch.no_grad():
        model[0].weight.zero_()
    f = residual(model, "laplacian")
    x = torch.rand(25, 2, dtype=DT)
    lin = Linearizer(model, backend="inductor", approx="expand")
    lin("interior", f, x)
    got = lin("interior", f, x)
    assert all(lin.compiled.values()) and got.layers["2.weight"].shared
    with torch.no_grad():
        model[0].weight.normal_()
    with pytest.warns(UserWarning, match="dropped"):
        got = lin("interior", f, x)
    want = linearize(model, f, x)
    assert not want.layers["2.weight"].shared and got.factors is None
    assert_same_linearization(got, want, tol=0)
    assert list(lin.compiled.values()) == [None]


@pytest.mark.slow  # inductor compiles
def test_kfac_steps_compiled_equal_eager():
    results = []
    for backend in ("eager", "inductor"):
        torch.manual_seed(0)
        model = mlp(2, [12]).to(DT)
        lap = taylorc.compile(model, "laplacian")
        gen = torch.Generator().manual_seed(1)
        xi, xb = torch.rand(50, 2, dtype=DT, generator=gen), torch.rand(10, 2, dtype=DT)
        res = {"interior": lambda x, lap=lap: -lap(x) - 1.0, "boundary": lambda x, m=model: m(x)}
        opt = KFAC(model, res, backend=backend, damping=1e-6)
        losses = [opt.step({"interior": xi, "boundary": xb}) for _ in range(4)]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
        if backend == "inductor":
            assert len(opt._linearizer.compiled) == 2 and all(opt._linearizer.compiled.values())
    (la, pa), (lb, pb) = results
    for a, b in zip(la, lb):
        for t in a:
            assert abs(a[t] - b[t]) <= 1e-8 * abs(a[t])
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def _branching(model):
    lap = taylorc.compile(model, "laplacian")

    def f(x):
        d = lap(x)
        return -d - 1.0 if d.mean() > -1e9 else d  # a branch on tensor values

    return f


def test_a_residual_that_branches_on_values_stays_eager():
    torch.manual_seed(1)
    model = mlp(2, [5]).to(DT)
    f = _branching(model)
    x = torch.rand(20, 2, dtype=DT)
    lin = Linearizer(model, backend="auto")
    lin.after = 1
    lin("interior", f, x)
    with pytest.warns(UserWarning, match="could not be compiled: .*; it runs eagerly"):
        got = lin("interior", f, x)
    assert lin.compiled[next(iter(lin.compiled))] is None
    assert_same_linearization(got, linearize(model, f, x), tol=0)
    strict = Linearizer(model, backend="inductor")
    strict("interior", f, x)
    with pytest.raises(KFACError, match="backend='eager'"):
        strict("interior", f, x)
    # distributed optimisers pass strict=False: a rank must not raise alone
    lenient = Linearizer(model, backend="inductor", strict=False)
    lenient("interior", f, x)
    with pytest.warns(UserWarning, match="could not be compiled: .*; it runs eagerly"):
        got = lenient("interior", f, x)
    assert_same_linearization(got, linearize(model, f, x), tol=0)


def test_a_replay_that_differs_from_eager_is_refused(monkeypatch):
    import torch._inductor.compile_fx as cfx

    real = cfx.compile_fx

    def wrong(gm, inputs):
        fn = real(gm, inputs)
        return lambda *a: [t * 1.001 for t in fn(*a)]

    monkeypatch.setattr(cfx, "compile_fx", wrong)
    torch.manual_seed(2)
    model = mlp(2, [5]).to(DT)
    f = residual(model, "laplacian")
    x = torch.rand(20, 2, dtype=DT)
    lin = Linearizer(model, backend="inductor")
    lin("interior", f, x)
    with pytest.raises(KFACError, match="differs from the eager evaluation"):
        lin("interior", f, x)


def test_backend_is_validated_and_eager_never_compiles():
    model = mlp(2, [4]).to(DT)
    with pytest.raises(ValueError, match="backend"):
        KFAC(model, {"u": lambda x: model(x)}, backend="jit")
    lin = Linearizer(model, backend="eager")
    x = torch.rand(10, 2, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            lin("boundary", lambda x: model(x), x)
    assert lin.compiled == {}


assert {CASES[c][0] for c in CASES} <= set(OPERATORS)


NU = 1.0  # a coefficient a residual reads as a global (rebound by the test below)


@pytest.mark.slow  # inductor compiles
def test_a_rebound_name_the_residual_reads_sends_it_back_to_eager():
    global NU
    torch.manual_seed(6)
    model = mlp(2, [5])
    lap = taylorc.compile(model, "laplacian")

    def f(x):  # NU read inside a comprehension: its own code object
        return -lap(x) - sum([NU * x[:, i : i + 1] for i in range(1)])

    x = torch.rand(20, 2, dtype=DT)
    lin = Linearizer(model, backend="inductor", approx="expand")
    lin("interior", f, x)
    lin("interior", f, x)
    assert all(lin.compiled.values())
    try:
        NU = 3.0
        with pytest.warns(UserWarning, match=r"rebound since its trace \(NU\)"):
            got = lin("interior", f, x)
    finally:
        NU = 1.0
    assert list(lin.compiled.values()) == [None]
    NU = 3.0
    try:
        want = linearize(model, f, x)
    finally:
        NU = 1.0
    assert_same_linearization(got, want, tol=0)


def test_prune_zeros_on_a_trace_keeps_what_is_written_in_place():
    """The compiled path's zero pruning (cleanup's pass, ``functional=False``): only
    the product with a zero-by-construction operand goes; zeros written through a view
    or by ``out=`` are not zero; the result is bit-identical."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from taylorc.passes.cleanup import prune_zeros

    def f(x, W):
        z = x.new_zeros(4, 5, 3).sum(1)  # zero by construction, through a sum
        w = x.new_zeros(4, 3)
        w[:, 1] = x[:, 1]  # written through a view: not zero
        v = x.new_zeros(3, 3)
        torch.add(x[0], 1.0, out=v.diagonal())  # out= into a view the list does not name
        return z @ W + torch.tanh(x) @ W, (x * 0) @ W, w @ W, v @ W

    gen = torch.Generator().manual_seed(7)
    x, W = torch.randn(4, 3, dtype=DT, generator=gen), torch.randn(3, 2, dtype=DT, generator=gen)
    gm = make_fx(f)(x, W)
    mm = torch.ops.aten.mm.default
    assert sum(n.target is mm for n in gm.graph.nodes) == 5
    assert prune_zeros(gm, functional=False) >= 1
    gm.recompile()
    assert sum(n.target is mm for n in gm.graph.nodes) == 4
    for a, b in zip(gm(x, W), f(x, W)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # taken as functional, the zeros written through views would be pruned
    gm = make_fx(f)(x, W)
    prune_zeros(gm)
    gm.recompile()
    assert sum(n.target is mm for n in gm.graph.nodes) < 4


def _add_then_write(x):
    a = x.clone()
    b = a + torch.zeros_like(x)  # b must not become a: a is written next
    a.mul_(2)
    return b


def _add_broadcast_then_write(x):
    a = x.clone()
    b = torch.zeros(3, 4, dtype=x.dtype) + a
    a[0].fill_(7.0)
    return b


def _returns_its_input_plus_zero(x):
    return x + torch.zeros_like(x)  # the output must not be the input tensor itself


def _set_shares_storage(x):
    z = x.new_zeros(4)
    y = x.new_empty(4)
    y.set_(z)  # no schema alias mark on z: z is written through y
    y.add_(1)
    return x * z


@pytest.mark.parametrize(
    "f",
    [_add_then_write, _add_broadcast_then_write, _returns_its_input_plus_zero, _set_shares_storage],
)
def test_prune_zeros_on_a_trace_never_aliases_what_it_rewrites(f):
    """In a graph with in-place ops (``functional=False``), a sum with a zero operand is
    not replaced by the other operand, and ``set_`` joins its source's alias class."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from taylorc.passes.cleanup import prune_zeros

    x = torch.randn(4, dtype=DT, generator=torch.Generator().manual_seed(3))
    gm = make_fx(f)(x)
    prune_zeros(gm, functional=False)
    gm.recompile()
    got = gm(x)
    torch.testing.assert_close(got, f(x), rtol=0, atol=0)
    assert got.data_ptr() != x.data_ptr()


@pytest.mark.slow  # inductor compiles
def test_the_residual_is_part_of_the_key_and_odd_strides_work():
    """Another residual for the same term is traced anew (a constant in it is no name the
    guard sees); points with other strides than the compile's are made contiguous."""
    torch.manual_seed(8)
    model = mlp(2, [5])
    lap = taylorc.compile(model, "laplacian")
    one, five = (lambda x: -lap(x) - 1.0), (lambda x: -lap(x) - 5.0)
    x = torch.rand(20, 3, dtype=DT)[:, :2]  # not contiguous
    lin = Linearizer(model, backend="inductor", approx="expand")
    for f in (one, one, five, five):
        got = lin("interior", f, x)
        assert_same_linearization(got, linearize(model, f, x))
    assert len(lin.compiled) == 2 and all(lin.compiled.values())


def test_auto_compiles_after_the_configured_calls(monkeypatch):
    monkeypatch.setattr(taylorc.runtime.config.CONFIG, "auto_compile_after", 3)
    torch.manual_seed(9)
    model = mlp(2, [5])
    f, x = residual(model, "laplacian"), torch.rand(15, 2, dtype=DT)
    lin = Linearizer(model, backend="auto")
    counts = []
    for _ in range(5):
        lin("interior", f, x)
        counts.append(len(lin.compiled))
    assert counts == [0, 0, 0, 1, 1] and all(lin.compiled.values())
    assert KFAC(model, {"i": f})._linearizer.backend == "eager"  # the optimisers' default


def test_a_partial_whose_argument_is_rebound_is_watched():
    import functools

    torch.manual_seed(10)
    model = mlp(2, [5])
    lap = taylorc.compile(model, "laplacian")

    def res(x, nu):
        return -lap(x) - nu * x[:, :1]

    x = torch.rand(15, 2, dtype=DT)
    lin = Linearizer(model, backend="inductor")
    f = functools.partial(res, nu=1.0)
    lin("interior", f, x)
    lin("interior", f, x)
    f.keywords["nu"] = 2.0  # a partial's keywords are a dict: changed in place
    with pytest.warns(UserWarning, match="rebound since its trace"):
        got = lin("interior", f, x)
    assert_same_linearization(got, linearize(model, f, x), tol=0)


@pytest.mark.slow  # inductor compiles
def test_a_failing_jvp_compile_falls_back_to_the_eager_products(monkeypatch):
    from taylorc.optim.compiled import CompiledEvaluation

    def fail(*args):
        raise RuntimeError("simulated")

    monkeypatch.setattr(CompiledEvaluation, "_compile_jvps", fail)
    torch.manual_seed(11)
    model = mlp(2, [5])
    f, x = residual(model, "laplacian"), torch.rand(15, 2, dtype=DT)
    lin = Linearizer(model, backend="inductor", approx="expand")
    lin("interior", f, x)
    got, want = lin("interior", f, x), linearize(model, f, x)
    gen = torch.Generator().manual_seed(12)
    d = {w: torch.randn(L.d_out, L.d_in, dtype=DT, generator=gen) for w, L in want.layers.items()}
    with pytest.warns(UserWarning, match="run eagerly: RuntimeError: simulated"):
        a = jvp(got, d)
    torch.testing.assert_close(a[0], jvp(want, d)[0], rtol=1e-12, atol=0)
