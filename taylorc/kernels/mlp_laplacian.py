"""Whole-MLP collapsed Laplacian: ``taylorc::mlp_laplacian``, one launch for the whole network.

For small networks (width <= 128, depth <= 8, D <= 16) the collapsed Laplacian is
bound by launches and memory traffic, not FLOPs. This kernel runs all layers for
a tile of collocation points in one program: the weights are read per layer from
one packed ``(L, P, P)`` buffer (zero-padded to P, a power of two), and the jet
of the tile (value ``(BLOCK_B, P)``, first-order coefficients ``(BLOCK_B, R, P)``
for the D unit directions, collapsed second-order ``(BLOCK_B, P)``) stays on chip
from the coordinates to the output. Per hidden layer with activation g
(Dangel, Müller, Zeinhofer 2024, "Collapsing Taylor mode AD", eq. 8 at K=2):

    z = v W^T + b,   z_r = v_r W^T,   z_s = s W^T
    v' = g(z),       v'_r = g'(z) z_r,  s' = g'(z) z_s + g''(z) sum_r z_r^2

starting from ``v = x``, ``v_r = e_r``, ``s = 0`` (so the first layer's ``z_r`` is the
column ``W[:, r]``: no GEMM) and ending with the last linear layer, whose ``z_s``
is the Laplacian. Padded units carry zero coefficients, so padding changes
nothing. Implementations: C on the CPU for float32 and float64 ``tanh`` networks
(:mod:`taylorc.kernels.mlp_laplacian_cpu`), PyTorch reference on the same packed layout
(elsewhere off CUDA; also the autograd rule, by recomputation), Triton (CUDA; the CPU under
``TRITON_INTERPRET=1`` in the tests), fake.
"""

from __future__ import annotations

import torch

from .jet_activation import ACT_CODES, ACTIVATIONS, derivatives, triton
from .mlp_laplacian_cpu import mlp_laplacian_cpu, supports

if triton is not None:
    import triton.language as tl

    from .jet_activation import _derivative

MAX_WIDTH = 128
MAX_DEPTH = 8
MAX_DIM = 16


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def fits(dim: int, widths: list[int]) -> bool:
    """Whether an MLP ``dim -> widths[0] -> ... -> widths[-1]`` (incl. the output) fits the kernel."""
    return dim <= MAX_DIM and len(widths) <= MAX_DEPTH and max(widths) <= MAX_WIDTH


def padded_width(weights: list[torch.Tensor]) -> int:
    """P of :func:`pack`: the widest ``(out, in)`` dimension as a power of two, at least 16."""
    return _pow2(max(max(w.shape) for w in weights))


def pack(weights: list[torch.Tensor], biases: list[torch.Tensor | None]):
    """``(L, P, P)`` weights and ``(L, P)`` biases, zero-padded; differentiable (plain torch ops).

    Args:
        weights: L tensors ``(out_l, in_l)`` (``nn.Linear`` layout).
        biases: L tensors ``(out_l,)`` or None.
    """
    P = padded_width(weights)
    ref = weights[0]
    w = torch.stack(
        [torch.nn.functional.pad(w, (0, P - w.shape[1], 0, P - w.shape[0])) for w in weights]
    )
    b = torch.stack(
        [
            torch.nn.functional.pad(b, (0, P - b.shape[0])) if b is not None else ref.new_zeros(P)
            for b in biases
        ]
    )
    return w, b


def mlp_laplacian_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str):
    """The kernel's computation in PyTorch ops on the packed layout: ``(u, lap)``, each ``(B, P)``."""
    B, D = x.shape
    P = w.shape[-1]
    v = torch.nn.functional.pad(x, (0, P - D))
    z = v @ w[0].T + b[0]
    z1 = w[0][:, :D].T.expand(B, D, P)  # e_r W^T: the first layer's unit directions
    zs = torch.zeros_like(z)
    for layer in range(1, w.shape[0]):
        g0, g1, g2 = derivatives(act, z, 2)
        v, v1 = g0, g1[:, None, :] * z1
        s = g1 * zs + g2 * (z1 * z1).sum(1)
        z, z1, zs = v @ w[layer].T + b[layer], v1 @ w[layer].T, s @ w[layer].T
    return z, zs


if triton is not None:

    @triton.jit
    def _mlp_laplacian_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        u_ptr,
        lap_ptr,
        B,
        D,
        L: tl.constexpr,
        P: tl.constexpr,
        R: tl.constexpr,
        BLOCK_B: tl.constexpr,
        ACT: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, P)
        dirs = tl.arange(0, R)
        in_rows = rows < B
        v = tl.load(
            x_ptr + rows[:, None] * D + cols[None, :],
            mask=in_rows[:, None] & (cols[None, :] < D),
            other=0.0,
        )
        w = tl.load(w_ptr + cols[:, None] * P + cols[None, :])  # (out, in) of layer 0
        z = tl.dot(v, tl.trans(w), input_precision="ieee") + tl.load(b_ptr + cols)[None, :]
        # z_r = e_r W^T = W[:, r]: the same (R, P) block for every point of the tile
        z1_dirs = tl.load(
            w_ptr + cols[None, :] * P + dirs[:, None], mask=dirs[:, None] < D, other=0.0
        )
        z1 = tl.broadcast_to(z1_dirs[None, :, :], (BLOCK_B, R, P))
        zs = tl.zeros((BLOCK_B, P), dtype=z.dtype)
        for layer in tl.static_range(1, L):
            g1 = _derivative(z, ACT, 1)
            g2 = _derivative(z, ACT, 2)
            v = _derivative(z, ACT, 0)
            v1 = g1[:, None, :] * z1
            s = g1 * zs + g2 * tl.sum(z1 * z1, axis=1)
            w = tl.load(w_ptr + layer * P * P + cols[:, None] * P + cols[None, :])
            wt = tl.trans(w)
            z = tl.dot(v, wt, input_precision="ieee") + tl.load(b_ptr + layer * P + cols)[None, :]
            z1 = tl.reshape(
                tl.dot(tl.reshape(v1, (BLOCK_B * R, P)), wt, input_precision="ieee"),
                (BLOCK_B, R, P),
            )
            zs = tl.dot(s, wt, input_precision="ieee")
        out = rows[:, None] * P + cols[None, :]
        tl.store(u_ptr + out, z, mask=in_rows[:, None])
        tl.store(lap_ptr + out, zs, mask=in_rows[:, None])


def block_rows(R: int, P: int) -> int:
    """Points per program: keep the (BLOCK_B, R, P) first-order block at <= 16K elements."""
    return max(16, min(64, 16384 // (R * P)))


def mlp_laplacian_triton(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str):
    """Launch the kernel: one program per ``block_rows`` points. Returns ``(u, lap)`` ``(B, P)``."""
    B, D = x.shape
    L, P, _ = w.shape
    R = _pow2(D, least=1)
    block = block_rows(R, P)
    x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
    u, lap = x.new_empty(B, P), x.new_empty(B, P)
    grid = (triton.cdiv(B, block),)
    _mlp_laplacian_kernel[grid](x, w, b, u, lap, B, D, L, P, R, block, ACT_CODES[act])
    return u, lap


@torch.library.custom_op("taylorc::mlp_laplacian", mutates_args=())
def mlp_laplacian(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str, out_width: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and collapsed Laplacian of a whole MLP at every point, in one launch.

    Args:
        x: ``(B, D)`` collocation points, float32 or float64, D <= 16.
        w: ``(L, P, P)`` packed weights (:func:`pack`), L <= 8 linear layers, P <= 128.
        b: ``(L, P)`` packed biases.
        act: the activation between the layers, one of :data:`ACTIVATIONS`.
        out_width: the network's output width when known (the CPU kernel then computes
            only those columns of the last layer); 0: read from ``w``'s zero padding.

    Returns:
        ``(u, lap)``, each ``(B, P)``: the network's output and its Laplacian over
        all D coordinates; columns beyond the output width are zero padding.

    Raises:
        ValueError: unknown activation, or sizes beyond the kernel's limits.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"mlp_laplacian: unknown activation {act!r}; one of {ACTIVATIONS}")
    if x.shape[1] > MAX_DIM or w.shape[0] > MAX_DEPTH or w.shape[-1] > MAX_WIDTH:
        raise ValueError(
            f"mlp_laplacian takes D <= {MAX_DIM}, <= {MAX_DEPTH} layers, widths <= {MAX_WIDTH};"
            f" got D={x.shape[1]}, {w.shape[0]} layers, padded width {w.shape[-1]}"
        )
    if x.is_cuda and triton is not None:
        return mlp_laplacian_triton(x, w, b, act)
    if supports(x, w, act):
        return mlp_laplacian_cpu(x, w, b, act, out_width or None)
    u, lap = mlp_laplacian_reference(x, w, b, act)
    return u.contiguous(), lap.contiguous()


@mlp_laplacian.register_fake
def _(x, w, b, act, out_width=0):
    return x.new_empty(x.shape[0], w.shape[-1]), x.new_empty(x.shape[0], w.shape[-1])


def _setup(ctx, inputs, output):
    x, w, b, act, _ = inputs
    ctx.act = act
    ctx.save_for_backward(x, w, b)


def _backward(ctx, g_u, g_lap):
    x, w, b = ctx.saved_tensors
    with torch.enable_grad():
        _, vjp = torch.func.vjp(lambda *t: mlp_laplacian_reference(*t, ctx.act), x, w, b)
        return (*vjp((g_u, g_lap)), None, None)


mlp_laplacian.register_autograd(_backward, setup_context=_setup)


def collapsed_laplacian(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None], act: str
) -> torch.Tensor:
    """Laplacian ``(B, out)`` of the MLP ``linear -> act -> ... -> linear`` through the kernel.

    Packs the parameters (differentiably, so training reaches them) and calls
    :func:`mlp_laplacian`; ``weights[l]`` is ``(out_l, in_l)``.
    """
    w, b = pack(weights, biases)
    out = weights[-1].shape[0]
    _, lap = torch.ops.taylorc.mlp_laplacian(x, w, b, act, out)
    return lap[:, :out]
