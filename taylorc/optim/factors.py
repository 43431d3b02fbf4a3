"""Kronecker factors, gradients and Jacobian products of a PINN loss term, from the
layer inputs and pre-activation gradients.

For one weight W (bias b appended as the last input column) and one loss term
L = 1/(2N) Σ_n ||r_n||², with Z̃_ns the augmented layer input of column s of point n and
g_mns = ∂r_nm/∂z_ns the pre-activation gradient (:mod:`taylorc.optim.linearization`), the
per-point Jacobian is J_nm = Σ_s g_mns Z̃_nsᵀ and the Kronecker factors, input
covariance A and gradient covariance B, are (Dangel, Müller, Zeinhofer,
"Kronecker-Factored Approximate Curvature for Physics-Informed Neural Networks",
NeurIPS 2024, Sec. 3.2):

- KFAC-expand: A = 1/(N S) Σ_n,s Z̃ Z̃ᵀ,   B = 1/N Σ_m,n,s g gᵀ;
- KFAC-reduce: A = 1/N Σ_n z̄ z̄ᵀ (z̄_n = mean_s Z̃_ns),   B = 1/N Σ_m,n (Σ_s g)(Σ_s g)ᵀ.

Columns that are zero by construction still count in S. A boundary term (operator
"u") has S = 1: standard KFAC.
"""

from __future__ import annotations

import functools

import torch

from ..methods.layer_graph import Columns
from .layer import Layer

APPROX = ("expand", "reduce")
SYRK_MIN = 1 << 20  # m·k² multiply-adds: below, the thread limit's cost eats ?syrk's saving


@functools.cache
def _syrk_backend() -> tuple[dict, object]:
    """``({dtype: ?syrk}, threadpoolctl controller)``, loaded at the first large CPU Gram:
    ``import taylorc`` need not pay for loading SciPy's BLAS and the controller.
    The controller is built after SciPy's BLAS is loaded, so that it sees its OpenBLAS."""
    from scipy.linalg import blas
    from threadpoolctl import ThreadpoolController

    return {torch.float64: blas.dsyrk, torch.float32: blas.ssyrk}, ThreadpoolController()


def gram(F: torch.Tensor) -> torch.Tensor:
    """``FᵀF`` ``(k, k)`` of a 2-D ``F (m, k)``: the sum of the rows' outer products.

    When torch runs one thread on the CPU, in float32/float64, for Gram matrices of at
    least ``SYRK_MIN`` multiply-adds (m·k²), it is one symmetric rank-k update (BLAS
    ``?syrk`` from the OpenBLAS that SciPy links, held to one thread with threadpoolctl):
    half the multiply-adds of a general matmul, whose result it equals up to rounding,
    and exactly symmetric. Other float32/float64 cases (CUDA too) take :func:`lower_gram`
    (also exactly symmetric, about half the multiply-adds for k >> 256): OpenBLAS's
    two-thread ``?syrk`` beside torch's threads is slower than its one-thread one, and the
    thread limit has a fixed cost a call (figures: bench/notes.md). Other dtypes and an
    ``F`` that requires grad take ``F.T @ F``. The limit is process-wide while it lasts
    (numpy's OpenBLAS in other Python threads runs on one thread meanwhile). The large CPU
    case goes through the ``torch.library`` op ``taylorc::gram``, so that a traced graph
    (:mod:`taylorc.optim.compiled`) calls it too; the thread count is read when it runs.
    Same dtype and device as ``F``.
    """
    if F.dtype not in (torch.float64, torch.float32) or F.requires_grad:
        return F.T @ F
    if F.device.type != "cpu" or F.shape[0] * F.shape[1] ** 2 < SYRK_MIN:
        return lower_gram(F)
    return torch.ops.taylorc.gram(F)


def lower_gram(F: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """``FᵀF`` ``(k, k)`` of ``F (m, k)``, exactly symmetric: the products of the column
    blocks' lower triangle, mirrored (about half of ``F.T @ F``'s m k² multiply-adds for
    k >> ``leaf``; blocks of at most ``leaf`` columns are one product). Same dtype and
    device as ``F``."""
    k = F.shape[1]
    if k <= leaf:  # BLAS's F.T @ F may differ from its transpose in the last bit
        G = F.T @ F
        return G.tril() + G.tril(-1).T
    h = k // 2
    out = F.new_empty(k, k)
    out[:h, :h] = lower_gram(F[:, :h], leaf)
    out[h:, h:] = lower_gram(F[:, h:], leaf)
    out[h:, :h] = F[:, h:].T @ F[:, :h]
    out[:h, h:] = out[h:, :h].T
    return out


@torch.library.custom_op("taylorc::gram", mutates_args=())
def _gram_op(F: torch.Tensor) -> torch.Tensor:
    """``taylorc::gram``: ``FᵀF`` of a large 2-D CPU float32/float64 ``F`` (see :func:`gram`).

    A ``custom_op``: it survives the module being imported again, which a bare
    ``torch.library.Library`` definition does not."""
    if torch.get_num_threads() != 1:
        return lower_gram(F)
    syrk, blas_threads = _syrk_backend()
    with blas_threads.limit(limits=1, user_api="blas"):
        # F row-major is Fᵀ column-major: syrk(Fᵀ) = FᵀF, upper triangle only
        C = torch.from_numpy(syrk[F.dtype](1.0, F.contiguous().numpy().T, lower=0))
    return C.triu() + C.triu(1).T


@_gram_op.register_fake
def _(F):
    return F.new_empty(F.shape[1], F.shape[1])


def layer_factors(layer: Layer, approx: str = "expand") -> tuple[torch.Tensor, torch.Tensor]:
    """The Kronecker factors of one layer in one term (formulas above): input covariance
    ``A (d_in+1, d_in+1)`` and gradient covariance ``B (d_out, d_out)``.

    The bias row and column of A come from sums of the layer inputs (Z̃ is never built):
    Σ_n,s Z̃ Z̃ᵀ = [[Σ X Xᵀ, Σ_s e_s Σ_n X_ns], [·, N Σ_s e_s²]]. Under expand, columns
    held as products ``P_n ⊙ Q_j`` (:class:`~taylorc.passes.factored.Factored`) add
    ``(Σ_n P_n P_nᵀ) ⊙ (Σ_j Q_j Q_jᵀ)`` to the sums of outer products, never built per point.

    Raises:
        ValueError: ``approx`` not ``"expand"`` or ``"reduce"``.
    """
    e, N, S = layer.e, layer.N, layer.S
    if approx == "expand":
        A = _outer_sum(layer.x_columns)
        if e is not None:  # e is 0/1: sums of the bias columns only
            a = A.new_zeros(A.shape[0])
            for s in layer.bias_columns:
                a = a + layer.x_columns.take([s])[:, 0].sum(0)
            A = _with_bias(A, a, A.new_tensor(N * len(layer.bias_columns)))
        A = A / (N * S)
        B = _outer_sum(layer.g_columns) / N
    elif approx == "reduce":
        X, g = layer.X, layer.g
        z = X.mean(1)
        A = gram(z)
        A = (
            _with_bias(
                A,
                None if e is None else z.sum(0) * e.mean(),
                N * e.mean() ** 2 if e is not None else None,
            )
            / N
        )
        gs = g.sum(2).reshape(-1, g.shape[-1])
        B = gram(gs) / N
    else:
        raise ValueError(f"approx must be one of {APPROX}, got {approx!r}")
    return A, B


def _outer_sum(c: Columns) -> torch.Tensor:
    """``(d, d)``: Σ over the leading dims and all columns of ``v vᵀ`` (matmuls of the
    flattened dense columns: einsum's path is slower on the CPU; a factored block's
    outer products sum to ``(PᵀP) ⊙ (QᵀQ)``)."""
    d = c.dense.shape[-1]
    out = gram(c.dense.reshape(-1, d))
    for _, P, Q in c.factored:
        out = out + gram(P.reshape(-1, d)) * gram(Q)
    return out


def _parts(c: Columns, cols: list[int]) -> tuple[list[int], list[int], list]:
    """``cols`` split into those ``c`` holds dense, with their positions in ``cols``, and,
    per factored block, the part of it in ``cols`` as ``(positions in cols, P, Q rows)``."""
    at = {s: i for i, s in enumerate(cols)}
    held = c.factored_columns
    dense = [s for s in cols if s not in held]
    blocks = []
    for fc, P, Q in c.factored:
        js = [j for j, s in enumerate(fc) if s in at]
        if js:
            blocks.append(([at[fc[j]] for j in js], P, Q[js]))
    return dense, [at[s] for s in dense], blocks


def _with_bias(A: torch.Tensor, a: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
    """``[[A, a], [aᵀ, c]]`` (A itself when ``a`` is None)."""
    if a is None:
        return A
    out = A.new_empty(A.shape[0] + 1, A.shape[1] + 1)
    out[:-1, :-1], out[:-1, -1], out[-1, :-1], out[-1, -1] = A, a, a, c
    return out


def layer_gradient(layer: Layer, r: torch.Tensor) -> torch.Tensor:
    """``[∇W | ∇b]`` of ½ mean ||r||²: 1/N Σ_n,m r_nm Σ_s g_mns Z̃_nsᵀ, ``(d_out, d_in+1)``.

    Columns whose g is zero by construction are skipped; a column whose input is the
    same for every point enters as ``(Σ_n G_ns) X_0sᵀ``, one pass over its g, with
    ``G_ns = Σ_m r_nm g_mns`` (a factored g ``P_mn ⊙ Q_j`` as ``(Σ_m,n r_nm P_mn) ⊙ Q_j``).
    The per-point columns take one matmul over points and columns (``Xᵀ G``: MKL's
    faster orientation for these tall operands); for M = 1 the residual weights the
    narrower of g and X.
    """
    xc, gc, e = layer.x_columns, layer.g_columns, layer.e
    N, d_x, d_out = layer.N, xc.dense.shape[-1], layer.d_out
    per_point, constant = layer.split_columns()
    GW = xc.dense.new_zeros(d_out, d_x)
    if per_point:
        Xp, gp = xc.take(per_point), gc.take(per_point)
        if r.shape[1] > 1:  # Σ_m r_nm g_mns: the weighted g once
            Gp = torch.einsum("nm,mnso->nso", r, gp)
        elif d_out <= d_x:
            Gp = gp[0] * r[:, :1, None]
        else:
            Gp, Xp = gp[0], Xp * r[:, :1, None]
        GW = GW + (Xp.reshape(-1, d_x).T @ Gp.reshape(-1, d_out)).T
    sums = sorted(set(constant) | (set(layer.bias_columns) & set(per_point + constant)))
    Q = dict(zip(sums, _point_sums(gc, r, sums))) if sums else {}
    if constant:
        GW = GW + torch.stack([Q[s] for s in constant]).T @ xc.take(constant)[0]
    if e is not None:  # Σ_s e_s Σ_n w_n G_ns over the active bias columns (e is 0/1)
        b = sum((Q[s] for s in layer.bias_columns if s in Q), GW.new_zeros(d_out))
        GW = torch.cat([GW, b[:, None]], 1)
    return GW / N


def _point_sums(gc: Columns, r: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """``(len(cols), d_out)``: Σ_m,n r_nm g_mns for s in ``cols`` (one pass over their g)."""
    dense, dense_at, blocks = _parts(gc, cols)
    out = gc.dense.new_empty(len(cols), gc.dense.shape[-1])
    if dense:
        g = gc.take(dense)  # (M, N, C, d_out)
        M, N = g.shape[:2]
        if M == 1:
            got = r[:, 0] @ g[0].reshape(N, -1)
        else:
            got = torch.einsum("nm,mnc->c", r, g.reshape(M, N, -1))
        out[dense_at] = got.view(len(dense), -1)
    for at, P, Qf in blocks:
        out[at] = torch.einsum("nm,mnd->d", r, P) * Qf
    return out


def jvp(lin, *directions: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``[J v, ...]`` of the residual of ``lin``, a
    :class:`~taylorc.optim.linearization.Linearization`: its :meth:`jvp` (computed from the
    columns, or by a compiled linearisation's compiled products)."""
    return lin.jvp(*directions)


def eager_jvp(
    r: torch.Tensor, layers: dict[str, Layer], *directions: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """``[J v, ...]`` of the residual, each ``(M, N)``: Σ_layers Σ_s g_mns · (V Z̃_ns), exact.

    Each direction maps weight names to blocks ``V (d_out, d_in+1)`` (missing: zero).
    Columns whose g is zero by construction are skipped. All directions share one
    matmul per layer over the per-point columns, on the narrower side of the layer
    (``(V X)·g`` or ``X·(Vᵀ g)``; the bias column enters through ``e``): the
    elementwise product is then the smaller one. A column whose input is the same for
    every point takes ``g_ns · (V Z̃_0s)``, one product with its g.
    """
    M, N = r.shape[1], r.shape[0]
    out = [r.new_zeros(M, N) for _ in directions]
    for name, layer in layers.items():
        Vs = [(i, d[name]) for i, d in enumerate(directions) if name in d]
        if not Vs:
            continue
        V = torch.stack([v for _, v in Vs])  # (k, d_out, d_in[+1])
        per_point, constant = layer.split_columns()
        pieces = []
        if per_point:
            pieces.append(_jvp_per_point(layer, V, per_point))
        if constant:
            pieces.append(_jvp_constant(layer, V, constant))
        for piece in pieces:
            for j, (i, _) in enumerate(Vs):
                out[i] += piece[j]
    return out


def _jvp_per_point(layer: Layer, V: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """``(k, M, N)``: Σ_{s ∈ cols} g_mns · (V_j Z̃_ns) for each direction j."""
    X, g = layer.x_columns.take(cols), layer.g_columns.take(cols)
    e = None if layer.e is None else layer.e[cols]
    d_out, d_x, k = layer.d_out, X.shape[-1], V.shape[0]
    if d_out <= d_x:  # X Vᵀ (+ e b): (N, S, k, d_out), dotted with g
        Vf = V[..., :d_x].flatten(0, 1)  # (k * d_out, d_x); MKL's faster orientation:
        XV = (Vf @ X.reshape(-1, d_x).T).T.reshape(*X.shape[:-1], *V.shape[:2])
        if e is not None:
            XV = XV + e[:, None, None] * V[..., -1]
        return torch.stack([(g * XV[..., j, :]).sum((-1, -2)) for j in range(k)])
    Vf = V.transpose(0, 1).flatten(1)  # g V: (M, N, S, k, d_in[+1]), dotted with X (and e)
    gV = (Vf.T @ g.reshape(-1, d_out).T).T  # MKL's faster orientation
    gV = gV.reshape(*g.shape[:-1], k, V.shape[-1])
    pieces = []
    for j in range(k):
        piece = (gV[..., j, :d_x] * X).sum((-1, -2))
        if e is not None:
            piece = piece + gV[..., j, -1] @ e
        pieces.append(piece)
    return torch.stack(pieces)


def _jvp_constant(layer: Layer, V: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """``(k, M, N)``: Σ_{s ∈ cols} g_mns · (V_j Z̃_0s), Z̃_0s the columns' common input;
    a factored g ``P_mn ⊙ Q_j`` as ``P_mn · Σ_j Q_j ⊙ (V Z̃_0s_j)``."""
    X0 = layer.x_columns.take(cols)[0]  # (C, d_x)
    d_x, gc = X0.shape[-1], layer.g_columns
    U = V[..., :d_x] @ X0.T  # (k, d_out, C)
    if layer.e is not None:
        U = U + V[..., -1:] * layer.e[cols]
    M, N = gc.dense.shape[:2]
    out = U.new_zeros(V.shape[0], M, N)
    dense, dense_at, blocks = _parts(gc, cols)
    if dense:
        g = gc.take(dense)  # (M, N, C', d_out)
        Ud = U[:, :, dense_at].transpose(1, 2).flatten(1)  # g's order
        out = out + (g.reshape(M * N, -1) @ Ud.T).T.reshape(-1, M, N)
    for at, P, Qf in blocks:
        W = torch.einsum("jo,koj->ko", Qf, U[:, :, at])  # (k, d_out)
        out = out + (P.reshape(M * N, -1) @ W.T).T.reshape(-1, M, N)
    return out


def to_vector(block: torch.Tensor, layer: Layer) -> torch.Tensor:
    """``(..., d_out, d_in[+1]) -> (..., P)`` as ``cat(W.flatten(), b)`` (parameter order)."""
    if layer.bias is None:
        return block.flatten(-2)
    return torch.cat([block[..., :-1].flatten(-2), block[..., -1]], -1)


def from_vector(vec: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Inverse of :func:`to_vector` for one layer's slice ``(P_l,) -> (d_out, d_in[+1])``."""
    d_out, d_in = layer.d_out, layer.d_in
    if layer.bias is None:
        return vec.reshape(d_out, d_in)
    k = d_out * (d_in - 1)
    return torch.cat([vec[:k].reshape(d_out, d_in - 1), vec[k:, None]], 1)
