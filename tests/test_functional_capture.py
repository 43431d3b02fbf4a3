"""No silent wrong derivative: mutation, batch coupling, the ops of issue 13, fast planning.

Every value is checked against nested autograd (torch.func, float64), or an
exact identity; every refusal against its typed error.
"""

from fractions import Fraction

import pytest
import torch
from helpers import assert_close, column_writes
from torch import nn

import taylorc
from taylorc.errors import BatchCouplingError, InputMutationError
from taylorc.operators.weights import _compositions, partial_weights


def _slice_write(x):
    y = x.clone()
    y[:, 3:5] = x[:, :2] ** 2
    return y


def _column_write(x):
    y = x.clone()
    y[:, 3] = x[:, 0] * x[:, 1]
    return y


def _zeros_slice_write(x):
    z = torch.zeros(x.shape[0], 10, dtype=x.dtype)
    w = torch.sin(x)
    z[:, 2:8] = w**2
    return z


def _inplace(x):
    y = torch.sin(x) * 1.0
    y.add_(x**2)
    y.mul_(x)
    y.sin_()
    return nn.ReLU(inplace=True)(y) + nn.functional.relu(y * 2, inplace=True)


def _index_put(x):
    y = torch.zeros(x.shape[0], 8, dtype=x.dtype)
    y[:, torch.tensor([1, 4, 6])] = torch.tanh(x[:, :3])
    return y.index_add(1, torch.tensor([0, 0, 7]), x[:, 3:6] ** 3)


REPRODUCTIONS = {
    "slice_write": _slice_write,
    "column_write": _column_write,
    "zeros_slice_write": _zeros_slice_write,
    "column_writes": column_writes,
    "inplace": _inplace,
    "index_put": _index_put,
}


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
@pytest.mark.parametrize("operator", ["laplacian", "gradient", "biharmonic"])
def test_writes_and_inplace_ops_match_nested(name, operator):
    f = REPRODUCTIONS[name]
    x = torch.randn(5, 6, dtype=torch.float64)
    ref = taylorc.compile(f, operator, method="nested")(x)
    for method in ("collapsed", "taylor"):
        with pytest.warns(UserWarning) if name == "inplace" and operator != "gradient" else _no():
            out = taylorc.compile(f, operator, method=method)(x)
        assert_close(out, ref, 1e-10)


class _no:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_issue_reproduction_values():
    x = torch.randn(2, 6, dtype=torch.float64)
    lap = taylorc.compile(_slice_write, "laplacian")(x)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    expected[:, 3:5] = 2.0
    assert torch.equal(lap, expected)
    grad = taylorc.compile(_slice_write, "gradient")(x)
    assert grad[0, 3, 0] == 2 * x[0, 0] and grad[0, 3, 3] == 0


class _MutatesParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        with torch.no_grad():
            self.lin.bias.add_(0.0)
        return torch.tanh(self.lin(x))


class _MutatesBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(3))

    def forward(self, x):
        self.count.add_(1.0)
        return torch.tanh(x) * 2


class _MutatesInput(nn.Module):
    def forward(self, x):
        x.mul_(2)
        return torch.sin(x)


@pytest.mark.parametrize(
    "model, what",
    [
        (_MutatesParameter(), "parameter"),
        (_MutatesBuffer(), "buffer 'count'"),
        (_MutatesInput(), "input 'x'"),
    ],
)
def test_mutation_of_inputs_parameters_buffers_is_refused(model, what):
    model = model.double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(InputMutationError, match=what) as err:
        taylorc.compile(model, "laplacian")(x)
    if what != "parameter":  # autograd refuses that write itself, before any graph exists
        assert "copy_" in str(err.value) and "test_functional_capture.py" in str(err.value)


# -- batch coupling: exact -----------------------------------------------------------------

lin, lin2 = nn.Linear(6, 6).double(), nn.Linear(6, 2).double()


def _reshape_round_trip(x):
    h = lin(x)
    h = h.unsqueeze(1).squeeze(1).reshape(x.shape[0], 6)
    return lin2(torch.tanh(h))


def _grad_of_batch_sum(x):
    return torch.func.grad(lambda z: torch.tanh(lin(z)).sum())(x)


def _vmap_grad(x):
    return torch.func.vmap(torch.func.grad(lambda z: torch.tanh(lin(z)).sum()))(x)


@pytest.mark.parametrize("f", [_reshape_round_trip, _grad_of_batch_sum, _vmap_grad])
def test_independent_rows_are_not_refused(f):
    x = torch.randn(6, 6, dtype=torch.float64)
    ref = taylorc.compile(f, "laplacian", method="nested")(x)
    for method in ("collapsed", "taylor"):
        assert_close(taylorc.compile(f, "laplacian", method=method)(x), ref, 1e-10)


COUPLED = {
    "mean over the batch": lambda x: torch.tanh(x - x.mean(0)),
    "attention across points": lambda x: torch.softmax(x @ x.T, -1) @ x,
    "cat along the batch": lambda x: torch.cat([x[1:], x[:1]]) * x,
    "advanced index along the batch": lambda x: torch.tanh(x[torch.arange(x.shape[0]).flip(0)]),
    "cumsum over the flattened batch": lambda x: (
        torch.tanh(x).reshape(-1).cumsum(0).reshape(x.shape)
    ),
    "row write": lambda x: _row_write(x),
}


def _row_write(x):
    y = x * 1.0
    y[0] = x[-1]
    return y


@pytest.mark.parametrize("name", sorted(COUPLED))
def test_real_couplings_still_raise(name):
    x = torch.randn(6, 6, dtype=torch.float64)
    with pytest.raises(BatchCouplingError):
        taylorc.compile(COUPLED[name], "laplacian")(x)


def test_batch_norm_in_training_mode_is_a_coupling_not_a_mutation():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh()).double().train()
    with pytest.raises(BatchCouplingError, match="batch norm"):
        taylorc.compile(model, "laplacian")(torch.randn(5, 3, dtype=torch.float64))


def test_coupling_hidden_by_a_zero_parameter_is_found():
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.tanh(x) + self.alpha * x.flip(0).reshape(-1).reshape(x.shape)

    with pytest.raises(BatchCouplingError):
        taylorc.compile(Hidden().double(), "laplacian")(torch.randn(4, 3, dtype=torch.float64))


# -- complex |z| ---------------------------------------------------------------------------


def test_abs_of_complex_matches_nested():
    W = torch.randn(3, 4, dtype=torch.complex128)
    f = lambda x: torch.abs(torch.tanh(x.to(torch.complex128) @ W))
    x = 0.5 * torch.randn(5, 3, dtype=torch.float64)
    ref = taylorc.compile(f, "laplacian", method="nested")(x)
    for method in ("collapsed", "taylor"):
        assert_close(taylorc.compile(f, "laplacian", method=method)(x), ref, 1e-10)


# -- DeepXDE's DeepONetCartesianProd (its public definition, rewritten here) ------------------


class DeepONetCartesianProd(nn.Module):
    """Branch (M, m) and trunk (N, D) nets, ``y = branch @ trunk.T``, then ``y += b``."""

    def __init__(self, m, D, p=8):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(m, 16), nn.Tanh(), nn.Linear(16, p))
        self.trunk = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, p), nn.Tanh())
        self.b = nn.ParameterList([nn.Parameter(torch.tensor(0.1))])

    def forward(self, x_func, x_loc):
        y = torch.einsum("bi,ni->bn", self.branch(x_func), self.trunk(x_loc))
        y += self.b[0]
        return y


@pytest.mark.parametrize("method", ["collapsed", "taylor", "zcs"])
def test_deepxde_deeponet_with_inplace_bias(method):
    model = DeepONetCartesianProd(5, 2).double()
    u, xt = torch.randn(3, 5, dtype=torch.float64), torch.rand(7, 2, dtype=torch.float64)
    spec = {"u_t": "u_t", "u_xx": "u_xx", "u": "u"}
    ref = taylorc.compile(model, spec, coords="x t", wrt=1, method="nested")(u, xt)
    out = taylorc.compile(model, spec, coords="x t", wrt=1, method=method)(u, xt)
    for k in spec:
        assert_close(out[k], ref[k], 1e-10)


# -- planning: closed-form weights, exact ----------------------------------------------------


@pytest.mark.parametrize(
    "alpha", [(1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1,) * 6, (3, 2, 1), (2, 2, 2)]
)
def test_closed_form_weights_are_an_exact_polynomial_identity(alpha):
    """sum_v w_v D^k u[v] = d^alpha u: sum_v w_v v^beta k!/beta! = delta_{alpha beta}."""
    import math

    k = sum(alpha)
    w = partial_weights(alpha)
    for beta in _compositions(k, len(alpha)):
        total = sum(
            Fraction(int(wv.p), int(wv.q)) * math.prod(vi**b for vi, b in zip(v, beta))
            for v, wv in w.items()
        ) * Fraction(math.factorial(k), math.prod(math.factorial(b) for b in beta))
        assert total == (1 if beta == alpha else 0), beta


def test_fully_mixed_fifth_order_matches_nested():
    def f(x):
        a, b, c, d, e = x.unbind(1)
        return (torch.sin(a * b * c * d * e) + torch.tanh(a * b) * torch.tanh(c * d * e)).unsqueeze(
            1
        )

    x = 0.5 * torch.randn(3, 5, dtype=torch.float64)
    out = taylorc.compile(f, "u_abcde", coords="a b c d e")(x)
    ref = taylorc.compile(f, "u_abcde", coords="a b c d e", method="nested")(x)
    assert_close(out, ref, 1e-9)


def test_probe_runs_through_writes():
    """Functionalization's copy has no forward-AD formula: the probe must still decide
    (a refusal of the analysis, at B == width after reshapes, stood otherwise)."""
    from taylorc.capture import capture
    from taylorc.ir.probe import probe_rows

    x = torch.randn(6, 6, dtype=torch.float64)
    cap = capture(_slice_write, x)
    assert probe_rows(cap.gm, "x", cap.inputs(None, x)) == ("independent", [0])
    cap = capture(COUPLED["row write"], x)
    assert probe_rows(cap.gm, "x", cap.inputs(None, x))[0] == "coupled"
