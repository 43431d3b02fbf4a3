"""PINN training needs: gradients w.r.t. parameters, live parameters, pickling, state_dict."""

import io
import pickle

import torch
from helpers import assert_close, mlp

import taylorc


def _param_grads(model, operator, method, x):
    op = taylorc.compile(model, operator, method=method)
    model.zero_grad()
    out = op(x)
    out = torch.cat([v.flatten() for v in out.values()]) if isinstance(out, dict) else out
    loss = (out**2).mean()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # the last bias has no curvature
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def test_parameter_gradients_match_nested_autograd():
    model = mlp(4, [12, 12], "tanh")
    x = torch.randn(6, 4, dtype=torch.float64)
    for operator in ("laplacian", "biharmonic", {"u": "u", "lap": "laplacian", "g": "gradient"}):
        ref = _param_grads(model, operator, "nested", x)
        for method in ("collapsed", "taylor"):
            for a, b in zip(_param_grads(model, operator, method, x), ref):
                assert_close(a, b, 1e-8)


def test_optimizer_step_is_seen_without_recompiling():
    model = mlp(3, [8], "sin")
    op = taylorc.compile(model, "laplacian")
    x = torch.randn(5, 3, dtype=torch.float64)
    before = op(x).detach().clone()
    graphs = dict(op._graphs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (op(x) ** 2).mean().backward()
    opt.step()
    after = op(x)
    assert not torch.allclose(before, after)
    assert op._graphs.keys() == graphs.keys()
    assert all(op._graphs[k][0] is graphs[k][0] for k in graphs)
    assert_close(after, taylorc.compile(model, "laplacian", method="nested")(x), 1e-10)


def test_state_dict_and_pickle_go_through_the_model():
    model = mlp(2, [6], "tanh")
    op = taylorc.compile(model, "laplacian")
    x = torch.randn(3, 2, dtype=torch.float64)
    y = op(x)
    assert set(op.state_dict()) == {"model." + k for k in model.state_dict()}
    buf = io.BytesIO()
    torch.save(op, buf)
    buf.seek(0)
    op2 = torch.load(buf, weights_only=False)
    assert_close(op2(x), y, 1e-14)
    op3 = pickle.loads(pickle.dumps(op))
    assert_close(op3(x), y, 1e-14)
