"""Randomized Taylor mode and the Stein estimators: unbiasedness by statistics, variance reduction."""

from __future__ import annotations

import pytest
import torch

import taylorc

DT = torch.float64


def smooth_net(D, seed=0, width=16):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
    ).to(DT)


def draws(op, x, n):
    with torch.no_grad():
        return torch.stack([op(x) for _ in range(n)])


def assert_unbiased(samples, exact, z=5.0):
    """The mean of n estimates lies within z standard errors of the exact value."""
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    assert ((mean - exact).abs() <= z * se + 1e-12).all(), (mean, exact, se)


@pytest.mark.parametrize("distribution", ["rademacher", "normal", "coordinate"])
@pytest.mark.parametrize("operator", ["laplacian", "biharmonic"])
def test_stochastic_taylor_is_unbiased(operator, distribution):
    D = 5
    net = smooth_net(D)
    x = torch.rand(3, D, dtype=DT)
    exact = taylorc.compile(net, operator, method="nested")(x).detach()
    op = taylorc.compile(
        net,
        operator,
        method="stochastic",
        samples=2,
        distribution=distribution,
        generator=torch.Generator().manual_seed(1),
    )
    est = draws(op, x, 3000)
    assert est.std(0).min() > 0  # really random
    assert_unbiased(est, exact)


def test_stochastic_partial_laplacian_and_seeding():
    net = smooth_net(4, seed=1)
    x = torch.rand(2, 4, dtype=DT)
    spec = taylorc.operators.Laplacian(dims=[0, 2])
    exact = taylorc.compile(net, spec, method="nested")(x).detach()
    op = lambda seed: taylorc.compile(  # noqa: E731
        net, spec, method="stochastic", samples=3, generator=torch.Generator().manual_seed(seed)
    )
    a, b = draws(op(7), x, 5), draws(op(7), x, 5)
    assert torch.equal(a, b)  # same seed, same draws
    assert_unbiased(draws(op(8), x, 3000), exact)
    # all coordinates of the subspace sampled: coordinate sampling with S = d is exact
    full = taylorc.compile(net, spec, method="stochastic", samples=2, distribution="coordinate")
    torch.testing.assert_close(draws(full, x, 3), exact.expand(3, 2, 1))


def test_stein_exact_for_quadratics_in_expectation():
    D = 3
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]], dtype=DT)
    b = torch.tensor([0.3, -1.0, 0.5], dtype=DT)

    def quad(x):
        return (0.5 * ((x @ A) * x).sum(-1) + x @ b)[:, None]

    x = torch.rand(4, D, dtype=DT)
    spec = {"g": "gradient", "lap": "laplacian", "mix": "u_xy - 2*u_z"}
    exact = {
        "g": (x @ A + b)[:, None, :],
        "lap": torch.full((4, 1), float(A.trace()), dtype=DT),
        "mix": (A[0, 1] - 2 * (x @ A + b)[:, 2])[:, None].expand(4, 1),
    }
    for vr in (True, False):
        op = taylorc.compile(
            quad,
            spec,
            coords="x y z",
            method="stein",
            samples=64,
            sigma=0.3,
            variance_reduction=vr,
            generator=torch.Generator().manual_seed(2),
        )
        runs = [op(x) for _ in range(400)]
        for k in spec:
            assert_unbiased(torch.stack([r[k] for r in runs]), exact[k])


def test_stein_close_to_true_derivatives_at_small_sigma():
    net = smooth_net(3, seed=3)
    x = torch.rand(5, 3, dtype=DT)
    spec = {"u": "u", "u_t": "u_t", "lap": "u_xx + u_yy", "mix": "u_xy"}
    ref = taylorc.compile(net, spec, coords="x y t", method="nested")(x)
    op = taylorc.compile(
        net,
        spec,
        coords="x y t",
        method="stein",
        samples=20000,
        sigma={"x": 0.01, "y": 0.01, "t": 0.02},
    )
    out = op(x)
    for k in spec:
        scale = ref[k].abs().max().item() + 0.1
        assert (out[k] - ref[k]).abs().max().item() < 0.05 * scale, k


def test_stein_variance_reduction_factor():
    """Antithetic pairs + control variate vs plain: >= 50x less variance at sigma = 0.01."""
    net = smooth_net(4, seed=4)
    x = torch.rand(3, 4, dtype=DT)
    variances = {}
    for vr in (True, False):
        op = taylorc.compile(
            net, "laplacian", method="stein", samples=16, sigma=0.01, variance_reduction=vr
        )
        variances[vr] = draws(op, x, 200).var(0)
    factor = (variances[False] / variances[True]).min().item()
    assert factor >= 50, factor


def test_unbiased_squared_residual():
    net = smooth_net(3, seed=5)
    x = torch.rand(4, 3, dtype=DT)
    exact = taylorc.compile(net, "laplacian", method="nested")(x).detach()
    op = taylorc.compile(net, "laplacian", method="stochastic", samples=1, distribution="normal")
    with torch.no_grad():
        prods = torch.stack(
            [taylorc.unbiased_squared_residual(lambda p: op(p) - 1.0, x) for _ in range(4000)]
        )
        naive = torch.stack([(op(x) - 1.0).pow(2).mean() for _ in range(4000)])
    target = (exact - 1.0).pow(2).mean()
    assert_unbiased(prods[:, None], target[None])
    assert naive.mean() > target + 5 * naive.std() / 4000**0.5  # the plain square is biased


def test_random_methods_train():
    net = smooth_net(3, seed=6)
    x = torch.rand(8, 3, dtype=DT)
    for kw in (
        dict(method="stochastic", samples=2),
        dict(method="stein", samples=4, sigma=0.05),
    ):
        op = taylorc.compile(net, "laplacian", **kw)
        net.zero_grad()
        # two draws in one graph: the second must not overwrite what the first saved
        taylorc.unbiased_squared_residual(lambda p, op=op: op(p) - 1.0, x).backward()
        # the last bias does not enter a Laplacian; every weight does
        assert all(m.weight.grad.abs().sum() > 0 for m in (net[0], net[2]))


def test_random_method_errors():
    net = smooth_net(3)
    x = torch.rand(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="samples="):
        taylorc.compile(net, "laplacian", method="stochastic")
    with pytest.raises(ValueError, match="sigma="):
        taylorc.compile(net, "laplacian", method="stein", samples=4)
    with pytest.raises(ValueError, match="order <= 2"):
        taylorc.compile(net, "biharmonic", method="stein", samples=4, sigma=0.1)(x)
    with pytest.raises(ValueError, match="Laplacian and the biharmonic only"):
        taylorc.compile(net, "u_xy", coords="x y z", method="stochastic", samples=4)(x)
    with pytest.raises(ValueError, match="distribution"):
        taylorc.compile(net, "laplacian", method="stochastic", samples=4, distribution="x")(x)
    with pytest.raises(ValueError, match="no width"):
        taylorc.compile(net, "u_xx", coords="x y z", method="stein", samples=4, sigma={"x": 1})(x)
