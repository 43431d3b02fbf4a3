"""The residual trace of taylorc.optim (optim/residual.py): KFAC and ENGD find the layers a
residual reaches from a torch.fx trace that evaluates each node as it is made."""

import math

import torch
from helpers import mlp

import taylorc
from taylorc.optim import residual as residual_trace

DT = torch.float64


def test_python_control_flow_on_values_runs_as_called_directly():
    """Loops over a shape, a branch on a value, float() of a tensor: the trace's values
    answer them, and the residual equals the direct call with one run per leaf call."""
    torch.manual_seed(0)
    model = mlp(3, [8, 8]).to(DT)
    lap = taylorc.compile(model, "laplacian")

    def residual(x):
        out = -lap(x)
        for i in range(x.shape[1]):
            out = out + 0.1 * torch.sin(x[:, i : i + 1])
        if x.sum() > 0:
            out = 2.0 * out
        return out - float(x.mean()) * model(x) + math.sqrt(len(x))

    x = torch.rand(6, 3, dtype=DT)
    r, runs = residual_trace.run(model, residual, x)
    torch.testing.assert_close(r, residual(x), rtol=1e-12, atol=1e-12)
    assert len(runs) == 2  # the Laplacian and the direct model call


def test_graphs_built_inside_the_trace_do_not_reach_the_tracer():
    """A layer graph built during the trace (its capture calls the model's submodules)
    runs the modules as themselves: a fresh model per optimiser, several optimisers in
    one process (the tracer once failed with 'Unexpected key call2, expected call1')."""
    for kind in ("KFAC", "ENGD", "KFAC"):
        torch.manual_seed(0)
        model = mlp(3, [8, 8]).to(DT)
        lap = taylorc.compile(model, "laplacian")
        residuals = {"i": lambda x, lap=lap: -lap(x) - 1.0, "b": lambda x, m=model: m(x)}
        opt = getattr(taylorc.optim, kind)(model, residuals, lr=0.1)
        x = torch.rand(20, 3, dtype=DT)
        for _ in range(2):
            losses = opt.step({"i": x, "b": x[:5]})
        assert all(math.isfinite(v) for v in losses.values())
    assert torch.nn.Module.__call__ is torch.nn.Module.__dict__["__call__"]


def test_the_trace_holds_the_tracing_lock():
    """fx's tracing flag is process-wide: a background compile of an operator's graph
    (backend="auto") that starts while a residual is traced fails ("Detected that you are
    using FX to symbolically trace a dynamo-optimized function"), seen under torchrun. The
    trace holds taylorc.runtime.backend.TRACING, which every compile takes first."""
    import threading

    from taylorc.runtime.backend import TRACING

    torch.manual_seed(0)
    model = mlp(3, [8, 8]).to(DT)
    lap = taylorc.compile(model, "laplacian")
    seen = []

    def other_thread_can_trace():
        got = TRACING.acquire(blocking=False)
        if got:
            TRACING.release()
        seen.append(got)

    def residual(x):
        t = threading.Thread(target=other_thread_can_trace)
        t.start()
        t.join()
        return -lap(x)

    residual_trace.run(model, residual, torch.rand(4, 3, dtype=DT))
    assert seen == [False]


def test_the_value_operator_is_built_from_the_model_and_the_old_form_warns():
    """``linearize(model, residual, x)`` builds the value operator itself; the old form
    with a value operator still works (a DeprecationWarning) and gives the same columns;
    a compiled operator given as the residual itself is not mistaken for it."""
    import pytest

    from taylorc.optim.linearization import linearize
    from taylorc.optim.linearizer import Linearizer

    torch.manual_seed(1)
    model = mlp(3, [5]).to(DT)
    lap = taylorc.compile(model, "laplacian")
    x = torch.rand(7, 3, dtype=DT)

    def f(y):
        return -lap(y) - model(y)

    new = linearize(model, f, x, check=True)
    with pytest.warns(DeprecationWarning, match="value operator"):
        old = linearize(model, taylorc.compile(model, "u"), f, x, check=True)
    torch.testing.assert_close(new.r, old.r, rtol=0, atol=0)
    for w in new.layers:
        torch.testing.assert_close(new.layers[w].g, old.layers[w].g, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="value operator"):
        lin = Linearizer(model, taylorc.compile(model, "u"), "eager")
    assert lin.backend == "eager"
    direct = linearize(model, lap, x)  # the operator is the residual here
    torch.testing.assert_close(direct.r[:, 0], lap(x).reshape(-1), rtol=1e-12, atol=1e-12)
