"""The sample-space kernel, ENGD's Woodbury solve and SPRING, against dense linear algebra
on the autograd Jacobian of the residuals (float64)."""

import math

import pytest
import torch
from helpers import mlp
from test_kfac import oracle_jacobian, residual, value_op

import taylorc
from taylorc.optim import ENGD, SPRING
from taylorc.optim.factors import lower_gram
from taylorc.optim.linearization import linearize
from taylorc.optim.woodbury import jacobian_product, kernel, sample_space_step

DT = torch.float64


def problem(widths, interior="laplacian", method="collapsed"):
    """A net, its residual terms (nonlinear for Burgers) and points: interior and boundary."""
    torch.manual_seed(len(widths))
    model = mlp(3, widths)
    gen = torch.Generator().manual_seed(1)
    points = {
        "interior": torch.rand(6, 3, dtype=DT, generator=gen),
        "boundary": torch.rand(4, 3, dtype=DT, generator=gen),
    }
    return model, terms_of(model, interior, method), points


def terms_of(model, interior, method):
    return {
        "interior": residual(model, interior, method),
        "boundary": lambda x: value_op(model)(x) - torch.sin(x[:, :1]),
    }


def scaled_jacobian(model, interior, points):
    """``Ĵ = [J_t / √N_t]`` and ``r̂ = [r_t / √N_t]`` by autograd of each residual row of the
    nested-autograd residuals (independent of the Taylor graph)."""
    Js, rs = [], []
    for t, f in terms_of(model, interior, "nested").items():
        x = points[t]
        Js.append(oracle_jacobian(model, f, x) / math.sqrt(x.shape[0]))
        rs.append(f(x).detach().reshape(-1) / math.sqrt(x.shape[0]))
    return torch.cat(Js), torch.cat(rs)


def lins_of(model, terms, points):
    return [linearize(model, f, points[t]) for t, f in terms.items()]


def blocks_to_vector(model, blocks):
    """Blocks ``[W | b]`` by weight name -> a vector in ``model.parameters()`` order."""
    out = []
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            block = blocks.get(name)
            out.append(torch.zeros_like(p).flatten() if block is None else block[:, :-1].flatten())
            out.append(torch.zeros(p.shape[0], dtype=p.dtype) if block is None else block[:, -1])
    return torch.cat(out)


@pytest.mark.parametrize("interior", ["laplacian", "burgers"])
def test_kernel_equals_the_jacobian_gram(interior):
    # [40, 40]: the hidden layer takes the Gram-product route, the first the Jacobian one
    model, terms, points = problem([40, 40] if interior == "laplacian" else [5, 4], interior)
    J, r = scaled_jacobian(model, interior, points)
    lins = lins_of(model, terms, points)
    K = kernel(lins)
    torch.testing.assert_close(K, J @ J.T, rtol=1e-12, atol=1e-12 * (J @ J.T).abs().max().item())
    phi = {n: torch.randn_like(L.g.new_zeros(L.d_out, L.d_in)) for n, L in lins[0].layers.items()}
    v = blocks_to_vector(model, phi)
    torch.testing.assert_close(jacobian_product(lins, phi), J @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 33, 64])
def test_gram_mirrors_the_lower_blocks(n):
    # leaf=4: three levels of row blocks at n = 33, odd splits included
    J = torch.randn(n, 5, dtype=DT, generator=torch.Generator().manual_seed(n))
    got = lower_gram(J.T, leaf=4)  # J Jᵀ
    assert torch.equal(got, got.T)
    torch.testing.assert_close(got, J @ J.T, rtol=1e-13, atol=1e-13)


def test_the_square_kernel_with_split_and_mirrored_blocks_equals_the_jacobian_gram():
    # 300 + 40 rows: the diagonal Jacobian blocks split (lower_gram's leaf is 256), the
    # boundary x interior block is the mirror of the one above it
    model, terms, _ = problem([5, 4], "laplacian")
    gen = torch.Generator().manual_seed(2)
    points = {"interior": torch.rand(300, 3, dtype=DT, generator=gen)}
    points["boundary"] = torch.rand(40, 3, dtype=DT, generator=gen)
    lins = lins_of(model, terms, points)
    K = kernel(lins)
    assert torch.equal(K[:300, 300:], K[300:, :300].T)
    J, _ = scaled_jacobian(model, "laplacian", points)
    torch.testing.assert_close(K, J @ J.T, rtol=1e-12, atol=1e-12 * (J @ J.T).abs().max().item())


class TwoInputNet(torch.nn.Module):
    """``u(a, x) = Σ_k b_k(a) t_k(x)`` on rows ``[a (2), x (3)]``: a DeepONet at one
    (function, point) pair a row; the operator differentiates x only, so the derivative
    columns of the ``a`` MLP's layers are zero (constant), and the kernel skips them."""

    def __init__(self):
        super().__init__()
        self.a, self.x = mlp(2, [40, 40], out=5), mlp(3, [40, 40], out=5)

    def forward(self, z):
        return (self.a(z[:, :2]) * torch.tanh(self.x(z[:, 2:]))).sum(-1, keepdim=True)


def test_the_kernel_skips_zero_columns_and_equals_the_jacobian_gram():
    torch.manual_seed(0)
    model = TwoInputNet().double()
    z = torch.rand(9, 5, dtype=DT, generator=torch.Generator().manual_seed(3))
    names = ["a0", "a1", "x", "y", "t"]
    op = "u_t - u_xx - u_yy + u_xy"

    def residual_by(method):
        terms = taylorc.compile(model, {"pde": op, "u": "u"}, coords=names, method=method)
        return lambda x: (lambda d: d["pde"] + d["u"] ** 2 - x[:, 2:3])(terms(x))

    (lin,) = lins_of(model, {"interior": residual_by("collapsed")}, {"interior": z})
    kept = {n: L.nonzero_columns() for n, L in lin.layers.items()}
    S = lin.layers["x.2.weight"].S
    assert S > 1 and all(len(kept[f"a.{i}.weight"]) == 1 for i in (0, 2, 4)), kept  # value only
    assert kept["x.2.weight"] == kept["x.4.weight"] == list(range(S)), kept
    J = oracle_jacobian(model, residual_by("nested"), z) / 3.0  # 1/√N, N = 9
    K = kernel([lin])
    torch.testing.assert_close(K, J @ J.T, rtol=1e-12, atol=1e-12 * (J @ J.T).abs().max().item())


def test_woodbury_equals_dense_and_spring_recurrence():
    model, terms, points = problem([5, 4], "burgers")
    J, r = scaled_jacobian(model, "burgers", points)
    lam = 1e-3
    dense = torch.linalg.solve(J.T @ J + lam * torch.eye(J.shape[1], dtype=DT), J.T @ r)
    lins = lins_of(model, terms, points)
    phi = sample_space_step(lins, lam)
    torch.testing.assert_close(blocks_to_vector(model, phi), dense, rtol=1e-10, atol=1e-12)
    # SPRING: φ = μ φ0 + Ĵᵀ (K + λI)⁻¹ (r̂ − μ Ĵ φ0)
    mu = 0.7
    prev = {n: 0.1 * torch.randn(L.d_out, L.d_in, dtype=DT) for n, L in lins[0].layers.items()}
    p0 = blocks_to_vector(model, prev)
    K = J @ J.T + lam * torch.eye(J.shape[0], dtype=DT)
    want = mu * p0 + J.T @ torch.linalg.solve(K, r - mu * J @ p0)
    got = sample_space_step(lins, lam, mu, prev)
    torch.testing.assert_close(blocks_to_vector(model, got), want, rtol=1e-10, atol=1e-12)


def test_engd_woodbury_dense_and_spring_take_the_same_step():
    steps = {}
    for name, make in {
        "dense": lambda m, t: ENGD(m, t, lr=0.5, damping=1e-3, ema=0.0),
        "woodbury": lambda m, t: ENGD(m, t, lr=0.5, damping=1e-3, solve="woodbury"),
        "auto": lambda m, t: ENGD(m, t, lr=0.5, damping=1e-3, solve="auto"),
        "spring0": lambda m, t: SPRING(m, t, lr=0.5, damping=1e-3, momentum=0.0),
    }.items():
        model, terms, points = problem([5, 4], "burgers")
        opt = make(model, terms)
        for _ in range(2):
            opt.step(points)
        steps[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for name in ("woodbury", "auto", "spring0"):
        torch.testing.assert_close(steps[name], steps["dense"], rtol=1e-10, atol=1e-12)


def test_spring_trains_and_refuses_bad_settings():
    model, terms, points = problem([5, 4])
    opt = SPRING(model, terms, damping=1e-6, momentum=0.5)
    first = sum(opt.step(points).values())
    for _ in range(4):
        last = sum(opt.step(points).values())
    assert last < 0.5 * first
    with pytest.raises(ValueError, match="momentum"):
        SPRING(model, terms, momentum=1.0)
    with pytest.raises(ValueError, match="ema must be 0"):
        ENGD(model, terms, solve="woodbury", ema=0.3)
    with pytest.raises(ValueError, match="solve"):
        ENGD(model, terms, solve="cholesky")


def test_spring_state_dict_resumes_the_momentum():
    """A SPRING restored from its state_dict takes the same next step as the original."""
    import copy

    model, terms, points = problem([5, 4])
    opt = SPRING(model, terms, lr=0.5, damping=1e-6, momentum=0.8)
    for _ in range(2):
        opt.step(points)
    twin = copy.deepcopy(model)
    restored = SPRING(twin, terms_of(twin, "laplacian", "collapsed"), lr=0.5, damping=1e-6)
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[0]["momentum"] == 0.8
    opt.step(points)
    restored.step(points)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class _Spy:
    """A two-rank reducer's ``gather`` in one process: records what this rank sends and
    returns ``flats`` (both ranks' buffers, recorded before) or zeros of the lengths."""

    world, rank = 2, 0

    def __init__(self, flats=None):
        self.flats, self.sent = flats, None

    def gather(self, flat, lengths):
        self.sent = flat
        return self.flats or [flat.new_zeros(n) for n in lengths]


def test_two_uneven_shards_put_together_equal_the_union():
    """What each rank computes under torch.distributed (its rows of K against all rows,
    its part of Ĵᵀv, its rows of Ĵφ, its packed linearisation), put together in the
    order of ``Rows``, equals the one-process quantities on the union; a boundary term
    with M = 2 outputs checks the point-major rows."""
    from taylorc.optim.sample_space import Rows, gather_linearizations
    from taylorc.optim.woodbury import scaled_residual, transpose_product

    model, terms, points = problem([5, 4])
    u = value_op(model)
    terms["boundary"] = lambda x: torch.cat([u(x) - torch.sin(x[:, :1]), 2 * u(x)], 1)
    cut = {"interior": 4, "boundary": 1}  # shards 4/2 and 1/3
    shards = [
        {t: x[: cut[t]] for t, x in points.items()},
        {t: x[cut[t] :] for t, x in points.items()},
    ]
    union = lins_of(model, terms, points)
    local = [lins_of(model, terms, s) for s in shards]
    rows = Rows([[lin.r.shape[0] for lin in ls] for ls in local], [1, 2])
    counts = rows.totals
    K = kernel(union)
    got = rows.to_global([kernel(ls, union, counts) for ls in local])
    torch.testing.assert_close(got, K, rtol=1e-12, atol=1e-13 * K.abs().max().item())
    v = torch.randn(len(K), dtype=DT, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rows.to_global([rows.local(v, r) for r in range(2)]), v)
    parts = [transpose_product(ls, rows.local(v, r), counts) for r, ls in enumerate(local)]
    for name, want in transpose_product(union, v).items():
        torch.testing.assert_close(parts[0][name] + parts[1][name], want, rtol=1e-12, atol=1e-13)
    phi = {n: torch.randn(L.d_out, L.d_in, dtype=DT) for n, L in union[0].layers.items()}
    jp = rows.to_global([jacobian_product(ls, phi, counts) for ls in local])
    torch.testing.assert_close(jp, jacobian_product(union, phi), rtol=1e-12, atol=1e-13)
    sent = []
    for ls in local:
        spy = _Spy()
        gather_linearizations(ls, rows, spy)
        sent.append(spy.sent)
    cols = gather_linearizations(local[0], rows, _Spy(sent))
    torch.testing.assert_close(
        scaled_residual(cols), scaled_residual(union), rtol=1e-13, atol=1e-15
    )
    torch.testing.assert_close(kernel(cols), K, rtol=1e-12, atol=1e-13 * K.abs().max().item())
