"""The differential test generated from the rule registry: every registered ATen overload,
reached through capture exactly as a user's model, against an independent oracle.

For each case of ``op_cases.CASES`` (plus the cases below for the overloads no rule test
reaches), in float64 with D = 3 coordinates that every op input depends on non-linearly:

* the Laplacian, the gradient and a mixed second-order spec, in one propagation (the
  collapsed top order carries two weight vectors), in ``collapsed`` and ``taylor`` mode;
* the biharmonic (fourth order) where the op is smooth (slow tier);
* B = 3, and B = 1 (slow tier);

against per-point derivative tensors from plain ``torch.autograd.grad`` of batch sums
(reverse over reverse, no torch.func: its forward-over-reverse is wrong for
``linalg.solve`` in torch 2.13), or a closed form where PyTorch's own derivatives are
wrong. ``test_every_registered_overload_has_a_case`` fails for a registered overload that
no case captures to and that capture does not decompose away, so no rule lands untested.
"""

import functools
import warnings

import pytest
import torch
from op_cases import CASES, NONSMOOTH, REFERENCES, W

import taylorc
from taylorc.capture import capture, decomposed_by_capture
from taylorc.rules.table import CONSTANT_OPS, RULES

aten = torch.ops.aten
COORDS = "x y z"
MIXED = "u_xy - 2*u_yz + 0.5*u_zz"


def _h(x):
    return torch.sin(x @ W)


def _as(x, b):
    return b.to(x.dtype)


# the overloads the rule tests of op_cases do not reach: constant ops, scalar overloads
EXTRA = {
    "constant_ops": lambda x: (
        _h(x)
        * (
            _h(x).floor()
            + _h(x).ceil()
            + _h(x).round()
            + _h(x).trunc()
            + _h(x).sign()
            + _as(x, _h(x) >= 0.1)
            + _as(x, _h(x) <= _h(x) ** 2)
            + _as(x, _h(x) < 0.2)
            + _as(x, _h(x) <= 0.4)
            + _as(x, _h(x) != 0.3)
            + _as(x, _h(x) >= _h(x) ** 2)
            + _as(x, _h(x) < _h(x) ** 2)
            + _as(x, _h(x) != _h(x) ** 2)
            + _as(x, _h(x) > _h(x) ** 2)
            + torch.full_like(_h(x), 2.0)
        )
    ),
    "logical_ops": lambda x: (
        _h(x)
        * _as(
            x,
            torch.logical_and(_h(x) > 0, _h(x) < 0.5)
            | torch.logical_not(_h(x) > 0.9)
            | torch.logical_or(_h(x) > 0.2, _h(x) < -0.4),
        )
    ),
    "detach": lambda x: torch.sin(x @ W) * torch.cos(x @ W).detach(),
    "data_and_no_grad": lambda x: torch.sin(x @ W) * torch.cos(x @ W).data + _no_grad_part(x),
    "mean_all": lambda x: _h(x).mean() * 0 + torch.cos(x @ W).mean(1, keepdim=True) * _h(x),
    "fmod_tensor": lambda x: torch.fmod(3 * _h(x), 0.5 + torch.sigmoid(x @ W)),
    "remainder_scalar": lambda x: torch.remainder(3 * _h(x), 0.7),
    "diagonal_scatter": lambda x: torch.diagonal_scatter(
        torch.sin(x @ W).reshape(-1, 2, 2), torch.cos(x @ W)[:, :2], 0, 1, 2
    ).flatten(1),
    "scatter_src": lambda x: torch.sin(x @ W).scatter(
        1, torch.tensor([[2, 0]]).expand(x.shape[0], 2), torch.cos(x @ W)[:, :2]
    ),
    "view_as_complex": lambda x: torch.view_as_real(
        torch.view_as_complex(torch.sin(x @ W).reshape(-1, 2, 2)) ** 2
    ).flatten(1),
    "batch_norm_eval": lambda x: torch.nn.functional.batch_norm(
        _h(x),
        torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=x.dtype),
        torch.tensor([1.1, 0.9, 1.3, 0.7], dtype=x.dtype),
        W[0],
        W[1],
        training=False,
    ),
    "cosine_similarity": lambda x: torch.nn.functional.cosine_similarity(
        torch.sin(x @ W), torch.cos(x @ W)
    ).unsqueeze(1),
    "inv_of_inv_det": lambda x: torch.stack(
        [
            torch.linalg.det(torch.linalg.inv(_matrix(x))),
            torch.linalg.slogdet(torch.linalg.inv(_matrix(x)))[1],
        ],
        1,
    ),
}
NONSMOOTH_EXTRA = {
    "fmod_tensor",
    "remainder_scalar",
    "constant_ops",
    "logical_ops",
    "cosine_similarity",
}


def _matrix(x):
    return torch.sin(x @ W).view(-1, 2, 2) + 3 * torch.eye(2, dtype=x.dtype)


def _no_grad_part(x):
    with torch.no_grad():  # a constant of every derivative, as autograd treats it
        c = torch.cos(x @ W)
    return torch.tanh(x @ W) * c


# closed forms of the 2x2 matrix functions: the oracle for the matrix rules
def _inv2(m):
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adj / (a * d - b * c)[..., None, None]


def _det2(m):
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]


CLOSED_FORMS = {
    "linalg_inv": lambda x: _inv2(_matrix(x)).flatten(1),
    "linalg_solve": lambda x: torch.cat(
        [
            (_inv2(_matrix(x)) @ torch.sin(x[:, :2]).unsqueeze(-1)).squeeze(-1),
            (_inv2(_matrix(x)) @ _matrix(x.flip(1))).flatten(1),
        ],
        1,
    ),
    "inv_of_inv_det": lambda x: torch.stack(
        [1 / _det2(_matrix(x)), -torch.log(_det2(_matrix(x)).abs())], 1
    ),
}

ALL = {**CASES, **EXTRA}
SMOOTH = sorted(n for n in ALL if n not in NONSMOOTH and n not in NONSMOOTH_EXTRA)


def reference(name):
    return CLOSED_FORMS.get(name) or REFERENCES.get(name) or ALL[name]


# -- the oracle ------------------------------------------------------------------------


def autograd_derivatives(f, x, K: int) -> list[torch.Tensor]:
    """Per-point derivative tensors of ``f`` at ``x`` (B, D), orders 0..K.

    Level k has shape ``(B, N, D, ..., D)`` (k trailing D's, N = output entries per point),
    from repeated ``torch.autograd.grad`` of batch sums (rows are independent, so the
    gradient of a sum over points is each point's own derivative).
    """
    x = x.detach().clone().requires_grad_(True)
    B, D = x.shape
    y = f(x).reshape(B, -1)
    N = y.shape[1]
    entries = list(y.unbind(1))
    levels = [y.detach()]
    for k in range(1, K + 1):
        nxt = []
        for e in entries:
            g = None
            if e.requires_grad:
                (g,) = torch.autograd.grad(
                    e.sum(), x, create_graph=k < K, retain_graph=True, allow_unused=True
                )
            nxt.extend((g if g is not None else torch.zeros_like(x)).unbind(1))
        entries = nxt
        levels.append(torch.stack([e.detach() for e in entries], 1).reshape(B, N, *[D] * k))
    return levels


def biharmonic_derivatives(f, x) -> torch.Tensor:
    """``Σ_ij d⁴f/dx_i² dx_j²`` per point, ``(B, N)``, by the same batch-sum autograd as
    :func:`autograd_derivatives` but only along the multi-indices it needs (i, i, j, j):
    16 N gradients instead of the full tensor's 40 N at D = 3."""
    x = x.detach().clone().requires_grad_(True)
    B, D = x.shape
    y = f(x).reshape(B, -1)

    def grad(e, last=False):
        if not e.requires_grad:
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(
            e.sum(), x, create_graph=not last, retain_graph=True, allow_unused=True
        )
        return g if g is not None else torch.zeros_like(x)

    out = torch.zeros_like(y)
    for n in range(y.shape[1]):
        first = grad(y[:, n])
        for i in range(D):
            third = grad(grad(first[:, i])[:, i])  # d³/dx_i² dx_j, every j
            for j in range(D):
                out[:, n] += grad(third[:, j], last=True)[:, j].detach()
    return out


@functools.cache
def oracle(name: str, B: int, K: int) -> tuple[torch.Tensor, list]:
    gen = torch.Generator().manual_seed(B)
    x = 0.5 * torch.randn(B, 3, dtype=torch.float64, generator=gen)
    if K == 4:
        return x, biharmonic_derivatives(reference(name), x)
    return x, autograd_derivatives(reference(name), x, K)


def _terms(levels):
    """The gradient, the Laplacian and the mixed spec (``MIXED`` at D = 3, with the last
    coordinate in place of z otherwise) from the derivative tensors."""
    T1, T2 = levels[1], levels[2]
    last = T2.shape[-1] - 1
    return {
        "grad": T1,
        "lap": T2.diagonal(dim1=-2, dim2=-1).sum(-1),
        "mixed": T2[..., 0, 1] - 2 * T2[..., 1, last] + 0.5 * T2[..., last, last],
    }


def _check(out, ref, what):
    scale = max(ref.abs().max().item(), out.abs().max().item(), 1e-12)
    err = (out.reshape(ref.shape) - ref).abs().max().item() / scale
    assert err <= 1e-8, f"{what}: relative error {err:.2e}"


def _run(name, method, B, K):
    x, levels = oracle(name, B, K)
    spec = {"grad": "gradient", "lap": "laplacian", "mixed": MIXED} if K == 2 else "biharmonic"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = taylorc.compile(ALL[name], spec, method=method, coords=COORDS)(x)
    ref = _terms(levels) if K == 2 else {"bih": levels}
    for term, value in out.items() if isinstance(out, dict) else [("bih", out)]:
        _check(value, ref[term], f"{name} {method} B={B} {term}")


# collapsed (the default method) in the default tier, standard Taylor mode in the slow one
@pytest.mark.parametrize("method", ["collapsed", pytest.param("taylor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(ALL))
def test_second_order_against_autograd(name, method):
    _run(name, method, 3, 2)


# the slow tier: one point (collapsed), and the biharmonic (collapsed: its top order is the
# one collapsing changes; standard Taylor mode runs every order along one direction in
# test_rules.py)
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_second_order_single_point(name):
    _run(name, "collapsed", 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOOTH)
def test_biharmonic_against_autograd(name):
    _run(name, "collapsed", 3, 4)


def test_biharmonic_of_the_matrix_functions():
    """The fourth-order check of the rules that went wrong in collapsed mode, in the fast tier."""
    for name in ("linalg_inv", "linalg_solve", "inv_of_inv_det"):
        _run(name, "collapsed", 3, 4)


# -- coverage ----------------------------------------------------------------------------


# registered overloads capture never emits, and why (checked: no case captures to them)
NOT_EMITTED = {
    aten.add.Scalar: "python scalars are captured as add.Tensor",
    aten.sub.Scalar: "python scalars are captured as sub.Tensor",
    aten.mul.Scalar: "python scalars are captured as mul.Tensor",
    aten.div.Scalar: "python scalars are captured as div.Tensor",
}


@functools.cache
def captured_ops() -> dict:
    x = torch.zeros(2, 3, dtype=torch.float64)
    seen: dict = {}
    for name, f in ALL.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = capture(f, x).gm
        for n in gm.graph.nodes:
            if n.op == "call_function":
                seen.setdefault(n.target, set()).add(name)
    return seen


def test_every_registered_overload_has_a_case():
    seen = captured_ops()
    registered = set(RULES) | set(CONSTANT_OPS)
    untested = {
        str(op)
        for op in registered
        if op not in seen and not decomposed_by_capture(op) and op not in NOT_EMITTED
    }
    assert not untested, f"registered overloads without a differential case: {sorted(untested)}"
    emitted = {str(op) for op in NOT_EMITTED if op in seen}
    assert not emitted, f"listed as never emitted but captured (give them a case): {emitted}"


# -- the reproductions of issue 29, to 1e-10 ---------------------------------------------


def _sym2(x):
    """A = 3 I + 0.5 sin(x_i + x_j), i, j < 2: symmetric, diagonally dominant."""
    s = x[:, :2, None] + x[:, None, :2]
    return 3 * torch.eye(2, dtype=x.dtype) + 0.5 * torch.sin(s)


def _issue_matrix(x):
    A = 3 * torch.eye(2, dtype=x.dtype) + torch.diag_embed(torch.sin(x[:, :2]))
    c = (torch.sin(x[:, 0]) * torch.cos(x[:, 1]))[:, None, None]
    return A + c * torch.ones(2, 2, dtype=x.dtype)


_FOLX_W = torch.randn(4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

REPRODUCTIONS = {  # name: (model, oracle model, coordinate shape)
    "inv": (
        lambda x: torch.linalg.inv(_issue_matrix(x)).flatten(1),
        lambda x: _inv2(_issue_matrix(x)).flatten(1),
        (3,),
    ),
    "inverse_det": (
        lambda x: torch.inverse(_issue_matrix(x)).flatten(1) * torch.linalg.det(_sym2(x))[:, None],
        lambda x: _inv2(_issue_matrix(x)).flatten(1) * _det2(_sym2(x))[:, None],
        (3,),
    ),
    "solve_vector": (
        lambda x: torch.linalg.solve(_sym2(x), torch.cos(x[:, :2])),
        lambda x: (_inv2(_sym2(x)) @ torch.cos(x[:, :2]).unsqueeze(-1)).squeeze(-1),
        (3,),
    ),
    "solve_column_constant_slogdet": (
        lambda x: torch.cat(
            [
                torch.linalg.solve(_sym2(x), torch.cos(x[:, :2]).unsqueeze(-1)).flatten(1),
                torch.linalg.solve(_sym2(x), torch.eye(2, dtype=x.dtype)).flatten(1),
                torch.linalg.solve_ex(_issue_matrix(x), torch.sin(x[:, 1:]))[0],
                torch.linalg.slogdet(_issue_matrix(x))[1][:, None],
            ],
            1,
        ),
        lambda x: torch.cat(
            [
                (_inv2(_sym2(x)) @ torch.cos(x[:, :2]).unsqueeze(-1)).flatten(1),
                _inv2(_sym2(x)).flatten(1),
                (_inv2(_issue_matrix(x)) @ torch.sin(x[:, 1:]).unsqueeze(-1)).squeeze(-1),
                torch.log(_det2(_issue_matrix(x)).abs())[:, None],
            ],
            1,
        ),
        (3,),
    ),
    # folx's test_inv: inv(4 I + tanh(einsum('bid,idj->bij', x, W))), x of shape (B, 4, 3)
    "folx_inv": (
        lambda x: torch.linalg.inv(
            4 * torch.eye(4, dtype=x.dtype) + torch.tanh(torch.einsum("bid,idj->bij", x, _FOLX_W))
        ).flatten(1),
        None,
        (4, 3),
    ),
    "detach": (lambda x: torch.sin(x) * torch.cos(x).detach(), None, (3,)),
    "complex": (
        lambda x: (
            torch.fft.irfft(torch.fft.rfft(torch.sin(x @ W), dim=-1) * 2, n=4, dim=-1)
            + torch.exp(torch.complex(torch.sin(x @ W), torch.cos(x @ W))).imag
        ),
        None,
        (3,),
    ),
    "einsum_trace": (
        lambda x: torch.einsum("bii->b", torch.sin(x @ W).view(-1, 2, 2)).unsqueeze(1),
        None,
        (3,),
    ),
}


# B = 3 in the default tier, B = 1 in the slow one; the biharmonic where D = 3 (the oracle's
# fourth-order tensor has D^4 entries per output)
@pytest.mark.parametrize("B", [3, pytest.param(1, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_reported_reproductions(name, B):
    model, oracle_model, shape = REPRODUCTIONS[name]
    D = 1
    for s in shape:
        D *= s
    coords = " ".join(f"c{i}" for i in range(D))
    mixed = f"u_c0c1 - 2*u_c1c{D - 1} + 0.5*u_c{D - 1}c{D - 1}"
    x = 0.5 * torch.randn(
        B, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(B)
    )
    K = 4 if D <= 3 else 2
    levels = autograd_derivatives(
        lambda v: (oracle_model or model)(v.reshape(-1, *shape)), x.reshape(B, D), K
    )
    ref = _terms(levels)
    if K == 4:
        ref["bih"] = torch.einsum("bniijj->bn", levels[4])
    for method in ("collapsed", "taylor"):
        out = taylorc.compile(
            model, {"lap": "laplacian", "mixed": mixed}, method=method, coords=coords
        )(x)
        if K == 4:
            out["bih"] = taylorc.compile(model, "biharmonic", method=method)(x)
        for term, value in out.items():
            scale = max(ref[term].abs().max().item(), 1e-12)
            err = (value.reshape(ref[term].shape) - ref[term]).abs().max().item() / scale
            assert err <= 1e-10, f"{name} {method} B={B} {term}: relative error {err:.2e}"


# -- stops of the gradient and edge cases found in review --------------------------------


def test_detach_in_place_is_refused_and_a_callers_no_grad_changes_nothing():
    def f(x):
        y = torch.sin(x)
        y.detach_()
        return x * y

    x = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(taylorc.errors.UnsupportedOperatorError, match="detach_"):
        taylorc.compile(f, "laplacian")(x)
    g = lambda x: torch.sin(x @ W)
    with torch.no_grad():  # the caller's grad mode is not the model's
        out = taylorc.compile(g, "laplacian")(x)
    ref = taylorc.compile(g, "laplacian", method="taylor")(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.abs().max() > 0.1


def test_atan2_parameter_gradient_where_a_quotient_is_zero():
    """The branch atan2 does not take must not divide by zero (NaN through where)."""
    model = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        model.bias.zero_()
    f = lambda x: torch.atan2(*model(x).unbind(1)).unsqueeze(1)
    x = torch.tensor([[0.5, 0.0, 0.1], [0.0, 0.7, 0.2]], dtype=torch.float64)
    taylorc.compile(f, "laplacian")(x).sum().backward()
    assert torch.isfinite(model.weight.grad).all() and torch.isfinite(model.bias.grad).all()


def test_scatter_amax_with_a_source_larger_than_its_index():
    def f(x, narrow=False):
        src = torch.cos(x @ W)
        src = src[:, :2] if narrow else src  # torch reads src where index is
        index = torch.tensor([[0, 2]]).expand(x.shape[0], 2)
        return torch.sin(x @ W).scatter_reduce(1, index, src, "amax")

    x = 0.5 * torch.randn(3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = taylorc.compile(f, "laplacian")(x)
    # autograd's own backward fails on the wider source (torch 2.13): the narrowed one
    levels = autograd_derivatives(lambda x: f(x, narrow=True), x, 2)
    _check(out, _terms(levels)["lap"], "scatter amax, src wider than index")
