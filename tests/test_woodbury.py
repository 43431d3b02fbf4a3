"""The sample-space kernel, ENGD's Woodbury solve and SPRING, against dense linear algebra
on the autograd Jacobian of the residuals (float64)."""

import math

import pytest
import torch
from helpers import mlp
from test_kfac import oracle_jacobian, residual, value_op

from taylorc.optim import ENGD, SPRING
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
    return [linearize(model, value_op(model), f, points[t]) for t, f in terms.items()]


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
