"""KFAC for PINN losses (taylorc.optim) against independent oracles, float64.

Oracles: per-point Jacobians ∂r_n/∂θ of the residual written with ``method="nested"``
operators (torch.func inside, autograd outside); the dense Gramian built from them;
a test-local loop over points and columns implementing the factor formulas of Dangel,
Müller, Zeinhofer (NeurIPS 2024, Sec. 3.2) from the raw sites run; dense
``torch.linalg.solve`` of the Kronecker sum; the 2x2 argmin of the quadratic model.
"""

import math

import numpy as np
import pytest
import torch
from helpers import mlp
from torch import nn

import taylorc
from taylorc.errors import KFACError
from taylorc.operators import WeightedLaplacian
from taylorc.optim import ENGD, KFAC, KroneckerSum, factors, gramian, kfac_factors
from taylorc.optim.factors import gram, jvp, layer_gradient, to_vector
from taylorc.optim.linearization import linearize

DT = torch.float64
C = [[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.5]]
OPERATORS = {
    "laplacian": (dict(operator="laplacian"), lambda d, x: -d - x[:, :1]),
    "heat": (dict(operator="heat"), lambda d, x: d - 1.0),
    "weighted": (dict(operator=WeightedLaplacian(C)), lambda d, x: d + x.sum(1, keepdim=True)),
    "biharmonic": (dict(operator="biharmonic"), lambda d, x: d),
    "burgers": (
        dict(operator={"u": "u", "u_t": "u_t", "u_x": "u_x", "u_xx": "u_xx"}, coords="x y t"),
        lambda d, x: d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"],
    ),
}


def residual(model, name, method="collapsed"):
    """The interior residual of operator ``name`` compiled with ``method``."""
    kwargs, r = OPERATORS[name]
    op = taylorc.compile(model, method=method, **kwargs)
    return lambda x: r(op(x), x)


def oracle_jacobian(model, f, x):
    """``(N * M, P)``: ∂r_nm/∂θ by autograd of the residual f, θ = each layer's W then b."""
    params = [p for p in model.parameters()]
    r = f(x).reshape(x.shape[0], -1)
    rows = []
    for n in range(r.shape[0]):
        for m in range(r.shape[1]):
            gs = torch.autograd.grad(r[n, m], params, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).flatten()
                        for g, p in zip(gs, params)
                    ]
                )
            )
    return torch.stack(rows)


def value_op(model):
    return taylorc.compile(model, "u")


@pytest.mark.parametrize("name", list(OPERATORS))
def test_tap_jacobian_equals_nested_jacobian(name):
    model = mlp(3, [5, 4])
    x = torch.rand(4, 3, dtype=DT)
    lin = linearize(model, residual(model, name), x, check=True)
    J = torch.cat(
        [to_vector(torch.einsum("mnso,nsi->nmoi", L.g, L.Z), L) for L in lin.layers.values()], -1
    ).reshape(-1, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(J, oracle_jacobian(model, residual(model, name, "nested"), x))


def test_tap_jacobian_two_outputs_and_shared_weight():
    """M = 2 residual outputs (two reverse passes) and a weight used twice (more columns)."""
    model = mlp(3, [5], out=2)
    lap = taylorc.compile(model, "laplacian")
    nested = taylorc.compile(model, "laplacian", method="nested")
    x = torch.rand(4, 3, dtype=DT)
    f = lambda x: lap(x) * model(x) + model(x + 1)  # model called twice, one nonlinearity
    g = lambda x: nested(x) * model(x) + model(x + 1)
    lin = linearize(model, f, x, check=True)
    assert lin.r.shape == (4, 2) and lin.layers["0.weight"].Z.shape[1] == 5 + 1 + 1
    J = torch.cat(
        [to_vector(torch.einsum("mnso,nsi->nmoi", L.g, L.Z), L) for L in lin.layers.values()], -1
    ).reshape(8, -1)
    torch.testing.assert_close(J, oracle_jacobian(model, g, x))


@pytest.mark.parametrize("case", ["burgers", "two_outputs", "laplacian", "biharmonic", "heat"])
def test_gradient_and_jvp_equal_oracle_jacobian(case):
    """layer_gradient = Jᵀr/N and jvp = J v from the taps (raw inputs X, bias columns),
    on layers wider and narrower than their inputs, M = 1 and 2, a weight used twice;
    the operators alone leave the output layer's value and direction columns without g
    and the first layer's directions the same for every point (skipped / summed first)."""
    torch.manual_seed(0)
    if case in OPERATORS:
        model, x = mlp(3, [5, 4]), torch.rand(5, 3, dtype=DT)
        f, nested = residual(model, case), residual(model, case, "nested")
    else:
        model, x = mlp(3, [5], out=2), torch.rand(4, 3, dtype=DT)
        lap, nl = (taylorc.compile(model, "laplacian", method=m) for m in ("collapsed", "nested"))
        f = lambda x: lap(x) * model(x) + model(x + 1)
        nested = lambda x: nl(x) * model(x) + model(x + 1)
    lin = linearize(model, f, x, check=True)
    if case in ("laplacian", "biharmonic"):  # the shortcuts are taken
        first, last = lin.layers["0.weight"], lin.layers["4.weight"]
        site = taylorc.compile(model, case).taylor_graph(x).sites[0]
        directions = [s for s, c in enumerate(site.columns) if s and not c.zero_input]
        assert first.split_columns()[1] == directions  # shared; known-zero inputs skipped
        assert len(directions) < first.S - 1 and site.columns[-1].zero_input
        assert last.live is not None and 0 not in last.live
    J = oracle_jacobian(model, nested, x)  # (N * M, P)
    N = x.shape[0]
    grad = torch.cat([to_vector(layer_gradient(L, lin.r), L) for L in lin.layers.values()])
    torch.testing.assert_close(grad, J.T @ lin.r.reshape(-1) / N)
    dirs = [
        {w: torch.randn(L.d_out, L.d_in, dtype=DT) for w, L in lin.layers.items()} for _ in "ab"
    ]
    dirs[1].pop("0.weight")  # a direction missing a layer: zero there
    for d, got in zip(dirs, jvp(lin, *dirs)):
        v = torch.cat(
            [
                to_vector(d.get(w, torch.zeros(L.d_out, L.d_in, dtype=DT)), L)
                for w, L in lin.layers.items()
            ]
        )
        torch.testing.assert_close(got, (J @ v).reshape(N, -1).T)


def _random_sizes(seed, N, S):
    """``(generator, dtype, (N, S, d_in, d_out, M))`` of a random hand-built layer."""
    dt = torch.float32 if seed % 4 == 3 else DT
    return (
        torch.Generator().manual_seed(seed),
        dt,
        (N, S, 1 + seed % 3 * 3, 1 + seed % 2 * 5, 1 + seed % 2),
    )


def _check_gradient_and_jvp(layer, g, M, gen):
    """layer_gradient and jvp against einsums of Ĝ = 1/N Σ r g Z̃ᵀ and J v = Σ g · (V Z̃)."""
    from taylorc.optim.linearization import Linearization

    Z, dt, N = layer.Z, g.dtype, g.shape[1]
    r = torch.randn(N, M, generator=gen, dtype=dt)
    tol = dict(rtol=1e-4, atol=1e-5) if dt == torch.float32 else {}
    torch.testing.assert_close(
        layer_gradient(layer, r), torch.einsum("nm,mnso,nsi->oi", r, g, Z) / N, **tol
    )
    V = [torch.randn(layer.d_out, layer.d_in, generator=gen, dtype=dt) for _ in "ab"]
    lin = Linearization(r, {"w": layer})
    for v, got in zip(V, jvp(lin, *({"w": v} for v in V))):
        torch.testing.assert_close(got, torch.einsum("mnso,oi,nsi->mn", g, v, Z), **tol)


@pytest.mark.parametrize("seed", range(8))
def test_column_shortcuts_equal_the_formula(seed):
    """layer_gradient and jvp on hand-built layers with random dead columns (g = 0), columns
    shared by all points (zero or not, bias entry or not), M = 1 or 2, float32 and float64,
    against einsums of Ĝ = 1/N Σ r g Z̃ᵀ and J v = Σ g · (V Z̃)."""
    from taylorc.optim.linearization import Layer

    gen, dt, (N, S, d_in, d_out, M) = _random_sizes(seed, 1 + seed % 5, 2 + seed % 4)
    X = torch.randn(N, S, d_in, generator=gen, dtype=dt)
    g = torch.randn(M, N, S, d_out, generator=gen, dtype=dt)
    live = tuple(s for s in range(S) if s == 0 or torch.rand(1, generator=gen) < 0.6)
    dead = [s for s in range(S) if s not in live]
    g[:, :, dead] = 0
    shared = tuple(s for s in range(S) if torch.rand(1, generator=gen) < 0.5)
    for s in shared:
        X[:, s] = 0 if s % 2 else X[0, s].clone()
    e = (torch.rand(S, generator=gen) < 0.5).to(dt) if seed % 3 else None
    layer = Layer("w", "b" if e is not None else None, X, g, e, (), live, shared)
    assert layer.split_columns() == (
        [s for s in live if s not in shared],
        [s for s in live if s in shared],
    )
    _check_gradient_and_jvp(layer, g, M, gen)


def _factor_some(t, cols, gen, lead):
    """``t (*lead, S, d)`` with the columns ``cols`` replaced by products ``P ⊙ Q[j]``, and
    its :class:`Columns` holding them factored."""
    from taylorc.methods.layer_graph import Columns

    d, S = t.shape[-1], t.shape[-2]
    P = torch.randn(*t.shape[:lead], d, generator=gen, dtype=t.dtype)
    Q = torch.randn(len(cols), d, generator=gen, dtype=t.dtype)
    if cols:
        t[..., list(cols), :] = P.unsqueeze(-2) * Q
    rest = tuple(s for s in range(S) if s not in cols)
    factored = ((tuple(cols), P, Q),) if cols else ()
    return t, Columns(S, t[..., list(rest), :].clone(), rest, factored)


@pytest.mark.parametrize("seed", range(8))
def test_factored_columns_equal_the_formula(seed):
    """Layers whose X and g hold some columns as products P ⊙ Q (the sites' Factored
    columns): A, B (expand and reduce), the gradient and J v equal the einsum formulas on
    the multiplied-out tensors, with shared, dead and bias columns, M = 1 or 2."""
    from taylorc.optim.linearization import Layer

    gen, dt, (N, S, d_in, d_out, M) = _random_sizes(100 + seed, 2 + seed % 4, 3 + seed % 3)
    pick = lambda p: [s for s in range(S) if torch.rand(1, generator=gen) < p]  # noqa: E731
    X = torch.randn(N, S, d_in, generator=gen, dtype=dt)
    g = torch.randn(M, N, S, d_out, generator=gen, dtype=dt)
    fx = pick(0.4)
    shared = tuple(s for s in pick(0.5) if s not in fx)
    for s in shared:
        X[:, s] = X[0, s].clone()
    live = tuple(s for s in range(S) if s == 0 or torch.rand(1, generator=gen) < 0.7)
    g[:, :, [s for s in range(S) if s not in live]] = 0
    fg = [s for s in pick(0.5) if s in live]
    X, xc = _factor_some(X, fx, gen, 1)
    g, gc = _factor_some(g, fg, gen, 2)
    e = (torch.rand(S, generator=gen) < 0.5).to(dt) if seed % 3 else None
    layer = Layer("w", "b" if e is not None else None, xc, gc, e, (), live, shared)
    assert torch.equal(layer.X, X) and torch.equal(layer.g, g)
    Z = layer.Z
    tol = dict(rtol=1e-4, atol=1e-5) if dt == torch.float32 else {}
    A, B = factors.layer_factors(layer, "expand")
    torch.testing.assert_close(A, torch.einsum("nsi,nsj->ij", Z, Z) / (N * S), **tol)
    torch.testing.assert_close(B, torch.einsum("mnso,mnsp->op", g, g) / N, **tol)
    A, B = factors.layer_factors(layer, "reduce")
    torch.testing.assert_close(A, torch.einsum("ni,nj->ij", Z.mean(1), Z.mean(1)) / N, **tol)
    torch.testing.assert_close(B, torch.einsum("mno,mnp->op", g.sum(2), g.sum(2)) / N, **tol)
    _check_gradient_and_jvp(layer, g, M, gen)


@pytest.mark.parametrize("name", ["laplacian", "burgers"])
def test_gramian_equals_dense_oracle(name):
    model = mlp(3, [5, 4])
    xi, xb = torch.rand(6, 3, dtype=DT), torch.rand(3, 3, dtype=DT)
    res = {"interior": residual(model, name), "boundary": lambda x: model(x) - 1.0}
    G = gramian(model, res, {"interior": xi, "boundary": xb})
    Ji = oracle_jacobian(model, residual(model, name, "nested"), xi)
    Jb = oracle_jacobian(model, lambda x: model(x) - 1.0, xb)
    torch.testing.assert_close(G, Ji.T @ Ji / 6 + Jb.T @ Jb / 3)


def reference_factors(model, op, x, approx):
    """Loops over points and columns, from the raw sites run: {weight: (A, B)}."""
    tg = op.taylor_graph(x)
    run = tg.run(x)
    r = run.outputs.reshape(x.shape[0], -1)
    leaves = [run.taps[s.name] for s in tg.sites]
    gs = torch.autograd.grad(r.sum(), leaves)
    out = {}
    for site, g in zip(tg.sites, gs):
        Z = run.inputs[site.name].detach()
        N, S = Z.shape[:2]
        Zt = [
            [
                torch.cat([Z[n, s], Z.new_ones(1) if c.kind == "value" else Z.new_zeros(1)])
                for s, c in enumerate(site.columns)
            ]
            for n in range(N)
        ]
        if approx == "expand":
            A = sum(torch.outer(Zt[n][s], Zt[n][s]) for n in range(N) for s in range(S)) / (N * S)
            B = sum(torch.outer(g[n, s], g[n, s]) for n in range(N) for s in range(S)) / N
        else:
            zbar = [sum(Zt[n]) / S for n in range(N)]
            A = sum(torch.outer(z, z) for z in zbar) / N
            B = sum(torch.outer(g[n].sum(0), g[n].sum(0)) for n in range(N)) / N
        out[site.weight] = (A, B)
    return out


@pytest.mark.parametrize("widths", [[5, 4], [5]])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("operator", ["laplacian", "biharmonic"])
def test_factors_equal_reference(approx, operator, widths):
    """(One hidden layer under the Laplacian: the direction blocks held as products.)"""
    model = mlp(3, widths)
    op = taylorc.compile(model, operator)
    x = torch.rand(5, 3, dtype=DT)
    got = kfac_factors(model, {"t": lambda x: op(x)}, {"t": x}, approx)["t"]
    ref = reference_factors(model, op, x, approx)
    assert set(got) == set(ref) == {f"{2 * i}.weight" for i in range(len(widths) + 1)}
    first = op.taylor_graph(x).sites[0]
    assert first.columns[-1].zero_input  # the first layer's top column is zero, still in S
    for w in ref:
        torch.testing.assert_close(got[w][0], ref[w][0])
        torch.testing.assert_close(got[w][1], ref[w][1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (1, 1), (7, 3), (300, 65), (40, 300)])
def test_gram_equals_sum_of_outer_products(dtype, shape, monkeypatch):
    gen = torch.Generator().manual_seed(shape[0])
    F = torch.randn(shape[0], 2 * shape[1], dtype=dtype, generator=gen)[:, ::2]  # strided
    want = torch.einsum("mi,mj->ij", F.double(), F.double()).to(dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-5  # of the largest entry (the diagonal's)
    atol = tol * max(want.abs().amax().item() if want.numel() else 0.0, 1.0)
    calls = []
    syrks, _ = factors._syrk_backend()
    syrk = syrks[dtype]
    monkeypatch.setitem(syrks, dtype, lambda *a, **k: calls.append(1) or syrk(*a, **k))
    big = shape[0] * shape[1] ** 2 >= factors.SYRK_MIN
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # one thread and a big F: ?syrk; otherwise lower_gram (k > 256: split)
            torch.set_num_threads(n)
            calls.clear()
            got = gram(F)
            assert len(calls) == (n == 1 and big)
            assert got.dtype == dtype and got.shape == (shape[1], shape[1])
            torch.testing.assert_close(got, want, atol=atol, rtol=tol)
            assert torch.equal(got, got.T)  # ?syrk: both triangles, not only the one BLAS writes
            P = F.clone().requires_grad_()  # differentiable input: the autograd matmul
            torch.testing.assert_close(gram(P), want, atol=atol, rtol=tol)
    finally:
        torch.set_num_threads(threads)


def layer_blocks(model, J, N):
    """The oracle Gramian's diagonal blocks per layer, ``J (N, P)`` in parameter order."""
    G, blocks, i = J.T @ J / N, {}, 0
    mods = [m for m in model if isinstance(m, nn.Linear)]
    for k, m in zip(range(0, len(model), 2), mods):
        p = m.weight.numel() + m.bias.numel()
        blocks[f"{k}.weight"] = G[i : i + p, i : i + p]
        i += p
    return blocks


def kron_block(A, B, d_out, d_in):
    """A ⊗ B re-ordered to the ``cat(W.flatten(), b)`` layout of the oracle."""
    M = torch.kron(B, A)  # row-major vec of (d_out, d_in+1)
    idx = torch.arange(d_out * (d_in + 1)).reshape(d_out, d_in + 1)
    order = torch.cat([idx[:, :-1].flatten(), idx[:, -1]])
    return M[order][:, order]


def test_exact_cases_boundary():
    model = mlp(3, [5, 4])
    f = lambda x: model(x) - 2.0
    for N, layers in ((1, ["0.weight", "2.weight", "4.weight"]), (7, ["4.weight"])):
        x = torch.rand(N, 3, dtype=DT)
        fac = kfac_factors(model, {"b": f}, {"b": x})["b"]
        blocks = layer_blocks(model, oracle_jacobian(model, f, x), N)
        for w in layers:
            W = dict(model.named_parameters())[w]
            torch.testing.assert_close(kron_block(*fac[w], *W.shape), blocks[w])
    # N = 7 on an inner layer is an approximation: it must differ (the test can fail)
    A, B = fac["0.weight"]
    assert not torch.allclose(kron_block(A, B, 5, 3), blocks["0.weight"])


def test_interior_value_operator_equals_boundary_kfac_and_duplicates():
    model = mlp(3, [5, 4])
    u = taylorc.compile(model, "u")
    x = torch.rand(6, 3, dtype=DT)
    got = kfac_factors(
        model, {"i": lambda x: u(x) - 1.0, "b": lambda x: model(x) - 1.0}, {"i": x, "b": x}
    )
    lap = taylorc.compile(model, "laplacian")
    twice = kfac_factors(model, {"i": lambda x: lap(x)}, {"i": torch.cat([x, x])})["i"]
    once = kfac_factors(model, {"i": lambda x: lap(x)}, {"i": x})["i"]
    for w in got["i"]:
        for k in range(2):
            torch.testing.assert_close(got["i"][w][k], got["b"][w][k])
            torch.testing.assert_close(twice[w][k], once[w][k])


def spd(n, gen):
    M = torch.randn(n, n, dtype=DT, generator=gen)
    return M @ M.T + 0.1 * torch.eye(n, dtype=DT)


@pytest.mark.parametrize("terms", [1, 2, 3])
def test_kronecker_sum_solve_equals_dense(terms):
    gen = torch.Generator().manual_seed(terms)
    pairs = [(spd(4, gen), spd(3, gen)) for _ in range(terms)]
    G = torch.randn(3, 4, dtype=DT, generator=gen)
    X = KroneckerSum(pairs).solve(G)
    M = sum(torch.kron(A, B) for A, B in pairs)  # acts on column-major vec
    x = torch.linalg.solve(M, G.T.reshape(-1))
    torch.testing.assert_close(X, x.reshape(4, 3).T)


def poisson2d(seed=0, width=64, n_i=900, n_b=120):
    torch.manual_seed(seed)
    model = mlp(2, [width])
    lap = taylorc.compile(model, "laplacian")
    u = lambda x: torch.sin(math.pi * x).prod(1, keepdim=True)
    res = {
        "interior": lambda x: -lap(x) - 2 * math.pi**2 * u(x),
        "boundary": lambda x: model(x) - u(x),
    }
    xb = torch.rand(n_b, 2, dtype=DT)
    face = torch.randint(0, 2, (n_b,))
    xb[torch.arange(n_b), face] = torch.randint(0, 2, (n_b,)).to(DT)
    points = {"interior": torch.rand(n_i, 2, dtype=DT), "boundary": xb}
    return model, res, points, u


def flat(blocks, model):
    """Blocks dict -> vector in parameter order (W then b per layer)."""
    params = dict(model.named_parameters())
    return torch.cat(
        [torch.cat([X[:, :-1].flatten(), X[:, -1]]) for w, X in blocks.items() if w in params]
    )


def test_kfac_star_solves_the_2x2_quadratic_model():
    model, res, points, _ = poisson2d(width=8, n_i=30, n_b=10)
    lam = 1e-3
    opt = KFAC(model, res, lr="auto", damping=lam, ema=0.5)
    opt.step(points)
    prev = flat(opt.last["update"], model)
    J = {t: oracle_jacobian(model, residual_nested(model, t, res), points[t]) for t in res}
    G = sum(J[t].T @ J[t] / points[t].shape[0] for t in res)
    opt.step(points)
    g, D = flat(opt.last["grad"], model), flat(opt.last["Delta"], model)
    M = torch.stack([D, prev], 1)
    want = torch.linalg.solve(M.T @ (G + lam * torch.eye(len(g), dtype=DT)) @ M, -M.T @ g)
    torch.testing.assert_close(torch.tensor([opt.last["alpha"], opt.last["mu"]], dtype=DT), want)


def _exact_2x2(a, b, c, r1, r2):
    """The 2x2 solve in exact rational arithmetic (the oracle for ``solve_2x2``)."""
    from fractions import Fraction as F

    a, b, c, r1, r2 = map(F, (a, b, c, r1, r2))
    det = a * c - b * b
    return float((c * r1 - b * r2) / det), float((a * r2 - b * r1) / det)


def test_solve_2x2_equals_dense_solves():
    """KFAC*'s closed-form 2x2 solve: regular systems against torch.linalg.solve and
    exact rationals (KFAC*'s second step, ‖δ‖ ≈ 1e-6 ‖Δ‖ and nearly parallel, once took
    a rank-truncated fallback; extreme magnitudes must not overflow); singular ones
    (δ ∥ Δ, a zero direction) must still solve a consistent system."""
    from taylorc.optim.step_rules import solve_2x2

    def solve(M, r):
        return torch.tensor(solve_2x2(M[0][0], M[0][1], M[1][1], *r), dtype=DT)

    gen = torch.Generator().manual_seed(11)
    for _ in range(50):
        V = torch.randn(2, 2, dtype=DT, generator=gen)
        M = V @ V.T + 1e-3 * torch.eye(2, dtype=DT)
        r = torch.randn(2, dtype=DT, generator=gen) * 10.0 ** torch.randint(-3, 4, ()).item()
        got = solve(M.tolist(), r.tolist())
        torch.testing.assert_close(got, torch.linalg.solve(M, r), rtol=1e-10, atol=0)
    second_step = (
        10.279386463178232, 1.0229798891081785e-05, 1.0184706424125469e-11,
        15.76340016035781, 1.5260933548366835e-05,
    )  # fmt: skip
    for case in (
        second_step,
        (1e100, 0.0, 1e100, 1e300, 1e300),
        (3e-162, 0, 3e-162, 1e-170, 1e-170),
    ):
        got = torch.tensor(solve_2x2(*case), dtype=DT)
        torch.testing.assert_close(
            got, torch.tensor(_exact_2x2(*case), dtype=DT), rtol=1e-6, atol=0
        )
    for M in ([[4.0, 6.0], [6.0, 9.0]], [[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]):
        Mt = torch.tensor(M, dtype=DT)
        r = Mt @ torch.tensor([0.3, -0.7], dtype=DT)  # consistent
        got = solve(M, r.tolist())
        assert torch.isfinite(got).all()
        torch.testing.assert_close(Mt @ got, r, rtol=1e-12, atol=1e-15)


def residual_nested(model, term, res):
    """The same residual as poisson2d's with a nested Laplacian."""
    if term == "boundary":
        return res[term]
    lap = taylorc.compile(model, "laplacian", method="nested")
    u = lambda x: torch.sin(math.pi * x).prod(1, keepdim=True)
    return lambda x: -lap(x) - 2 * math.pi**2 * u(x)


def test_large_damping_step_tends_to_scaled_gradient():
    model, res, points, _ = poisson2d(width=8, n_i=30, n_b=10)
    lam = 1e8
    opt = KFAC(model, res, lr=1.0, damping=lam, ema=0.0)
    opt.step(points)
    # Ā ≈ λI and B̄ ≈ λI for both terms: Δ → −ĝ / (2 λ²)
    for w, D in opt.last["Delta"].items():
        torch.testing.assert_close(D, -opt.last["grad"][w] / (2 * lam**2), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(damping=-1e-9), "damping must be a finite number >= 0"),
        (dict(damping=math.nan), "damping must be a finite number >= 0"),
        (dict(damping=math.inf), "damping must be a finite number >= 0"),
        (dict(damping="1e-9"), "damping must be a real number"),
        (dict(ema=torch.tensor([0.5, 0.5])), "ema must be a real number"),
        (dict(ema=1.0), r"ema must be in \[0, 1\)"),
        (dict(ema=-0.1), r"ema must be in \[0, 1\)"),
        (dict(ema=math.nan), r"ema must be in \[0, 1\)"),
    ],
)
def test_bad_damping_or_ema_is_refused(bad, match):
    model, res, _, _ = poisson2d(width=4, n_i=5, n_b=5)
    for make in (KFAC, ENGD):
        with pytest.raises(ValueError, match=match):
            make(model, res, **bad)
    for ok in (
        dict(damping=0.0, ema=0.0),
        dict(damping=1, ema=0.99),
        dict(damping=np.float32(1e-9), ema=torch.tensor(0.9)),
    ):
        KFAC(model, res, **ok), ENGD(model, res, **ok)


def test_poisson2d_smoke_kfac_star():
    model, res, points, u = poisson2d()
    opt = KFAC(model, res, lr="auto", damping=1e-10, ema=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 900 points: intra-op threads only add overhead (and on a loaded CI)
    try:
        for _ in range(300):
            opt.step(points)
    finally:
        torch.set_num_threads(threads)
    x = torch.rand(4000, 2, dtype=DT)
    with torch.no_grad():
        err = ((model(x) - u(x)).norm() / u(x).norm()).item()
    assert err <= 3e-3, err


def test_state_dict_round_trip_and_float32():
    model, res, points, _ = poisson2d(width=8, n_i=30, n_b=10)
    twin, _, _, _ = poisson2d(width=8, n_i=30, n_b=10)
    lap2 = taylorc.compile(twin, "laplacian")
    u = lambda x: torch.sin(math.pi * x).prod(1, keepdim=True)
    res2 = {
        "interior": lambda x: -lap2(x) - 2 * math.pi**2 * u(x),
        "boundary": lambda x: twin(x) - u(x),
    }
    a = KFAC(model, res, lr="auto", ema=0.7)
    for _ in range(3):
        a.step(points)
    twin.load_state_dict(model.state_dict())
    b = KFAC(twin, res2, lr="auto", ema=0.7)
    b.load_state_dict(a.state_dict())
    a.step(points), b.step(points)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    model.float()
    single = {k: v.float() for k, v in points.items()}
    losses = [sum(KFAC(model, res, lr="line_search", momentum=0.5).step(single).values())]
    assert all(math.isfinite(v) for v in losses)


def test_engd_and_line_search_decrease_the_loss():
    for make in (
        lambda m, r: ENGD(m, r, damping=1e-10, ema=0.3),
        lambda m, r: KFAC(m, r, lr="line_search", momentum=0.3),
    ):
        model, res, points, _ = poisson2d(width=8, n_i=50, n_b=20)
        opt = make(model, res)
        with pytest.raises(ValueError, match="no points for the terms"):
            opt.step({"interior": points["interior"]})
        first = sum(opt.step(points).values())
        for _ in range(4):
            last = sum(opt.step(points).values())
        assert last < 0.5 * first


class Scaled(nn.Module):
    """A learnable output scale: a parameter outside every linear site."""

    def __init__(self):
        super().__init__()
        self.net, self.scale = mlp(2, [4]), nn.Parameter(torch.ones((), dtype=DT))

    def forward(self, x):
        return self.scale * self.net(x)


def test_parameters_outside_sites_are_named():
    model = Scaled()
    lap = taylorc.compile(model, "laplacian")
    opt = KFAC(model, {"i": lambda x: lap(x)})
    with pytest.raises(KFACError, match="scale"):
        opt.step({"i": torch.rand(4, 2, dtype=DT)})
    nested = taylorc.compile(model.net, "laplacian", method="nested")
    with pytest.raises(KFACError, match="nested"):
        KFAC(model.net, {"i": lambda x: nested(x)}).step({"i": torch.rand(4, 2, dtype=DT)})


def test_frozen_first_layer():
    """Outputs of a frozen layer on the data need no gradient (no tap there): its g is
    zero, and the trainable layers' Jacobian still equals the oracle's."""
    model = mlp(3, [5, 4])
    model[0].requires_grad_(False)
    x = torch.rand(4, 3, dtype=DT)
    lin = linearize(model, residual(model, "laplacian"), x, check=True)
    assert "0.weight" not in lin.layers  # frozen: not in θ
    trainable = list(lin.layers)
    J = torch.cat(
        [
            to_vector(
                torch.einsum("mnso,nsi->nmoi", lin.layers[w].g, lin.layers[w].Z), lin.layers[w]
            )
            for w in trainable
        ],
        -1,
    )
    model[0].requires_grad_(True)  # for the oracle: the same values
    want = oracle_jacobian(model, residual(model, "laplacian", "nested"), x)
    torch.testing.assert_close(J.reshape(want.shape[0], -1), want[:, -J.shape[-1] :])


def test_frozen_parameters_stay_out_of_the_step():
    """A frozen middle layer and the frozen bias of a trainable layer are not in θ: ENGD's
    step (ema 0, lr 1) equals −(JᵀJ/N + λI)⁻¹ Jᵀr/N over the trainable parameters only
    (autograd oracle), KFAC moves no frozen parameter, and its state_dict packs."""
    torch.manual_seed(0)
    model = mlp(3, [5, 4])
    model[2].requires_grad_(False)
    model[4].bias.requires_grad_(False)
    frozen = [model[2].weight, model[2].bias, model[4].bias]
    before = [p.detach().clone() for p in frozen]
    x = torch.rand(6, 3, dtype=DT)
    lap = taylorc.compile(model, "laplacian")
    res = {"i": lambda x: -lap(x) - x[:, :1]}
    theta = [p for p in model.parameters() if p.requires_grad]
    r = res["i"](x).reshape(-1)
    J = torch.stack(
        [
            torch.cat([g.flatten() for g in torch.autograd.grad(rn, theta, retain_graph=True)])
            for rn in r
        ]
    )
    lam, N = 1e-3, x.shape[0]
    want = -torch.linalg.solve(
        J.T @ J / N + lam * torch.eye(J.shape[1], dtype=DT), J.T @ r.detach() / N
    )
    start = torch.cat([p.detach().flatten() for p in theta])
    torch.testing.assert_close(gramian(model, res, {"i": x}), J.T @ J / N)
    ENGD(model, res, lr=1.0, damping=lam, ema=0.0).step({"i": x})
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in theta]) - start, want)
    opt = KFAC(model, res, lr="auto", damping=lam)
    for _ in range(2):
        opt.step({"i": x})
    for p, p0 in zip(frozen, before):
        assert torch.equal(p, p0)
    KFAC(model, res, lr="auto", damping=lam).load_state_dict(opt.state_dict())
    model[4].bias.requires_grad_(True)
    model[4].weight.requires_grad_(False)  # a trainable bias on a frozen weight: refused, named
    with pytest.raises(KFACError, match="4.bias"):
        KFAC(model, res).step({"i": x})


def test_resume_between_inversions_equals_uninterrupted_run():
    """With invert_every > 1, an optimiser restored mid-period solves with the factors
    of the last inversion, as the uninterrupted run does (oracle: that run)."""
    kw = dict(lr="auto", ema=0.7, damping=1e-4, update_every=2, invert_every=3)
    model, res, points, _ = poisson2d(width=8, n_i=30, n_b=10)
    a = KFAC(model, res, **kw)
    for _ in range(5):
        a.step(points)
    twin, res2, _, _ = poisson2d(width=8, n_i=30, n_b=10)
    b = KFAC(twin, res2, **kw)
    for _ in range(2):
        b.step(points)
    c = KFAC(twin, res2, **kw)
    c.load_state_dict(b.state_dict())
    for _ in range(3):
        c.step(points)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)


class TiedTwice(nn.Module):
    """One layer applied twice to the same input (identical nodes that CSE must not merge
    at the sites' outputs) and one applied twice inside residual connections."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.a(x)) * torch.tanh(self.a(x))
        h = h + torch.tanh(self.b(h))
        h = h + torch.tanh(self.b(h))
        return self.c(h) + self.c(h)


@pytest.mark.parametrize("name", ["laplacian", "biharmonic"])
def test_tied_weights_jacobian_equals_nested_jacobian(name):
    torch.manual_seed(0)
    model = TiedTwice().double()
    x = torch.rand(3, 3, dtype=DT)
    lin = linearize(model, residual(model, name), x, check=True)
    J = torch.cat(
        [to_vector(torch.einsum("mnso,nsi->nmoi", L.g, L.Z), L) for L in lin.layers.values()], -1
    ).reshape(x.shape[0], -1)
    torch.testing.assert_close(J, oracle_jacobian(model, residual(model, name, "nested"), x))


def test_float32_factors_are_damped_in_float64():
    """A float32 model's direction equals the float64 solve of its own float32 factors
    plus λI: λ = 1e-6 is below the rounding of a float32 factor (a singular one: ema 0,
    two boundary points), so damping them in float32 changed the direction by up to 2%."""
    torch.manual_seed(0)
    model = mlp(2, [6]).float()
    lam = 1e-6
    opt = KFAC(model, {"b": lambda x: model(x)[:, 0] - 1}, lr=0.0, damping=lam, ema=0.0)
    opt.step({"b": torch.rand(2, 2)})
    for name, p in model.named_parameters():
        if "A" not in opt.state.get(p, {}):
            continue
        ((A, B),) = [(opt.state[p]["A"][t], opt.state[p]["B"][t]) for t in opt.state[p]["A"]]
        eye = lambda M: torch.eye(M.shape[0], dtype=DT)  # noqa: E731
        pairs = [(A.double() + lam * eye(A), B.double() + lam * eye(B))]
        want = -KroneckerSum(pairs).solve(opt.last["grad"][name].double())
        assert opt.last["Delta"][name].dtype == torch.float32
        torch.testing.assert_close(opt.last["Delta"][name].double(), want, rtol=1e-5, atol=0)
