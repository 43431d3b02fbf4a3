"""Step rules of the natural-gradient optimisers (taylorc.optim.step_rules)."""

import pytest
import torch
from helpers import mlp

import taylorc
from taylorc.optim import ENGD, SPRING
from taylorc.optim.gramian import layout
from taylorc.optim.linearization import linearize
from taylorc.optim.step_rules import add_, backtracking, line_search

DT = torch.float64


def _problem():
    torch.manual_seed(0)
    model = mlp(2, [8]).to(DT)
    lap = taylorc.compile(model, "laplacian")
    residuals = {"i": lambda x: -lap(x) - 1.0, "b": lambda x: model(x) - x[:, :1]}
    x = torch.rand(30, 2, dtype=DT)
    return model, residuals, {"i": x, "b": x[:10]}


def _quadratic_setup(model, residuals, points):
    """The layers of the model and a loss whose minimum along the gradient is known."""
    lin = linearize(model, residuals["b"], points["b"])
    layers = {ref.weight: ref for ref in layout([lin], model)}
    blocks = {w: -lin.gradient(w) for w in layers}

    def loss():
        return sum(0.5 * f(points[t]).pow(2).mean().item() for t, f in residuals.items())

    return layers, blocks, loss


def test_backtracking_takes_the_first_halving_that_lowers_the_loss():
    model, residuals, points = _problem()
    layers, blocks, loss = _quadratic_setup(model, residuals, points)
    big = {w: 1e3 * b for w, b in blocks.items()}  # 1000x the gradient: alpha = 1 overshoots
    theta = [p.detach().clone() for p in model.parameters()]
    current = loss()

    def loss_at(a):  # the oracle: theta0 + a d, from a fresh copy
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), theta):
                p.copy_(p0)
        add_(model, layers, big, a)
        return loss()

    want = next(2.0**-k for k in range(31) if loss_at(2.0**-k) < current)
    for p, p0 in zip(model.parameters(), theta):
        p.data.copy_(p0)
    alpha = backtracking(model, layers, big, loss, current)
    assert alpha == want and 0 < alpha < 1
    assert loss() == pytest.approx(loss_at(alpha), rel=1e-12) and loss() < current


def test_backtracking_leaves_the_parameters_when_nothing_lowers_the_loss():
    model, residuals, points = _problem()
    layers, blocks, loss = _quadratic_setup(model, residuals, points)
    theta = [p.detach().clone() for p in model.parameters()]
    uphill = {w: -b for w, b in blocks.items()}  # minus the descent direction
    alpha = backtracking(model, layers, uphill, loss, loss())
    assert alpha == 0.0
    assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), theta))


@pytest.mark.parametrize("optimizer", [ENGD, SPRING])
def test_natural_gradient_with_backtracking_lowers_the_loss(optimizer):
    model, residuals, points = _problem()
    opt = optimizer(model, residuals, lr="backtracking", damping=1e-8)
    first = sum(opt.step(points).values())
    for _ in range(4):
        last = sum(opt.step(points).values())
    assert last < 0.5 * first


def test_an_unknown_step_rule_is_refused():
    model, residuals, _ = _problem()
    with pytest.raises(ValueError, match="backtracking"):
        ENGD(model, residuals, lr="armijo")


def test_the_grid_line_search_is_unchanged():
    model, residuals, points = _problem()
    layers, blocks, loss = _quadratic_setup(model, residuals, points)
    current = loss()
    alpha = line_search(model, layers, blocks, loss, current, grid=(0.25, 0.5, 1.0))
    assert alpha in (0.25, 0.5, 1.0) and loss() < current
