"""Fused linear layer + activation Taylor step: ``taylorc::jet_linear_activation``.

``y = act(x W^T + b)`` on a jet: every coefficient of x goes through the same
GEMM (``z_k = x_k W^T``; the bias only enters the value), and the activation's
Taylor step (:mod:`taylorc.kernels.jet_activation`) runs in the GEMM's epilogue,
so the pre-activation coefficients ``z_k`` never reach memory. One program owns
a ``BLOCK_M x BLOCK_N`` tile of the output: it forms the value tile (and the
activation's derivatives), then per direction r the tiles of orders 1..K_low and
their outputs, accumulating the collapsed top's nonlinear terms in registers,
and finally the collapsed top tile. Implementations: PyTorch reference (off
CUDA), Triton (CUDA; the CPU under ``TRITON_INTERPRET=1`` in the tests), fake,
autograd by recomputation of the reference.
"""

from __future__ import annotations

import torch

from .jet_activation import (
    ACT_CODES,
    MAX_ORDER,
    jet_activation_reference,
    register_recomputed_autograd,
    triton,
)

if triton is not None:
    import triton.language as tl

    from .jet_activation import _derivative, _jet_step


def jet_linear_activation_reference(x0, xs, top, weight, bias, weights, act):
    """The fused step in PyTorch ops; see :func:`jet_linear_activation`."""
    z0 = torch.nn.functional.linear(x0, weight, bias)
    zs = [torch.matmul(x, weight.T) for x in xs]
    ztop = torch.matmul(top, weight.T) if top is not None else None
    shape = z0.shape
    y0, ys, ytop = jet_activation_reference(
        z0.reshape(-1),
        [z.reshape(z.shape[0], -1) for z in zs],
        ztop.reshape(-1) if ztop is not None else None,
        weights,
        act,
    )
    ys = [y.reshape((y.shape[0],) + tuple(shape)) for y in ys]
    return y0.reshape(shape), ys, ytop.reshape(shape) if ytop is not None else None


if triton is not None:

    @triton.jit
    def _tile_dot(
        x_ptr,
        w_ptr,
        rows,
        cols,
        M,
        N,
        IN,
        DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """``x[rows, :] @ W[cols, :]^T`` for one tile, x of shape (M, IN), W of shape (N, IN)."""
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=DTYPE)
        for k0 in range(0, IN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(
                x_ptr + rows[:, None] * IN + ks[None, :],
                mask=(rows[:, None] < M) & (ks[None, :] < IN),
                other=0.0,
            )
            b = tl.load(
                w_ptr + cols[None, :] * IN + ks[:, None],
                mask=(cols[None, :] < N) & (ks[:, None] < IN),
                other=0.0,
            )
            acc += tl.dot(a, b, input_precision="ieee")  # no TF32: match the reference
        return acc

    @triton.jit
    def _jet_linear_kernel(
        x0_ptr,
        x1_ptr,
        x2_ptr,
        x3_ptr,
        x4_ptr,
        top_ptr,
        w_ptr,
        b_ptr,
        cw_ptr,
        y0_ptr,
        y1_ptr,
        y2_ptr,
        y3_ptr,
        y4_ptr,
        ytop_ptr,
        M,
        N,
        IN,
        R,
        ACT: tl.constexpr,
        K_LOW: tl.constexpr,
        COLLAPSED: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_W: tl.constexpr,
        DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        out = rows[:, None] * N + cols[None, :]
        z0 = _tile_dot(x0_ptr, w_ptr, rows, cols, M, N, IN, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
        if HAS_BIAS:
            z0 += tl.load(b_ptr + cols, mask=cols < N, other=0.0)[None, :]
        g1 = _derivative(z0, ACT, 1)
        g2 = _derivative(z0, ACT, 2)
        g3 = _derivative(z0, ACT, 3)
        g4 = _derivative(z0, ACT, 4)
        tl.store(y0_ptr + out, _derivative(z0, ACT, 0), mask=mask)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=z0.dtype)
        plane = M * IN
        for r in range(R):
            z1 = _tile_dot(
                x1_ptr + r * plane, w_ptr, rows, cols, M, N, IN, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K
            )
            z2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=z0.dtype)
            z3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=z0.dtype)
            z4 = tl.zeros([BLOCK_M, BLOCK_N], dtype=z0.dtype)
            if K_LOW >= 2:
                z2 = _tile_dot(
                    x2_ptr + r * plane,
                    w_ptr,
                    rows,
                    cols,
                    M,
                    N,
                    IN,
                    DTYPE,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_K,
                )
            if K_LOW >= 3:
                z3 = _tile_dot(
                    x3_ptr + r * plane,
                    w_ptr,
                    rows,
                    cols,
                    M,
                    N,
                    IN,
                    DTYPE,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_K,
                )
            if K_LOW >= 4:
                z4 = _tile_dot(
                    x4_ptr + r * plane,
                    w_ptr,
                    rows,
                    cols,
                    M,
                    N,
                    IN,
                    DTYPE,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_K,
                )
            o = r * M * N + out
            y1, y2, y3, y4, rest = _jet_step(g1, g2, g3, g4, z1, z2, z3, z4, K_LOW)
            tl.store(y1_ptr + o, y1, mask=mask)
            if K_LOW >= 2:
                tl.store(y2_ptr + o, y2, mask=mask)
            if K_LOW >= 3:
                tl.store(y3_ptr + o, y3, mask=mask)
            if K_LOW >= 4:
                tl.store(y4_ptr + o, y4, mask=mask)
            if COLLAPSED:
                if HAS_W:
                    rest = rest * tl.load(cw_ptr + r)
                acc += rest
        if COLLAPSED:
            zt = _tile_dot(top_ptr, w_ptr, rows, cols, M, N, IN, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
            tl.store(ytop_ptr + out, g1 * zt + acc, mask=mask)


def jet_linear_activation_triton(x0, xs, top, weight, bias, weights, act, blocks=(32, 32, 32)):
    """The Triton implementation (CUDA, or the CPU under ``TRITON_INTERPRET=1``).

    Raises:
        RuntimeError: triton is not installed.
        ValueError: x0 not 2-D, more than 4 orders, or no direction.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    K_low = len(xs)
    if x0.dim() != 2 or not 1 <= K_low <= MAX_ORDER or (top is not None and K_low > 3):
        raise ValueError("jet_linear_activation takes (B, in) values and 1..4 orders of (R, B, in)")
    M, IN = x0.shape
    N, R = weight.shape[0], xs[0].shape[0]
    x0c, wc = x0.contiguous(), weight.contiguous()
    xs = [x.contiguous() for x in xs]
    y0 = x0.new_empty(M, N)
    ys = [x0.new_empty(R, M, N) for _ in xs]
    ytop = x0.new_empty(M, N) if top is not None else None
    pad, out_pad = xs + [xs[0]] * (4 - K_low), ys + [ys[0]] * (4 - K_low)
    BM, BN, BK = blocks
    _jet_linear_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
        x0c,
        *pad,
        top.contiguous() if top is not None else x0c,
        wc,
        bias.contiguous() if bias is not None else wc,
        weights.contiguous() if weights is not None else wc,
        y0,
        *out_pad,
        ytop if ytop is not None else y0,
        M,
        N,
        IN,
        R,
        ACT=ACT_CODES[act],
        K_LOW=K_low,
        COLLAPSED=top is not None,
        HAS_BIAS=bias is not None,
        HAS_W=weights is not None,
        DTYPE=tl.float64 if x0.dtype == torch.float64 else tl.float32,
        BLOCK_M=BM,
        BLOCK_N=BN,
        BLOCK_K=BK,
    )
    return y0, ys, ytop


@torch.library.custom_op("taylorc::jet_linear_activation", mutates_args=())
def jet_linear_activation(
    x0: torch.Tensor,
    xs: list[torch.Tensor],
    top: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor | None,
    act: str,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Fused ``act(x W^T + b)`` on a jet.

    Args:
        x0: ``(B, in)`` value; xs: K_low tensors ``(R, B, in)``; top: ``(B, in)``
            collapsed coefficient of order K_low + 1 or None.
        weight: ``(out, in)``; bias: ``(out,)`` or None (enters the value only).
        weights: ``(R,)`` collapse weights or None (all ones).
        act: one of :data:`taylorc.kernels.ACTIVATIONS`.

    Returns:
        ``(y0 (B, out), ys (K_low tensors (R, B, out)), ytop (B, out) or empty)``.

    Raises:
        ValueError: unknown activation, or an order above 4.
    """
    if x0.is_cuda and triton is not None and x0.dim() == 2 and xs:
        y0, ys, ytop = jet_linear_activation_triton(x0, xs, top, weight, bias, weights, act)
    else:
        y0, ys, ytop = jet_linear_activation_reference(x0, xs, top, weight, bias, weights, act)
    return y0, list(ys), ytop if ytop is not None else x0.new_empty(0)


@jet_linear_activation.register_fake
def _(x0, xs, top, weight, bias, weights, act):
    shape = tuple(x0.shape[:-1]) + (weight.shape[0],)
    ys = [x.new_empty(tuple(x.shape[:-1]) + (weight.shape[0],)) for x in xs]
    return x0.new_empty(shape), ys, x0.new_empty(shape) if top is not None else x0.new_empty(0)


register_recomputed_autograd(jet_linear_activation, jet_linear_activation_reference)
