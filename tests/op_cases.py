"""The op cases shared by the rule tests: each maps x (B, 3) to a tensor whose per-sample
rows depend on x's row only, every op's tensor inputs non-linear in all three coordinates
where the op allows it; inputs are kept in the op's domain (log, sqrt, ...).

``REFERENCES`` holds the same function in primitive ops where PyTorch's own higher
derivatives are wrong; ``NONSMOOTH`` the ops that are exact almost everywhere and warn at
order >= 2.
"""

import torch
import torch.nn.functional as F
from helpers import column_writes

W = torch.randn(3, 4, dtype=torch.float64)

# Each case maps x (B, 3) to a tensor whose per-sample rows depend on x's row only.
# Inputs are kept in the op's domain (log, sqrt, ...).
CASES = {
    "tanh": lambda x: torch.tanh(x @ W),
    "sigmoid": lambda x: torch.sigmoid(x @ W),
    "exp": lambda x: torch.exp(0.3 * x @ W),
    "sin": lambda x: torch.sin(x @ W),
    "cos": lambda x: torch.cos(x @ W),
    "log": lambda x: torch.log(2 + torch.tanh(x @ W)),
    "sqrt": lambda x: torch.sqrt(2 + torch.sin(x @ W)),
    "rsqrt": lambda x: torch.rsqrt(2 + torch.sin(x @ W)),
    "reciprocal": lambda x: torch.reciprocal(2 + torch.sin(x @ W)),
    "sinh": lambda x: torch.sinh(x @ W),
    "cosh": lambda x: torch.cosh(x @ W),
    "atan": lambda x: torch.atan(x @ W),
    "erf": lambda x: torch.erf(x @ W),
    "log1p": lambda x: torch.log1p(torch.sigmoid(x @ W)),
    "expm1": lambda x: torch.expm1(0.5 * x @ W),
    "pow": lambda x: (1.5 + torch.sin(x @ W)) ** 2.5,
    "pow_int": lambda x: (x @ W) ** 3,
    "add_sub_neg": lambda x: -(x @ W) + torch.sin(x @ W) - 2.0 * torch.cos(x @ W) + 1.0,
    "mul_div": lambda x: torch.sin(x @ W) * torch.cos(x @ W) / (2 + torch.tanh(x @ W)),
    "div_const": lambda x: torch.sin(x @ W) / 3.0,
    "mm_nonconst": lambda x: (
        torch.sin(x @ W).unsqueeze(1) @ torch.cos(x @ W).unsqueeze(2)
    ).squeeze(-1),
    "bmm": lambda x: torch.bmm(
        torch.sin(x @ W).view(-1, 2, 2), torch.cos(x @ W).view(-1, 2, 2)
    ).flatten(1),
    "sum_mean": lambda x: (
        torch.sin(x @ W).sum(-1, keepdim=True) + torch.cos(x @ W).mean(-1, keepdim=True)
    ),
    "views": lambda x: (
        torch.tanh(x @ W).reshape(-1, 2, 2).permute(0, 2, 1).transpose(1, 2).flip(1).reshape(-1, 4)
    ),
    "unsqueeze_squeeze_expand": lambda x: (
        torch.sin(x).unsqueeze(-1).expand(-1, 3, 2).squeeze(-1).sum(-1)
    ),
    "t": lambda x: torch.tanh(x @ W).t().t(),
    "cat_stack": lambda x: torch.cat(
        [torch.sin(x), torch.stack([x[:, 0], torch.tanh(x[:, 1])], 1)], 1
    ),
    "select_slice": lambda x: torch.sin(x[:, 1:3]) * x[:, 0:1] + x[:, 2].unsqueeze(1),
    "linear": lambda x: torch.nn.functional.linear(
        torch.sin(x), W.t(), torch.ones(4, dtype=x.dtype)
    ),
    "broadcast_add": lambda x: torch.sin(x[:, :1]) + W[0],
    # activations and ops of PINN / operator-learning practice
    "silu": lambda x: F.silu(x @ W),
    "softplus": lambda x: F.softplus(x @ W, beta=2.0),
    "gelu": lambda x: F.gelu(x @ W),
    "gelu_tanh": lambda x: F.gelu(x @ W, approximate="tanh"),
    "tan": lambda x: torch.tan(0.3 * x @ W),
    "asinh": lambda x: torch.asinh(x @ W),
    "square": lambda x: torch.square(torch.sin(x @ W)),
    "pow_tensor": lambda x: (2 + torch.sin(x @ W)) ** torch.cos(x @ W),
    "where": lambda x: torch.where(W[0] > 0, torch.sin(x @ W), torch.cos(x @ W) * 2),
    "layer_norm": lambda x: F.layer_norm(
        torch.sin(x @ W), (4,), torch.ones(4, dtype=x.dtype) * 1.5, W[1]
    ),
    "rms_norm": lambda x: (
        (h := torch.sin(x @ W)) * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    ),
    "softmax": lambda x: F.softmax(x @ W, -1),
    "log_softmax": lambda x: F.log_softmax(x @ W, -1),
    "einsum": lambda x: torch.einsum("bi,bj->bij", torch.sin(x), torch.cos(x @ W)).flatten(1),
    "baddbmm": lambda x: torch.baddbmm(
        torch.tanh(x @ W).view(-1, 2, 2),
        torch.sin(x @ W).view(-1, 2, 2),
        torch.cos(x @ W).view(-1, 2, 2),
    ).flatten(1),
    "vector_norm": lambda x: torch.linalg.vector_norm(x @ W, dim=-1, keepdim=True),
    "split_chunk_unbind": lambda x: (
        torch.cat([*torch.sin(x @ W).split([1, 3], -1)[::-1], *(x @ W).chunk(2, -1)], -1)
        + torch.stack(torch.tanh(x @ W).unbind(-1), -1).repeat(1, 2)
    ),
    "index_gather": lambda x: (
        torch.sin(x @ W).index_select(1, torch.tensor([3, 0]))
        * torch.sin(x @ W).gather(1, torch.tensor([[1, 2]]).expand(x.shape[0], 2))
    ),
    "repeat_flatten_roll_pad": lambda x: F.pad(
        torch.sin(x @ W).view(-1, 2, 2).flatten(1).roll(1, -1).repeat(1, 2), (1, 2)
    ),
    "fft": lambda x: torch.fft.irfft(
        torch.fft.rfft(torch.sin(x @ W), dim=-1) * torch.tensor([1.0, 2.0, 0.5]), n=4, dim=-1
    ),
    "fft_c2c": lambda x: torch.view_as_real(
        torch.fft.fft(torch.fft.ifft(torch.sin(x @ W).to(torch.complex128)))
    ).flatten(1),
    "conv1d": lambda x: F.conv1d(
        torch.sin(x @ W).unsqueeze(1), W[:2, :3].unsqueeze(1), padding=1
    ).flatten(1),
    "conv2d": lambda x: F.conv2d(
        torch.sin(x @ W).view(-1, 1, 2, 2), W[:2, :].reshape(2, 1, 2, 2), padding=1
    ).flatten(1),
    # writes into intermediates, in-place ops and scatters (functional capture)
    "slice_write": lambda x: _slice_write(x),
    "select_write_zeros": lambda x: column_writes(x, torch.sin),
    "inplace_ops": lambda x: _inplace(x),
    "index_put": lambda x: _index_write(x),
    "index_add": lambda x: torch.sin(x @ W).index_add(1, torch.tensor([0, 2, 2]), torch.cos(x)),
    "scatter_add_reduce": lambda x: (
        torch.sin(x @ W).scatter_add(1, torch.tensor([[3, 0, 3]]).expand(x.shape[0], 3), x**2)
        + torch.cos(x @ W).scatter_reduce(
            1, torch.tensor([[1, 1, 2]]).expand(x.shape[0], 3), torch.tanh(x), "sum"
        )
        + torch.sin(x @ W).scatter(1, torch.tensor([[2]]).expand(x.shape[0], 1), 0.5)
    ),
    "complex_abs": lambda x: torch.abs(torch.tanh(x.to(torch.complex128) @ (W + 0.3j * W.flip(0)))),
    "complex": lambda x: torch.view_as_real(torch.complex(torch.sin(x @ W), x[:, :1] ** 2)).flatten(
        1
    ),
    "cumsum_cumprod": lambda x: (
        torch.cumsum(torch.sin(x @ W), 1) + torch.cumprod(1 + 0.5 * torch.tanh(x @ W), 1)
    ),
    # special functions
    "erfc": lambda x: torch.erfc(x @ W),
    "erfinv": lambda x: torch.erfinv(0.8 * torch.tanh(x @ W)),
    # argument >= 1.5: away from acosh's branch point at 1
    "acosh": lambda x: torch.acosh(2.5 + torch.sin(x @ W)),
    "atanh": lambda x: torch.atanh(0.8 * torch.tanh(x @ W)),
    "exp2": lambda x: torch.exp2(x @ W),
    "lgamma": lambda x: torch.lgamma(2 + torch.sin(x @ W)),
    "digamma": lambda x: torch.digamma(2 + torch.sin(x @ W)),
    # matrix functions of a per-sample 2x2 matrix (diagonally dominant: invertible)
    "linalg_inv": lambda x: torch.linalg.inv(_matrix(x)).flatten(1),
    "linalg_solve": lambda x: torch.cat(
        [
            torch.linalg.solve(_matrix(x), torch.sin(x[:, :2])),
            torch.linalg.solve(_matrix(x), _matrix(x.flip(1))).flatten(1),
        ],
        1,
    ),
    "linalg_det_slogdet": lambda x: torch.stack(
        [
            torch.linalg.det(_matrix(x)),
            torch.linalg.slogdet(_matrix(x))[1],
            torch.logdet(_matrix(x)),
        ],
        1,
    ),
    # ops supported since issue 29
    "index_tensor": lambda x: (
        torch.sin(x @ W)[:, [0, 2]] * torch.cos(x @ W)[:, [3, 3, 1]].sum(1, keepdim=True)
    ),
    "prod": lambda x: (
        torch.stack([(1.5 + torch.sin(x[i] @ W)).prod() for i in range(x.shape[0])]).unsqueeze(1)
        + torch.sin(x @ W).prod(1, keepdim=True)
    ),
    "var_std": lambda x: torch.cat(
        [
            torch.var(torch.sin(x @ W), 1, keepdim=True),
            torch.std(torch.cos(x @ W), 1, keepdim=True),
            torch.var(torch.tanh(x @ W), 1, correction=0, keepdim=True),
            torch.var_mean(torch.sin(x @ W), 1)[0].unsqueeze(1),
        ],
        1,
    ),
    "atan2": lambda x: torch.atan2(torch.sin(x @ W), torch.cos(x @ W + 0.3)),
    "hypot": lambda x: torch.hypot(torch.sin(x @ W), 1 + torch.cos(x @ W) ** 2),
    "diagonal_trace_einsum": lambda x: torch.cat(
        [
            torch.diagonal(_matrix(x), dim1=1, dim2=2),
            torch.vmap(torch.trace)(_matrix(x)).unsqueeze(1),
            torch.einsum("bii->b", _matrix(x)).unsqueeze(1),
        ],
        1,
    ),
    "group_norm": lambda x: F.group_norm(
        torch.cat([torch.sin(x @ W), torch.cos(x @ W)], 1).view(-1, 4, 2), 2, W[0] + 1.5, W[1]
    ).flatten(1),
    "avg_pool": lambda x: torch.cat(
        [
            F.avg_pool1d(torch.sin(x @ W).view(-1, 1, 4), 2).flatten(1),
            F.avg_pool2d(torch.sin(x @ W).view(-1, 1, 2, 2), 2, padding=1).flatten(1),
        ],
        1,
    ),
    "logcumsumexp": lambda x: torch.logcumsumexp(torch.sin(x @ W), 1),
    "polygamma": lambda x: (
        torch.polygamma(2, 2 + torch.sin(x @ W)) + torch.special.polygamma(1, 2 + torch.cos(x @ W))
    ),
    "cholesky": lambda x: torch.linalg.cholesky(_spd(x)).flatten(1),
    "cdist": lambda x: torch.cdist(
        torch.sin(x @ W).view(-1, 2, 2), 2 + torch.cos(x @ W).view(-1, 2, 2)
    ).flatten(1),
}


def _spd(x):
    """A per-sample symmetric positive definite 2x2 matrix, non-linear in all coordinates."""
    m = torch.sin(x @ W).view(-1, 2, 2)
    return m @ m.mT + torch.eye(2, dtype=x.dtype)


def _cholesky_reference(x):
    """The 2x2 Cholesky factor in closed form: l11 = sqrt(a), l21 = b / l11, l22 = sqrt(d - l21^2)."""
    a = _spd(x)
    l11 = torch.sqrt(a[:, 0, 0])
    l21 = a[:, 1, 0] / l11
    l22 = torch.sqrt(a[:, 1, 1] - l21**2)
    return torch.stack([l11, torch.zeros_like(l11), l21, l22], 1)


def _var_std_reference(x):
    def var(h, c=1):
        return (h - h.mean(1, keepdim=True)).pow(2).sum(1, keepdim=True) / (h.shape[1] - c)

    h = torch.sin(x @ W)
    return torch.cat(
        [var(h), torch.sqrt(var(torch.cos(x @ W))), var(torch.tanh(x @ W), 0), var(h)], 1
    )


def _cdist_reference(x):
    d = torch.sin(x @ W).view(-1, 2, 1, 2) - (2 + torch.cos(x @ W)).view(-1, 1, 2, 2)
    return torch.sqrt((d * d).sum(-1)).flatten(1)


def _logcumsumexp_reference(x):
    return torch.log(torch.cumsum(torch.exp(torch.sin(x @ W)), 1))


def _matrix(x):
    return torch.sin(x @ W).view(-1, 2, 2) + 3 * torch.eye(2, dtype=x.dtype)


def _slice_write(x):
    y = 2 * torch.tanh(x @ W)  # autograd keeps tanh's output: write into a new tensor
    y[:, 1:3] = x[:, :2] ** 2
    return y


def _inplace(x):
    y = 2 * torch.sin(x @ W)
    y.add_(x[:, :1] ** 2)
    y.mul_(torch.cos(x[:, 1:2]))
    y.sin_()
    return y


def _index_write(x):
    y = torch.zeros(x.shape[0], 6, dtype=x.dtype)
    y[:, torch.tensor([4, 1, 2])] = torch.sin(x @ W)[:, :3]
    return y


def _layer_norm_reference(x):
    h = torch.sin(x @ W)
    hc = h - h.mean(-1, keepdim=True)
    return hc * torch.rsqrt(hc.pow(2).mean(-1, keepdim=True) + 1e-5) * 1.5 + W[1]


# Where PyTorch's own higher derivatives are wrong, the reference is the same function in
# primitive ops: nested autograd through native_layer_norm disagrees with itself at order >= 2
# (jvp of jvp with an affine weight) and >= 3 (reverse over reverse) in torch 2.13.
def _det_reference(x):
    m = _matrix(x)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    return torch.stack([det, torch.log(det.abs()), torch.log(det)], 1)


# ... and torch.linalg.det's third derivative is NaN (torch 2.13): the 2x2 formula instead;
# nested reverse mode through std fails (an in-place masked_fill in its backward), cdist has no
# forward-mode derivative, logcumsumexp's third derivative is NaN, and cholesky is checked
# against its closed-form 2x2 factor.
REFERENCES = {
    "layer_norm": _layer_norm_reference,
    "linalg_det_slogdet": _det_reference,
    "cholesky": _cholesky_reference,
    "var_std": _var_std_reference,
    "cdist": _cdist_reference,
    "logcumsumexp": _logcumsumexp_reference,
}

# exact almost everywhere; they warn at order >= 2 (tested below)
NONSMOOTH = {
    "elu": lambda x: F.elu(x @ W, alpha=0.7),
    "leaky_relu": lambda x: F.leaky_relu(x @ W, 0.1),
    "clamp": lambda x: torch.clamp(torch.sin(x @ W), -0.5, 0.6),
    "amax_amin": lambda x: (
        torch.sin(x @ W).amax(-1, keepdim=True) + torch.cos(x @ W).amin(-1, keepdim=True)
    ),
    "relu_abs": lambda x: torch.relu(x @ W) + torch.abs(torch.sin(x @ W)),
    "relu_inplace": lambda x: torch.nn.functional.relu(torch.sin(x @ W), inplace=True),
    "fmod_remainder": lambda x: (
        torch.fmod(3 * torch.sin(x @ W), 0.7)
        + torch.remainder(x @ W, torch.tensor([0.5, 0.9, 1.3, 2.0], dtype=x.dtype))
    ),
    "cummax_cummin": lambda x: (
        torch.cummax(torch.sin(x @ W), 1)[0] + torch.cummin(torch.cos(x @ W), 1)[0]
    ),
    # ops supported since issue 29
    "maximum_minimum": lambda x: (
        torch.maximum(torch.sin(x @ W), torch.cos(x @ W))
        + torch.minimum(torch.tanh(x @ W), torch.sin(2 * x @ W))
    ),
    "hardtanh": lambda x: F.hardtanh(2 * torch.sin(x @ W), -0.8, 0.9),
    "clamp_tensor": lambda x: torch.clamp(
        torch.sin(x @ W), torch.cos(x @ W) - 1, torch.cos(2 * x @ W) + 0.2
    ),
    "max_pool": lambda x: torch.cat(
        [
            F.max_pool1d(torch.sin(x @ W).view(-1, 1, 4), 2).flatten(1),
            F.max_pool2d(torch.sin(x @ W).view(-1, 1, 2, 2), 2, padding=1).flatten(1),
        ],
        1,
    ),
    "scatter_amax_amin": lambda x: (
        torch.sin(x @ W).scatter_reduce(
            1, torch.tensor([[1, 1, 2]]).expand(x.shape[0], 3), torch.tanh(x @ W[:, :3]), "amax"
        )
        + torch.cos(x @ W).scatter_reduce(
            1,
            torch.tensor([[0, 3, 3]]).expand(x.shape[0], 3),
            torch.sin(x @ W[:, 1:]),
            "amin",
            include_self=False,
        )
    ),
}
CASES.update(NONSMOOTH)
