"""Zero coordinate shift and the forward route for many-function models, against FuncLoop."""

from __future__ import annotations

import pytest
import torch
from helpers import two_tiers
from hypothesis import strategies as st

import taylorc
from taylorc.errors import BatchCouplingError
from taylorc.methods.nested import func_loop, point_leaf_terms
from taylorc_contrib.models import DeepONet

DT = torch.float64

# orders 1-4, mixed partials, an x-dependent coefficient
SPECS = {
    "u": "u",
    "u_t": "u_t",
    "u_xx": "u_xx",
    "u_xt": "u_xt",
    "u_xxt": "u_xxt",
    "u_xxxx": "u_xxxx",
    "u_xxtt": "u_xxtt",
    "res": "u_t - 0.01*u_xx + x*u_x - 3*u",
}


def relerr(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _zcs_and_forward_match_funcloop(width, depth, basis, act, M, N, seed):
    torch.manual_seed(seed)
    net = DeepONet(4, 2, width=width, depth=depth, basis=basis, activation=act).to(DT)
    f, x = torch.randn(M, 4, dtype=DT), torch.rand(N, 2, dtype=DT)
    ref = func_loop(
        net,
        {k: taylorc.operators.parse(v, ["x", "t"]) for k, v in SPECS.items()},
        (f, x),
        1,
        ["x", "t"],
    )
    for method in ("zcs", "collapsed", "taylor"):
        out = taylorc.compile(net, SPECS, coords="x t", wrt=1, method=method)(f, x)
        for k in SPECS:
            assert out[k].shape == (M, N)
            assert relerr(out[k], ref[k]) < 1e-10, (method, k)


# 1 example in the default tier, 4 in the slow one
test_zcs_and_forward_match_funcloop, test_zcs_and_forward_match_funcloop_deep = two_tiers(
    _zcs_and_forward_match_funcloop,
    fast=1,
    deep=4,
    width=st.sampled_from([5, 8, 13]),
    depth=st.integers(1, 3),
    basis=st.sampled_from([3, 6]),
    act=st.sampled_from([torch.nn.Tanh, torch.nn.SiLU, torch.nn.Softplus]),
    M=st.integers(1, 4),
    N=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)


def test_zcs_on_a_user_model_with_coordinates_first():
    """Not our DeepONet: coordinates first, three input functions of two kinds, a gating product."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 6)
            self.b = torch.nn.Linear(2, 6)
            self.t = torch.nn.Sequential(
                torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6)
            )

        def forward(self, pts, fa, fb):
            g = torch.sin(self.a(fa)) * torch.sigmoid(self.b(fb))  # (M, 6)
            return g @ torch.tanh(self.t(pts)).T  # (M, N)

    torch.manual_seed(1)
    model = Model().to(DT)
    pts, fa, fb = (
        torch.rand(7, 3, dtype=DT),
        torch.randn(4, 3, dtype=DT),
        torch.randn(4, 2, dtype=DT),
    )
    spec = {"lap": "u_xx + u_yy + u_zz", "mix": "u_xyz + z*u_y"}
    ref = taylorc.compile(model, spec, coords="x y z", wrt="pts", method="nested")(pts, fa, fb)
    for method in ("zcs", "collapsed"):
        out = taylorc.compile(model, spec, coords="x y z", wrt="pts", method=method)(pts, fa, fb)
        for k in spec:
            assert relerr(out[k], ref[k]) < 1e-10, (method, k)


def test_funcloop_matches_nested_autograd_per_function():
    """The oracle itself against torch.func on one function at a time."""
    torch.manual_seed(2)
    net = DeepONet(3, 2, width=7, depth=2, basis=4).to(DT)
    f, x = torch.randn(2, 3, dtype=DT), torch.rand(5, 2, dtype=DT)
    ref = func_loop(
        net, {"d": taylorc.operators.parse("u_xxt", ["x", "t"])}, (f, x), 1, ["x", "t"]
    )["d"]
    for m in range(2):
        g = lambda p, m=m: net(f[m : m + 1], p[None])[0, 0]  # noqa: E731
        third = torch.func.vmap(torch.func.jacfwd(torch.func.jacfwd(torch.func.jacrev(g))))(x)
        assert relerr(ref[m], third[:, 0, 0, 1]) < 1e-12


def test_graph_has_one_shift_leaf_per_dimension_and_trains():
    torch.manual_seed(3)
    net = DeepONet(4, 3, width=8, depth=2, basis=5).to(DT)
    f, x = torch.randn(3, 4, dtype=DT), torch.rand(6, 3, dtype=DT)
    op = taylorc.compile(
        net, {"lap": "u_xx + u_yy", "u_t": "u_t"}, coords="x y t", wrt=1, method="zcs"
    )
    out = op(f, x)
    gm = op.graph_for(x, (f, x), "zcs")[0]
    shifts = [n for n in gm.graph.nodes if n.meta.get("taylorc", {}).get("role") == "zcs_shift"]
    assert [n.name for n in shifts] == ["z_x", "z_y", "z_t"]
    assert all(n.op == "placeholder" for n in shifts)
    # gradients reach the weights and equal FuncLoop's
    loss = sum(v.pow(2).mean() for v in out.values())
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    ops = {
        k: taylorc.operators.parse(v, ["x", "y", "t"])
        for k, v in {"lap": "u_xx + u_yy", "u_t": "u_t"}.items()
    }
    ref = func_loop(net, ops, (f, x), 1, ["x", "y", "t"])
    ref_grads = torch.autograd.grad(
        sum(v.pow(2).mean() for v in ref.values()), list(net.parameters()), allow_unused=True
    )
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        assert g is None or relerr(g, r) < 1e-10


def test_datavect_layout_matches():
    torch.manual_seed(4)
    net = DeepONet(4, 2, width=8, depth=2, basis=5).to(DT)
    f, x = torch.randn(3, 4, dtype=DT), torch.rand(5, 2, dtype=DT)
    ops = {"r": taylorc.operators.parse("u_t - u_xx", ["x", "t"])}
    pts = x.repeat(3, 1).requires_grad_()
    dv = point_leaf_terms(net.aligned(f.repeat_interleave(5, 0), pts), pts, ops, ["x", "t"])["r"]
    ref = func_loop(net, ops, (f, x), 1, ["x", "t"])["r"]
    assert relerr(dv.reshape(3, 5), ref) < 1e-12


def test_auto_picks_a_method_and_matches():
    torch.manual_seed(5)
    net = DeepONet(4, 2, width=8, depth=2, basis=5).to(DT)
    f, x = torch.randn(3, 4, dtype=DT), torch.rand(5, 2, dtype=DT)
    op = taylorc.compile(net, "u_t - u_xx", coords="x t", wrt=1, method="auto")
    assert op.method_for((f, x), 1) in ("zcs", "collapsed")
    ref = taylorc.compile(net, "u_t - u_xx", coords="x t", wrt=1, method="nested")(f, x)
    assert relerr(op(f, x), ref) < 1e-10


def test_wrt_errors():
    net = DeepONet(4, 2, width=8, depth=1, basis=3).to(DT)
    f, x = torch.randn(3, 4, dtype=DT), torch.rand(5, 2, dtype=DT)
    with pytest.raises(ValueError, match="names no argument"):
        taylorc.compile(net, "u_xx", coords="x t", wrt="points", method="zcs")(f, x)
    with pytest.raises(ValueError, match="names no argument"):
        taylorc.compile(net, "u_xx", coords="x t", wrt=2, method="zcs")(f, x)
    with pytest.raises(ValueError, match="wrt="):
        taylorc.compile(net, "u_xx", coords="x t", method="zcs")
    with pytest.raises(ValueError, match="wrt="):
        taylorc.compile(net, "u_xx", coords="x t")(f, x)
    with pytest.raises(ValueError, match="coords names 3 coordinates"):
        taylorc.compile(net, "u_xx", coords="x y t", wrt=1, method="zcs")(f, x)


def test_zcs_refuses_models_that_mix_points():
    class Mixer(torch.nn.Module):
        def forward(self, f, x):
            h = torch.tanh(x @ torch.ones(2, 3, dtype=x.dtype))
            return f @ (h - h.mean(0)).T

    f, x = torch.randn(3, 3, dtype=DT), torch.rand(5, 2, dtype=DT)
    with pytest.raises(BatchCouplingError):
        taylorc.compile(Mixer(), "u_xx", coords="x t", wrt=1, method="zcs")(f, x)


def test_zcs_graph_is_dumped(tmp_path):
    net = DeepONet(4, 2, width=6, depth=1, basis=3).to(DT)
    f, x = torch.randn(2, 4, dtype=DT), torch.rand(3, 2, dtype=DT)
    op = taylorc.compile(net, "u_t - u_xx", coords="x t", wrt=1, method="zcs", debug_dir=tmp_path)
    op(f, x)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.endswith("zcs.py") for n in names), names
    code = next(p for p in tmp_path.iterdir() if p.name.endswith("zcs.py")).read_text()
    assert "z_x" in code and "z_t" in code


def test_lost_point_axis_refuses_x_dependent_coefficients_only():
    """A reshape that merges (M, N) hides the points' axis: no guessing which axis it was."""

    class Merged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DeepONet(4, 2, width=6, depth=1, basis=3)

        def forward(self, f, x):
            u = self.net(f, x)
            return u.reshape(-1).reshape(u.shape)

    torch.manual_seed(7)
    model = Merged().to(DT)
    f, x = torch.randn(3, 4, dtype=DT), torch.rand(3, 2, dtype=DT)  # M == N: axis ambiguous
    # the graph analysis loses the axis at the reshape; the batch probe finds it exactly
    ref = taylorc.compile(model, "u_t - x*u_xx", coords="x t", wrt=1, method="nested")(f, x)
    out = taylorc.compile(model, "u_t - x*u_xx", coords="x t", wrt=1, method="zcs")(f, x)
    assert relerr(out, ref) < 1e-10

    class Flat(Merged):
        def forward(self, f, x):
            return self.net(f, x).reshape(-1)  # (M N,): no axis holds the points

    flat = Flat().to(DT)
    flat.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="lost track"):
        taylorc.compile(flat, "u_t - x*u_xx", coords="x t", wrt=1, method="zcs")(f, x)
    ref = taylorc.compile(model, "u_t - u_xx", coords="x t", wrt=1, method="nested")(f, x)
    out = taylorc.compile(flat, "u_t - u_xx", coords="x t", wrt=1, method="zcs")(f, x)
    assert relerr(out.reshape(ref.shape), ref) < 1e-10
