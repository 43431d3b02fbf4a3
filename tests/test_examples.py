"""The examples run end to end (a few steps each; the full runs are in the closing notes)."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, args",
    [
        (
            "poisson",
            [
                "--adam-steps",
                "3",
                "--lbfgs-steps",
                "2",
                "--interior",
                "64",
                "--boundary",
                "32",
                "--test-points",
                "100",
                "--steps",
                "3",
            ],
        ),
        (
            "poisson",
            ["--optimizer", "adam-lbfgs", "--adam-steps", "3", "--lbfgs-steps", "2"]
            + ["--interior", "64", "--boundary", "32", "--test-points", "100"],
        ),
        (
            "poisson",
            ["--optimizer", "spring", "--steps", "2", "--widths", "8"]
            + ["--interior", "32", "--boundary", "16", "--test-points", "100"],
        ),
        (
            "poisson",
            ["--optimizer", "engd-woodbury", "--sketch-size", "12", "--steps", "2"]
            + ["--widths", "8", "--interior", "32", "--boundary", "16", "--test-points", "100"],
        ),
        (
            "burgers",
            ["--steps", "3", "--widths", "8", "--interior", "64", "--boundary", "16"],
        ),
        (
            "burgers",
            ["--optimizer", "adam-lbfgs", "--adam-steps", "3", "--lbfgs-steps", "2"]
            + ["--interior", "64", "--boundary", "16"],
        ),
        (
            "heat",
            ["--steps", "3", "--interior", "64", "--boundary", "32"],
        ),
        (
            "heat",
            ["--problem", "2+1", "--optimizer", "kfac*", "--steps", "2"]
            + ["--widths", "8", "--interior", "64", "--boundary", "32"],
        ),
        (
            "deeponet_diffusion_reaction",
            ["--engd-steps", "2", "--rows", "32", "--train-functions", "30"],
        ),
        (
            "deeponet_diffusion_reaction",
            ["--optimizer", "adam", "--steps", "3", "--train-functions", "30"],
        ),
        ("high_dim", ["--dim", "6", "--seconds", "0.5", "--widths", "16", "--batch", "16"]),
        (
            "plate",
            ["--steps", "2", "--widths", "8", "--interior", "64", "--boundary", "32"],
        ),
        (
            "plate",
            ["--optimizer", "adam-lbfgs", "--adam-steps", "3", "--lbfgs-steps", "2"]
            + ["--interior", "64", "--boundary", "32"],
        ),
        ("prdp_heat", ["--epochs", "2", "--n", "17", "--train", "2", "--small-k", "3"]),
        ("prdp_inverse", ["--epochs", "2", "--steps", "2", "--n", "17"]),
        (
            "hybrid_vs_pinn",
            ["--pinn-steps", "5", "--interior", "64", "--epochs", "2", "--batches", "1"],
        ),
    ],
)
def test_example_runs(name, args, tmp_path, capsys):
    if (
        name == "poisson"
    ):  # examples/poisson.py runs the packaged demo (also `taylorc demo poisson`)
        from taylorc_contrib.demos.poisson import main
    else:
        main = _load(name).main
    figure = tmp_path / f"{name}.png"
    err = main(args + ["--quiet", "--figure", str(figure)])
    errs = err.values() if isinstance(err, dict) else [err]  # high_dim: one per method
    assert all(math.isfinite(e) for e in errs)
    assert "relative L2 error:" in capsys.readouterr().out
    assert figure.stat().st_size > 10_000


def test_cole_hopf_reference_is_converged():
    import torch

    burgers = _load("burgers")
    x = torch.linspace(-1, 1, 64, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    coarse, fine = burgers.cole_hopf(x, t), burgers.cole_hopf(x, t, nodes=16001)
    assert (coarse - fine).abs().max() < 1e-10
    torch.testing.assert_close(coarse[0], -torch.sin(math.pi * x))
    assert coarse[:, 0].abs().max() < 1e-12 and coarse[:, -1].abs().max() < 1e-12  # u(+-1, t) = 0


def test_diffusion_reaction_reference_converges():
    """The example's finite-difference solver: time steps and grid refinement agree."""
    import torch

    ex = _load("deeponet_diffusion_reaction")
    gen = torch.Generator().manual_seed(0)
    fine = torch.linspace(0, 1, 101, dtype=torch.float64)
    f = ex.gaussian_random_field(2, fine, 0.2, gen)
    u = ex.solve_fd(f, fine, steps=2000, times=11)
    finer_t = ex.solve_fd(f, fine, steps=8000, times=11)
    assert (u - finer_t).norm() / u.norm() < 1e-5
    grid2 = torch.linspace(0, 1, 201, dtype=torch.float64)
    u2 = ex.solve_fd(ex.interpolate(f, fine, grid2), grid2, steps=2000, times=11)
    assert (u2[..., ::2] - u).norm() / u.norm() < 2e-3  # second order: h = 0.01 vs 0.005
    assert u[:, 0].abs().max() == 0 and u[..., [0, -1]].abs().max() == 0


def test_deeponet_pair_rows_are_the_product_layout_at_paired_entries():
    """ENGD's row layout of the PI-DeepONet (one (function, point) pair a row) gives the
    same u as the (M, N) product layout at the pairs, and its u_t, u_xx (collapsed Taylor
    mode, the sensor and source columns not differentiated) match nested autograd."""
    import torch
    from torch.func import hessian, jacrev, vmap

    import taylorc
    from taylorc_contrib.models import DeepONet

    ex = _load("deeponet_diffusion_reaction")
    torch.manual_seed(0)
    S = 6
    model = ex.HardConstrained(DeepONet(S, 2, width=8, depth=2, basis=5)).double()
    with torch.no_grad():
        model.net.bias.fill_(0.3)
    rows = ex.PairRows(model.net, S)
    f, pts = torch.randn(7, S, dtype=torch.float64), torch.rand(7, 2, dtype=torch.float64)
    z = torch.cat([f, pts, torch.randn(7, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(rows(z)[:, 0], model(f, pts).diagonal(), rtol=1e-12, atol=1e-14)

    names = [f"f{i}" for i in range(S)] + ["x", "t", "source"]
    terms = taylorc.compile(rows, {"u_t": "u_t", "u_xx": "u_xx"}, coords=names)(z)
    one = lambda zz: rows(zz[None])[0, 0]  # noqa: E731
    H, g = vmap(hessian(one))(z), vmap(jacrev(one))(z)
    torch.testing.assert_close(terms["u_xx"][:, 0], H[:, S, S], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms["u_t"][:, 0], g[:, S + 1], rtol=1e-10, atol=1e-12)

    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    values, x = torch.randn(7, 11, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    torch.testing.assert_close(
        ex.interpolate(values, grid, x, paired=True), ex.interpolate(values, grid, x).diagonal()
    )


def test_deeponet_engd_ends_on_the_moving_average_of_its_iterates(monkeypatch):
    """``train_engd`` leaves the model at the exponential moving average (decay AVERAGE) of
    the iterates after each step, not at the last iterate; options of the other optimiser
    are refused."""
    import argparse

    import pytest
    import torch

    from taylorc_contrib.demos import common
    from taylorc_contrib.models import DeepONet

    ex = _load("deeponet_diffusion_reaction")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    fine = torch.linspace(0, 1, 101, dtype=torch.float64)
    model = ex.HardConstrained(DeepONet(6, 2, width=8, depth=2, basis=5)).double()
    iterates = []

    def spy(opt, draw, steps, after_step, **kw):
        def record():
            iterates.append([p.detach().clone() for p in model.net.parameters()])
            after_step()

        return common.train_second_order(opt, draw, 4, resample=1, quiet=True, after_step=record)

    monkeypatch.setattr(ex, "train_second_order", spy)
    args = argparse.Namespace(sensors=6, rows=16, damping=1e-4, train_functions=5)
    args.engd_steps, args.seconds, args.quiet = 4, None, True
    fields = ex.gaussian_random_field(5, fine, 0.2, gen)
    ex.train_engd(args, model, fields, fine, torch.linspace(0, 1, 6, dtype=torch.float64), gen)
    average = iterates[0]
    for it in iterates[1:]:
        average = [ex.AVERAGE * a + (1 - ex.AVERAGE) * p for a, p in zip(average, it)]
    final = list(model.net.parameters())
    assert len(iterates) == 4
    for got, want in zip(final, average):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
    assert any(not torch.equal(g.detach(), last) for g, last in zip(final, iterates[-1]))
    with pytest.raises(SystemExit):
        ex.parse_args(["--steps", "1000"])  # an Adam option under the ENGD default
    with pytest.raises(SystemExit):
        ex.parse_args(["--optimizer", "adam", "--rows", "10"])


def test_the_adam_lbfgs_budget_stops_both_and_keeps_the_best_lbfgs_point():
    """``train(seconds=...)``: Adam stops at the budget, L-BFGS is not started after it;
    a budget spent inside L-BFGS leaves the parameters of its lowest evaluated loss."""
    import torch

    from taylorc_contrib.demos import common

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    calls = []

    def loss_fn():
        calls.append(1)
        return (model(x) - y).pow(2).mean()

    common.train(model, loss_fn, adam_steps=1000, lbfgs_steps=1000, quiet=True, seconds=0.0)
    assert len(calls) == 1  # one Adam step, then the budget is spent; no L-BFGS, no final loss
    seen = []

    def recorded():
        value = loss_fn()
        seen.append((value.item(), [p.detach().clone() for p in model.parameters()]))
        return value

    budget = iter([False] * 4 + [True] * 100)  # over after four evaluations
    common._lbfgs(model, recorded, 100, lambda: next(budget), quiet=True)
    assert len(seen) == 4
    best = min(seen, key=lambda s: s[0])
    for p, v in zip(model.parameters(), best[1]):
        assert torch.equal(p, v)
