"""Linear sites of the Taylor graph (the KFAC contract) against independent oracles, float64.

Oracles: forward hooks on ``nn.Linear`` (the value column's input), ``torch.func.jvp``
of the layer input along each direction (first- and, for standard Taylor, second-order
columns), ``Z @ W^T + b`` (every recorded output), and the gradient of the summed
nested-autograd operator with respect to W (the taps: sum over n, s of g Z^T).
"""

import pytest
import torch
from helpers import mlp
from test_architectures import (
    ARCHITECTURES,
    Composition,
    DeepONetFixedFunction,
    FNO1d,
    PirateBlock,
    Siren,
    SmallCNN,
)
from torch import nn

import taylorc
from taylorc import ir
from taylorc.methods.layer_graph import build_taylor_graph, site_gradients


class Residual(nn.Module):
    """Two residual tanh blocks around a linear stem, two outputs."""

    def __init__(self, D, w=6):
        super().__init__()
        self.inp, self.a, self.b = nn.Linear(D, w), nn.Linear(w, w), nn.Linear(w, w)
        self.out = nn.Linear(w, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.tanh(self.a(h))
        h = h + torch.sin(self.b(h))
        return self.out(h)


def layer_inputs(model, x):
    """{module name: [input of each call]} by forward pre-hooks on every nn.Linear."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hook = lambda mod, args, name=name: seen.setdefault(name, []).append(args[0])  # noqa: E731
            handles.append(m.register_forward_pre_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def directional(model, x, v, k, name, use):
    """d^k/dt^k of the input of module ``name`` (its ``use``-th call) at x + t v, t = 0."""

    def f(t):
        return layer_inputs(model, x + t * v)[name][use]

    g = f
    for _ in range(k - 1):
        g = (lambda h: lambda t: torch.func.jvp(h, (t,), (torch.ones_like(t),))[1])(g)
    t0 = torch.zeros((), dtype=x.dtype)
    return torch.func.jvp(g, (t0,), (torch.ones_like(t0),))[1]


def node_values(tg, x):
    """Every node's value in one run of the sites graph (torch.fx.Interpreter)."""
    taps = [torch.zeros(s.tap.meta["val"].shape, dtype=x.dtype) for s in tg.sites]
    interp = torch.fx.Interpreter(tg.gm, garbage_collect_values=False)
    interp.run(*tg.captured.inputs(tg._op.model, x), *taps)
    return interp.env


def check_sites(model, operator, x, method="collapsed", oracle=None, **kwargs):
    """All the oracles on every site of ``model``'s Taylor graph; returns the graph.

    ``oracle``: the same function written with primitive ops (same parameter names),
    differentiated by torch.func where its nested forward mode is wrong for ``model``.
    """
    oracle = oracle or model
    op = taylorc.compile(model, operator, method=method, **kwargs)
    tg = op.taylor_graph(x)
    run = tg.run(x)
    ref = taylorc.compile(oracle, operator, method="nested", **kwargs)(x)
    outs = run.outputs if isinstance(run.outputs, dict) else {"": run.outputs}
    refs = ref if isinstance(ref, dict) else {"": ref}
    for k in refs:
        torch.testing.assert_close(outs[k], refs[k], rtol=1e-9, atol=1e-10)
    env, hooks = node_values(tg, x), layer_inputs(oracle, x)
    plan, N = tg.plan, x.shape[0]
    assert tg.sites, "no linear site found"
    for site in tg.sites:
        W, b = tg.parameters_of(site)
        Z = run.inputs[site.name].detach()
        assert Z.shape[:2] == (N, site.S)
        use = int(site.name.split("#")[1]) if "#" in site.name else 0
        # the value column is the plain forward input of the layer
        torch.testing.assert_close(Z[:, 0], hooks[site.module][use].reshape(Z[:, 0].shape))
        for s, c in enumerate(site.columns):
            if c.zero_input:
                assert (Z[:, s] == 0).all(), (site.name, s)
            if c.kind == "direction" and c.order <= 2:
                v = torch.tensor(plan.directions[c.index], dtype=x.dtype).reshape(x.shape[1:])
                want = directional(oracle, x, v, c.order, site.module, use)
                torch.testing.assert_close(Z[:, s], want.reshape(Z[:, s].shape))
            if c.kind == "top" and c.order == 2 and c.index is None:
                want = sum(
                    float(w)
                    * directional(oracle, x, torch.tensor(d, dtype=x.dtype), 2, site.module, use)
                    for d, w in zip(plan.directions, plan.top_weights[0])
                    if w != 0
                )
                torch.testing.assert_close(Z[:, s], want.reshape(Z[:, s].shape))
            if c.output is None:
                continue
            out = env[c.output]
            out = out[c.index] if c.index is not None else out
            want = Z[:, s] @ W.detach().T + (
                b.detach() if c.kind == "value" and b is not None else 0
            )
            torch.testing.assert_close(want, out.reshape(want.shape), rtol=1e-10, atol=1e-12)
    # the taps: sum over points and columns of g Z^T is the gradient of the summed operator
    total = sum(v.sum() for v in outs.values())
    params = {id(p): p for s in tg.sites for p in tg.parameters_of(s) if p is not None}
    once = [s for s in tg.sites if sum(t.weight == s.weight for t in tg.sites) == 1]
    grads = torch.autograd.grad(total, [run.taps[s.name] for s in once], allow_unused=True)
    ref_total = sum(v.sum() for v in refs.values())
    oracle_params = dict(oracle.named_parameters())
    W_ref = torch.autograd.grad(
        ref_total, [oracle_params[s.weight] for s in once], allow_unused=True
    )
    for s, g, wr in zip(once, grads, W_ref):
        Z = run.inputs[s.name].detach()
        g = torch.zeros_like(run.taps[s.name]) if g is None else g
        gw = torch.einsum("ns...o,ns...i->oi", g, Z)
        torch.testing.assert_close(gw, wr if wr is not None else torch.zeros_like(gw))
    assert params
    check_untapped(op, tg, x)
    return tg


def check_untapped(op, tg, x):
    """The graph without taps (what KFAC runs): the same outputs and Z, and g read from
    the output columns equal to the taps' g, column by column (zeros where unused)."""
    fast = build_taylor_graph(op, (x,), taps=False)
    assert not any(
        n.name.startswith(("tap", "perturbation"))
        for n in fast.gm.graph.nodes
        if n.op == "placeholder"
    )
    run, quick = tg.run(x), fast.run(x)
    outs = run.outputs if isinstance(run.outputs, dict) else {"": run.outputs}
    quicks = quick.outputs if isinstance(quick.outputs, dict) else {"": quick.outputs}
    for k in outs:
        torch.testing.assert_close(quicks[k], outs[k], rtol=0, atol=0)
    assert [s.name for s in fast.sites] == [s.name for s in tg.sites]
    total = lambda o: sum((v * torch.linspace(1, 2, v.numel()).view_as(v)).sum() for v in o)  # noqa: E731
    want = site_gradients([(run, s) for s in tg.sites], total(outs.values()))
    got = site_gradients([(quick, s) for s in fast.sites], total(quicks.values()))
    for s, f, w, g in zip(tg.sites, fast.sites, want, got):
        z = quick.input_columns(f).full()
        torch.testing.assert_close(z, run.inputs[s.name], rtol=0, atol=0)
        assert g.shape == w.shape == run.taps[s.name].shape, s.name
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)


D3 = torch.randn(4, 3, dtype=torch.float64)


@pytest.mark.parametrize("out", [1, 2])
def test_one_hidden_layer_laplacian_holds_direction_blocks_as_products(out):
    """Under a collapsed Laplacian of a one-hidden-layer net, the graph without taps holds
    the last layer's direction inputs (σ'(a) ⊙ W e_r, which reach nothing) and the first
    layer's direction g (read through Σ_r z_r², one row for all points) as products; Z,
    g and the values equal the tapped graph's (check_untapped)."""
    model = mlp(3, [6], out=out)
    op = taylorc.compile(model, "laplacian")
    fast = build_taylor_graph(op, (D3,), taps=False)
    held = {(s.name, f.side, f.cols) for s in fast.sites for f in s.factored}
    assert held == {("0", "output", (1, 2, 3)), ("2", "input", (1, 2, 3))}
    blocks = [n for n in fast.gm.graph.nodes if n.target is torch.ops.aten.mul.Tensor]
    assert not any(
        n.args[0] is n.args[1]
        and n.args[0].target is torch.ops.aten.expand.default
        and len(n.args[0].args[1]) == 3
        for n in blocks
    )  # no per-point Σ_r z_r²
    check_sites(model, "laplacian", D3)
    tg = build_taylor_graph(taylorc.compile(model, "biharmonic"), (D3,), taps=False)
    assert not any(f.side == "output" for s in tg.sites for f in s.factored)  # not Σ_r z_r²


RECIPE = ["tanh", "residual", "gate", "layernorm", "silu"]


@pytest.mark.parametrize("method", ["collapsed", "taylor"])
@pytest.mark.parametrize("operator", ["laplacian", "biharmonic"])
def test_mlp_sites(method, operator):
    tg = check_sites(mlp(3, [6, 5]), operator, D3, method)
    assert [s.module for s in tg.sites] == ["0", "2", "4"]
    first = tg.sites[0]
    assert first.weight == "0.weight" and first.bias == "0.bias"
    # value, R first-order columns, ..., top: D + 2 for the collapsed Laplacian
    if method == "collapsed" and operator == "laplacian":
        assert first.S == 3 + 2 and first.columns[-1].zero_input
        assert first.collapse_weights.shape == (1, 3)


def test_residual_multi_output_and_dict():
    model = Residual(3).double()
    check_sites(model, "laplacian", D3)
    check_sites(model, {"u": "u", "lap": "laplacian", "ux": "u_x"}, D3, coords="x y z")
    check_sites(model, {"u": "u", "lap": "laplacian", "ux": "u_x"}, D3, "taylor", coords="x y z")


def test_value_operator_has_one_column():  # the boundary term of a PINN loss: S = 1
    tg = check_sites(mlp(3, [6]), "u", D3)
    assert all([c.kind for c in s.columns] == ["value"] for s in tg.sites)


def test_heat_operator():
    check_sites(mlp(3, [6]), "heat", D3)
    check_sites(mlp(3, [6]), "u_t - 0.5*u_xx + u_x*0", D3, coords="x y t")


@pytest.mark.parametrize(
    "model,x",
    [
        (Siren(3).double(), D3),
        (PirateBlock(3).double(), D3),
        (DeepONetFixedFunction(2).double(), D3[:, :2]),
        (FNO1d().double(), torch.randn(2, 8, dtype=torch.float64)),
        (SmallCNN().double(), torch.randn(2, 16, dtype=torch.float64)),
        (Composition(2, 4, RECIPE).double(), D3[:, :2]),
    ],
    ids=["siren", "piratenet", "deeponet", "fno", "cnn", "composition"],
)
def test_architecture_sites(model, x):
    oracle = None  # layer norm in primitive ops: see test_architectures.test_fno_and_cnn
    if isinstance(model, SmallCNN):
        oracle = SmallCNN(primitive_norm=True).double()
    elif isinstance(model, Composition):
        oracle = Composition(2, 4, RECIPE, primitive_norm=True).double()
    if oracle is not None:
        oracle.load_state_dict(model.state_dict())
    tg = check_sites(model, "laplacian", x, oracle=oracle)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {s.module for s in tg.sites} <= names


def test_every_linear_architecture_is_covered():
    with_linear = {
        n
        for n, (cls, D) in ARCHITECTURES.items()
        if any(isinstance(m, nn.Linear) for m in cls(D).modules())
    }
    assert with_linear == {"siren", "piratenet", "deeponet"}  # + fno, cnn, composition above


def test_sites_stay_valid_and_reject_other_methods():
    tg = taylorc.compile(mlp(3, [4]), "laplacian").taylor_graph(D3)
    ir.validate(tg.gm)
    assert ir.info(tg.gm).sites is tg.sites
    with pytest.raises(ValueError, match="taylor_graph"):
        taylorc.compile(mlp(3, [4]), "laplacian", method="nested").taylor_graph(D3)
    with pytest.raises(ValueError, match="shape"):
        tg.run(D3[:2])


def test_cse_keeps_output_columns_apart():
    """The sites graph is CSE'd, but an output column is never merged: the first layer's
    zero inputs of orders 2 and 3 (biharmonic) give equal outputs that keep their own g."""
    for keep_first, want in ((True, 0), (False, 1)):
        gm, kept = _toy(keep_first)
        assert ir.cse(gm, kept) == want
    model, x = mlp(3, [6, 5]), D3
    op = taylorc.compile(model, "biharmonic")
    fast = build_taylor_graph(op, (x,), taps=False)
    first = fast.sites[0]
    by_order = {c.order: c.output for c in first.columns if c.zero_input and c.output is not None}
    assert len(by_order) >= 2 and len(set(by_order.values())) == len(by_order)  # own nodes
    check_untapped(op, op.taylor_graph(x), x)


def _toy(keep_first: bool):
    """``(sin(x), sin(x))`` with the first or no node kept apart."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.ops.aten.sin.default, (x,))
    b = g.call_function(torch.ops.aten.sin.default, (x,))
    g.output((a, b))
    return torch.fx.GraphModule({}, g), {a} if keep_first else set()
