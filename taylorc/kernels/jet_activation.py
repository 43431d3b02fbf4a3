"""Fused elementwise Taylor step of an activation: ``taylorc::jet_activation``.

For ``y = g(x)`` with x's jet ``x_0`` (shape ``(N,)``) and ``x_k`` (``(R, N)``,
k = 1..K), Faa di Bruno's formula in the derivative convention gives

    y_1 = g1 x_1
    y_2 = g1 x_2 + g2 x_1^2
    y_3 = g1 x_3 + 3 g2 x_1 x_2 + g3 x_1^3
    y_4 = g1 x_4 + g2 (4 x_1 x_3 + 3 x_2^2) + 6 g3 x_1^2 x_2 + g4 x_1^4

(Griewank and Walther, "Evaluating Derivatives", 2008, Sec. 13.2). In collapsed
mode (Dangel et al. 2025, Sec. 3) the top coefficient is the weighted sum over
directions, ``x_K^c = sum_r w_r x_{K,r}`` of shape ``(N,)``; it enters linearly, so
``y_K^c = g1 x_K^c + sum_r w_r (nonlinear terms of direction r)``.

The op reads every input coefficient once and writes every output once; the
derivatives ``g1..gK`` are computed once per element and the sum over directions
happens in the kernel. Implementations: PyTorch (any device; the reference),
Triton (CUDA; also runs on the CPU under ``TRITON_INTERPRET=1``, which is how the
tests check it), a fake implementation for tracing, and an autograd rule that
differentiates the PyTorch reference by recomputation.

Activations: tanh, sin, cos, sigmoid, silu, softplus, gelu (erf form), exp.
"""

from __future__ import annotations

import math

import torch

ACTIVATIONS = ("tanh", "sin", "cos", "sigmoid", "silu", "softplus", "gelu", "exp")
MAX_ORDER = 4


# -- reference (PyTorch) ------------------------------------------------------------------


def _sigmoid_derivatives(s: torch.Tensor, K: int) -> list[torch.Tensor]:
    """``sigma, sigma', ..., sigma^(K)`` as polynomials in s = sigma(x)."""
    d1 = s * (1 - s)
    polys = [s, d1, d1 * (1 - 2 * s), d1 * (1 - 6 * s + 6 * s**2)]
    polys.append(d1 * (1 - 14 * s + 36 * s**2 - 24 * s**3))
    return polys[: K + 1]


def derivatives(act: str, x: torch.Tensor, K: int) -> list[torch.Tensor]:
    """``[g(x), g'(x), ..., g^(K)(x)]`` for an activation, elementwise (K <= 4).

    Raises:
        ValueError: unknown activation or K > 4.
    """
    if act not in ACTIVATIONS or not 0 <= K <= MAX_ORDER:
        raise ValueError(f"jet_activation supports {ACTIVATIONS} up to order 4, got {act!r}, {K}")
    if act == "tanh":
        t = torch.tanh(x)
        d1 = 1 - t * t
        out = [t, d1, -2 * t * d1, d1 * (6 * t * t - 2), d1 * (16 * t - 24 * t**3)]
    elif act in ("sin", "cos"):
        s, c = torch.sin(x), torch.cos(x)
        cycle = [s, c, -s, -c] if act == "sin" else [c, -s, -c, s]
        out = [cycle[k % 4] for k in range(5)]
    elif act == "exp":
        e = torch.exp(x)
        out = [e] * 5
    elif act == "sigmoid":
        out = _sigmoid_derivatives(torch.sigmoid(x), 4)
    elif act == "softplus":
        out = [torch.nn.functional.softplus(x)] + _sigmoid_derivatives(torch.sigmoid(x), 3)
    elif act == "silu":
        sig = _sigmoid_derivatives(torch.sigmoid(x), 4)
        out = [x * sig[0]] + [x * sig[k] + k * sig[k - 1] for k in range(1, 5)]
    else:  # gelu, erf form: x Phi(x)
        phi = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        Phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        x2 = x * x
        out = [x * Phi, Phi + x * phi, (2 - x2) * phi, (x2 - 4) * x * phi]
        out.append((-x2 * x2 + 7 * x2 - 4) * phi)
    return out[: K + 1]


def faa_di_bruno_terms(g: list, x: list, k: int):
    """``(linear, rest)`` of ``y_k``: ``g1 x_k`` and the products of lower orders (k <= 4)."""
    g1 = g[1]
    x1 = x[1]
    if k == 1:
        return g1 * x[1], None
    if k == 2:
        return g1 * x[2], g[2] * x1 * x1
    if k == 3:
        return g1 * x[3], 3 * g[2] * x1 * x[2] + g[3] * x1 * x1 * x1
    x2 = x[2]
    rest = g[2] * (4 * x1 * x[3] + 3 * x2 * x2) + 6 * g[3] * x1 * x1 * x2 + g[4] * x1**4
    return g1 * x[4], rest


def jet_activation_reference(
    x0: torch.Tensor,
    xs: list[torch.Tensor],
    top: torch.Tensor | None,
    weights: torch.Tensor | None,
    act: str,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """The Taylor step in PyTorch ops; see :func:`jet_activation` for the arguments."""
    K = len(xs) + (1 if top is not None else 0)
    g = derivatives(act, x0, K)
    x = [x0] + list(xs)
    ys = []
    for k in range(1, len(xs) + 1):
        lin, rest = faa_di_bruno_terms(g, x, k)
        ys.append(lin if rest is None else lin + rest)
    ytop = None
    if top is not None:
        lin, rest = faa_di_bruno_terms(g, x + [top], K)  # rest: (R, N) per direction
        if rest is not None:
            rest = rest * weights.to(rest.dtype)[:, None] if weights is not None else rest
            lin = lin + rest.sum(0)
        ytop = lin
    return g[0], ys, ytop


# -- Triton ----------------------------------------------------------------------------------

try:  # triton is a Linux dependency; the op falls back to the reference without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}

if triton is not None:

    @triton.jit
    def _sigmoid_poly(s, k: tl.constexpr):
        d1 = s * (1 - s)
        if k == 0:
            out = s
        elif k == 1:
            out = d1
        elif k == 2:
            out = d1 * (1 - 2 * s)
        elif k == 3:
            out = d1 * (1 - 6 * s + 6 * s * s)
        else:
            out = d1 * (1 - 14 * s + 36 * s * s - 24 * s * s * s)
        return out

    @triton.jit
    def _derivative(x, ACT: tl.constexpr, k: tl.constexpr):
        """g^(k)(x) for the activation with code ACT (see ACTIVATIONS)."""
        if ACT == 0:  # tanh = 2 sigmoid(2x) - 1
            t = 2 * tl.sigmoid(2 * x) - 1
            d1 = 1 - t * t
            if k == 0:
                out = t
            elif k == 1:
                out = d1
            elif k == 2:
                out = -2 * t * d1
            elif k == 3:
                out = d1 * (6 * t * t - 2)
            else:
                out = d1 * (16 * t - 24 * t * t * t)
        elif ACT == 1 or ACT == 2:  # sin, cos: a 4-cycle shifted by one for cos
            j: tl.constexpr = (k + (ACT - 1)) % 4
            if j == 0:
                out = tl.sin(x)
            elif j == 1:
                out = tl.cos(x)
            elif j == 2:
                out = -tl.sin(x)
            else:
                out = -tl.cos(x)
        elif ACT == 3:
            out = _sigmoid_poly(tl.sigmoid(x), k)
        elif ACT == 4:  # silu = x sigmoid(x)
            s = tl.sigmoid(x)
            if k == 0:
                out = x * s
            else:
                out = x * _sigmoid_poly(s, k) + k * _sigmoid_poly(s, k - 1)
        elif ACT == 5:  # softplus, stable: max(x, 0) + log(1 + exp(-|x|))
            if k == 0:
                out = tl.maximum(x, 0.0) + tl.log(1 + tl.exp(-tl.abs(x)))
            else:
                out = _sigmoid_poly(tl.sigmoid(x), k - 1)
        elif ACT == 6:  # gelu = x Phi(x)
            phi = tl.exp(-0.5 * x * x) * 0.3989422804014327
            x2 = x * x
            if k == 0:
                out = x * 0.5 * (1 + tl.math.erf(x * 0.7071067811865476))
            elif k == 1:
                out = 0.5 * (1 + tl.math.erf(x * 0.7071067811865476)) + x * phi
            elif k == 2:
                out = (2 - x2) * phi
            elif k == 3:
                out = (x2 - 4) * x * phi
            else:
                out = (-x2 * x2 + 7 * x2 - 4) * phi
        else:
            out = tl.exp(x)
        return out

    @triton.jit
    def _jet_step(g1, g2, g3, g4, x1, x2, x3, x4, K_LOW: tl.constexpr):
        """Orders 1..4 of act(x) along one direction (Faa di Bruno), and the nonlinear
        part of order K_LOW + 1 (what a collapsed top sums over directions)."""
        rest2 = g2 * x1 * x1
        rest3 = 3 * g2 * x1 * x2 + g3 * x1 * x1 * x1
        rest4 = g2 * (4 * x1 * x3 + 3 * x2 * x2) + 6 * g3 * x1 * x1 * x2 + g4 * x1 * x1 * x1 * x1
        if K_LOW == 1:
            rest = rest2
        elif K_LOW == 2:
            rest = rest3
        else:
            rest = rest4
        return g1 * x1, g1 * x2 + rest2, g1 * x3 + rest3, g1 * x4 + rest4, rest

    @triton.jit
    def _jet_activation_kernel(
        x0_ptr,
        x1_ptr,
        x2_ptr,
        x3_ptr,
        x4_ptr,
        top_ptr,
        w_ptr,
        y0_ptr,
        y1_ptr,
        y2_ptr,
        y3_ptr,
        y4_ptr,
        ytop_ptr,
        N,
        R,
        ACT: tl.constexpr,
        K_LOW: tl.constexpr,
        COLLAPSED: tl.constexpr,
        HAS_W: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0)
        g1 = _derivative(x0, ACT, 1)
        g2 = _derivative(x0, ACT, 2)
        g3 = _derivative(x0, ACT, 3)
        g4 = _derivative(x0, ACT, 4)
        tl.store(y0_ptr + offs, _derivative(x0, ACT, 0), mask=mask)
        acc = tl.zeros([BLOCK], dtype=x0.dtype)
        for r in range(R):
            x1 = tl.load(x1_ptr + r * N + offs, mask=mask, other=0.0)
            x2 = tl.zeros([BLOCK], dtype=x0.dtype)
            x3 = tl.zeros([BLOCK], dtype=x0.dtype)
            x4 = tl.zeros([BLOCK], dtype=x0.dtype)
            if K_LOW >= 2:
                x2 = tl.load(x2_ptr + r * N + offs, mask=mask, other=0.0)
            if K_LOW >= 3:
                x3 = tl.load(x3_ptr + r * N + offs, mask=mask, other=0.0)
            if K_LOW >= 4:
                x4 = tl.load(x4_ptr + r * N + offs, mask=mask, other=0.0)
            y1, y2, y3, y4, rest = _jet_step(g1, g2, g3, g4, x1, x2, x3, x4, K_LOW)
            tl.store(y1_ptr + r * N + offs, y1, mask=mask)
            if K_LOW >= 2:
                tl.store(y2_ptr + r * N + offs, y2, mask=mask)
            if K_LOW >= 3:
                tl.store(y3_ptr + r * N + offs, y3, mask=mask)
            if K_LOW >= 4:
                tl.store(y4_ptr + r * N + offs, y4, mask=mask)
            if COLLAPSED:  # the top order K = K_LOW + 1, summed over directions in-kernel
                if HAS_W:
                    rest = rest * tl.load(w_ptr + r)
                acc += rest
        if COLLAPSED:
            top = tl.load(top_ptr + offs, mask=mask, other=0.0)
            tl.store(ytop_ptr + offs, g1 * top + acc, mask=mask)


def jet_activation_triton(x0, xs, top, weights, act, block: int = 256):
    """The Triton implementation (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Raises:
        RuntimeError: triton is not installed.
        ValueError: more than 4 orders, or a collapsed top above order 4.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    K_low = len(xs)
    if K_low > MAX_ORDER or (top is not None and not 1 <= K_low <= MAX_ORDER - 1):
        raise ValueError(
            f"jet_activation handles orders up to {MAX_ORDER}, got {K_low} lower orders"
        )
    x0c = x0.contiguous()
    if K_low == 0:  # no directions: the value, and a collapsed order 1 is linear
        g = derivatives(act, x0, 1)
        return g[0], [], (g[1] * top if top is not None else None)
    xs = [x.contiguous() for x in xs]
    N, R = x0c.numel(), xs[0].shape[0]
    y0, ys = torch.empty_like(x0c), [torch.empty_like(x) for x in xs]
    ytop = torch.empty_like(x0c) if top is not None else None
    pad = xs + [xs[0]] * (4 - K_low)  # unused pointers: never read (K_LOW is constexpr)
    out_pad = ys + [ys[0]] * (4 - K_low)
    _jet_activation_kernel[(triton.cdiv(N, block),)](
        x0c,
        *pad,
        top.contiguous() if top is not None else x0c,
        weights.contiguous() if weights is not None else x0c,
        y0,
        *out_pad,
        ytop if ytop is not None else y0,
        N,
        R,
        ACT=ACT_CODES[act],
        K_LOW=K_low,
        COLLAPSED=top is not None,
        HAS_W=weights is not None,
        BLOCK=block,
    )
    return y0, ys, ytop


# -- the torch.library op ----------------------------------------------------------------------


@torch.library.custom_op("taylorc::jet_activation", mutates_args=())
def jet_activation(
    x0: torch.Tensor,
    xs: list[torch.Tensor],
    top: torch.Tensor | None,
    weights: torch.Tensor | None,
    act: str,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Fused Taylor step of ``y = act(x)`` (see the module docstring).

    Args:
        x0: ``(N,)`` the value (the source tensor flattened).
        xs: K_low tensors ``(R, N)``: the coefficients of orders 1..K_low per direction.
        top: ``(N,)`` the collapsed coefficient of order ``K_low + 1``, or None
            (standard Taylor mode: every order is in ``xs``).
        weights: ``(R,)`` collapse weights, or None for all ones.
        act: one of :data:`ACTIVATIONS`.

    Returns:
        ``(y0 (N,), ys (K_low tensors (R, N)), ytop (N,) or an empty tensor)``,
        float32 or float64 like the inputs. On CUDA the Triton kernel runs,
        elsewhere the PyTorch reference.

    Raises:
        ValueError: unknown activation, or an order above 4.
    """
    if x0.is_cuda and triton is not None:
        y0, ys, ytop = jet_activation_triton(x0, xs, top, weights, act)
    else:
        y0, ys, ytop = jet_activation_reference(x0, xs, top, weights, act)
    return y0, list(ys), ytop if ytop is not None else x0.new_empty(0)


@jet_activation.register_fake
def _(x0, xs, top, weights, act):
    ytop = torch.empty_like(x0) if top is not None else x0.new_empty(0)
    return torch.empty_like(x0), [torch.empty_like(x) for x in xs], ytop


def register_recomputed_autograd(op, reference) -> None:
    """Autograd for a jet op ``op(x0, xs, top, *tensors, act)`` by recomputing ``reference``.

    The backward is the exact vector-Jacobian product of the PyTorch reference
    (``torch.func.vjp``), so it needs only the inputs; None inputs (no collapsed
    top, no bias, all-one weights) get no gradient.
    """

    def setup(ctx, inputs, output):
        x0, xs, *rest, act = inputs
        ctx.act, ctx.present = act, [t is not None for t in rest]
        ctx.save_for_backward(x0, *[t for t in rest if t is not None], *xs)

    def backward(ctx, g0, gs, gtop):
        n_opt = sum(ctx.present)
        x0, opt, xs = (
            ctx.saved_tensors[0],
            ctx.saved_tensors[1 : 1 + n_opt],
            ctx.saved_tensors[1 + n_opt :],
        )

        def f(x0, xs, *given):
            it = iter(given)
            y0, ys, ytop = reference(
                x0, xs, *[next(it) if p else None for p in ctx.present], ctx.act
            )
            return (y0, ys) + ((ytop,) if ytop is not None else ())

        with torch.enable_grad():
            _, vjp = torch.func.vjp(f, x0, list(xs), *opt)
            has_top = ctx.present[0]  # the collapsed top is the first optional input
            g_x0, g_xs, *g_opt = vjp((g0, list(gs)) + ((gtop,) if has_top else ()))
        it = iter(g_opt)
        return (g_x0, list(g_xs), *[next(it) if p else None for p in ctx.present], None)

    op.register_autograd(backward, setup_context=setup)


register_recomputed_autograd(jet_activation, jet_activation_reference)
