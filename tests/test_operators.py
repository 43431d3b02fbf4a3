"""Laplacian, biharmonic, gradient and dicts against nested autograd (torch.func) in float64."""

import pytest
import sympy
import torch
from helpers import assert_close, compare, mlp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import taylorc
from taylorc.operators import Biharmonic, Laplacian, build_plan, verify_expansion


@given(
    D=st.integers(1, 50),
    depth=st.integers(1, 3),
    width=st.integers(1, 24),
    activation=st.sampled_from(["tanh", "sigmoid", "sin"]),
    B=st.integers(1, 6),
)
def test_laplacian_random_mlp(D, depth, width, activation, B):
    model = mlp(D, [width] * depth, activation)
    compare(model, "laplacian", torch.randn(B, D, dtype=torch.float64))


@given(
    D=st.integers(1, 5),
    depth=st.integers(1, 2),
    width=st.integers(1, 12),
    activation=st.sampled_from(["tanh", "sigmoid", "sin"]),
)
def test_biharmonic_random_mlp(D, depth, width, activation):
    model = mlp(D, [width] * depth, activation)
    compare(model, "biharmonic", torch.randn(3, D, dtype=torch.float64))


class Residual(nn.Module):
    def __init__(self, D, w=16):
        super().__init__()
        self.inp, self.h1, self.h2, self.out = (
            nn.Linear(D, w),
            nn.Linear(w, w),
            nn.Linear(w, w),
            nn.Linear(w, 2),
        )

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.tanh(self.h1(h))
        h = h + torch.sin(self.h2(h))
        return self.out(h)


class FourierFeatures(nn.Module):
    def __init__(self, D, m=8, w=16):
        super().__init__()
        self.register_buffer("B", 2.0 * torch.randn(D, m))
        self.net = nn.Sequential(nn.Linear(2 * m, w), nn.Tanh(), nn.Linear(w, 1))

    def forward(self, x):
        z = x @ self.B
        return self.net(torch.cat([torch.sin(z), torch.cos(z)], dim=-1))


class Gated(nn.Module):
    """The modified MLP of Wang, Teng, Perdikaris (2021): two encoders gate every hidden layer."""

    def __init__(self, D, w=16, depth=2):
        super().__init__()
        self.U, self.V, self.inp = nn.Linear(D, w), nn.Linear(D, w), nn.Linear(D, w)
        self.hidden = nn.ModuleList(nn.Linear(w, w) for _ in range(depth))
        self.out = nn.Linear(w, 3)

    def forward(self, x):
        u, v = torch.tanh(self.U(x)), torch.tanh(self.V(x))
        h = torch.tanh(self.inp(x))
        for layer in self.hidden:
            z = torch.tanh(layer(h))
            h = (1 - z) * u + z * v
        return self.out(h)


@pytest.mark.parametrize("cls", [Residual, FourierFeatures, Gated])
@pytest.mark.parametrize(
    "operator", ["laplacian", "biharmonic", "gradient", "u_xxy - 3*u_yz + u_z"]
)
def test_non_sequential_models(cls, operator):
    D = 3
    model = cls(D).double()
    compare(model, operator, torch.randn(4, D, dtype=torch.float64), coords="x y z")


def test_dict_is_one_propagation_and_matches():
    model = Gated(4).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    spec = {
        "u": "u",
        "lap": "laplacian",
        "grad": "gradient",
        "bih": "biharmonic",
        "lap01": Laplacian(dims=[0, 1]),
    }
    compare(model, spec, x)
    op = taylorc.compile(model, spec)
    op(x)
    assert op.plan.K == 4
    assert sum(1 for r in op._last.records if r["pass"] == "taylor") == 1


def test_partial_operators():
    model = Residual(4).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    compare(model, Laplacian(dims=[1, 3]), x)
    compare(model, Biharmonic(dims=[0, 2]), x)


def test_input_with_extra_dims():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    compare(model, {"lap": "laplacian", "g": "gradient"}, torch.randn(4, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("D", [1, 2, 3, 4, 5])
def test_biharmonic_weights_are_exact(D):
    z = sympy.symbols(f"z0:{D}")
    target = sum(zi**2 for zi in z) ** 2
    assert verify_expansion(Biharmonic(), D, target, z)
    partial = Biharmonic(dims=[0, D - 1]) if D > 1 else Biharmonic()
    dims = {0, D - 1}
    assert verify_expansion(partial, D, sum(z[i] ** 2 for i in dims) ** 2, z)


def test_laplacian_collapses_to_one_coefficient():
    plan = build_plan({"out": Laplacian()}, 7)
    assert (plan.K, plan.R, plan.G, plan.collapsible) == (2, 7, 1, True)
    assert plan.coefficient_count() == 1 + 7 + 1


def test_float32_and_batch_size_changes():
    model = mlp(3, [8], "tanh").float()
    op = taylorc.compile(model, "laplacian")
    for B in (2, 7):
        x = torch.randn(B, 3)
        ref = taylorc.compile(model, "laplacian", method="nested")(x)
        assert op(x).dtype == torch.float32
        assert_close(op(x), ref, 1e-4)
    model.double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert_close(op(x), taylorc.compile(model, "laplacian", method="nested")(x), 1e-10)
    assert len(op._graphs) == 2  # one per dtype: every batch size shares one (issue 17)
