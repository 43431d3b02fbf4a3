"""Shared test helpers: models of the kinds PINN practice uses, and comparisons."""

import pytest
import sympy
import torch
from torch import nn

import taylorc
from taylorc.operators import Operator, Part

ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "sin": None, "softplus_exp": None}


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def act(name):
    return {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "sin": Sin}[name]()


def mlp(D, widths, activation="tanh", out=1):
    layers, d = [], D
    for w in widths:
        layers += [nn.Linear(d, w), act(activation)]
        d = w
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers).double()


class Directional(Operator):
    """D^k u[v]: the k-th derivative along one integer direction (tests the rules one order at a time)."""

    def __init__(self, v, k):
        self.v, self.k = tuple(v), k
        self.name = f"D^{k}[{list(v)}]"

    def parts(self, D, coords=None):
        return [Part(self.k, ((self.v, sympy.Integer(1)),))]


def nested_directional(f, x, v, k):
    """D^k f[v] per sample: k nested torch.func.jacrev in t of f(x + t v) (reverse over reverse).

    Reverse mode on purpose: PyTorch's nested forward mode (jvp of jvp) gives wrong
    second derivatives through native_layer_norm with an affine weight (torch 2.13).
    """
    v = torch.as_tensor(v, dtype=x.dtype)

    def along(t, xi):
        return f((xi + t * v).unsqueeze(0)).squeeze(0)

    g = along
    for _ in range(k):
        g = torch.func.jacrev(g, argnums=0)
    # one sample at a time: vmap cannot batch in-place writes into tensors the model creates
    return torch.stack([g(torch.zeros((), dtype=x.dtype), xi) for xi in x])


def assert_close(a, b, rel=1e-8):
    scale = max(b.abs().max().item(), 1e-300)
    err = (a - b).abs().max().item() / scale
    assert err < rel, f"relative error {err:.3e} >= {rel:.0e}"


def compare(
    model, operator, x, methods=("collapsed", "taylor"), rel=1e-8, reference_model=None, **kwargs
):
    """taylorc's methods against nested autograd (of ``reference_model`` when given: the same
    function written with primitive ops, where PyTorch's own higher derivatives are wrong)."""
    ref = taylorc.compile(reference_model or model, operator, method="nested", **kwargs)(x)
    for m in methods:
        out = taylorc.compile(model, operator, method=m, **kwargs)(x)
        if isinstance(ref, dict):
            for k in ref:
                assert out[k].shape == ref[k].shape, (m, k)
                assert_close(out[k], ref[k], rel)
        else:
            assert out.shape == ref.shape, m
            assert_close(out, ref, rel)


def column_writes(x, act=torch.tanh):
    """Issue 13's reproduction: writes of a per-point value into columns of a zeros tensor."""
    d = act(x).sum(1) * x[:, 0]
    s = torch.zeros(x.shape[0], 3, dtype=x.dtype)
    s[:, 0] = d
    s[:, 1] = 5 * d
    return s


def two_tiers(body, fast: int, deep: int, **strategies):
    """A property-based test in both tiers: ``fast`` hypothesis examples in the default
    tier (the README's test command), ``deep`` in the slow tier (``pytest -m slow``).

    Returns ``(default_test, slow_test)``; bind both at module level to ``test_*`` names.
    """
    from hypothesis import given, settings

    quick = settings(max_examples=fast)(given(**strategies)(body))
    thorough = pytest.mark.slow(settings(max_examples=deep)(given(**strategies)(body)))
    return quick, thorough
