"""Natural gradient in sample space: the kernel matrix ``K = Ĵ Ĵᵀ`` from the layer inputs
and pre-activation gradients, the Woodbury solve of ENGD and SPRING's momentum.

The PINN loss ``L = Σ_t 1/(2N_t) Σ_n ||r_t,n||²`` has the Gauss-Newton Gramian
``G = Ĵᵀ Ĵ`` and gradient ``∇L = Ĵᵀ r̂`` with the rows of every term stacked and scaled,
``Ĵ_t = J_t / √N_t``, ``r̂_t = r_t / √N_t``. The push-through identity
``(Ĵᵀ Ĵ + λI)⁻¹ Ĵᵀ = Ĵᵀ (Ĵ Ĵᵀ + λI)⁻¹`` moves ENGD's solve from the P x P Gramian to the
R x R kernel matrix (R = rows), O(R² P + R³) instead of O(P³) (Guzmán-Cordero, Dangel,
Goldshlager, Zeinhofer, "Improving Energy Natural Gradient Descent through Woodbury,
Momentum, and Randomization", NeurIPS 2025, Sec. 3). SPRING (Goldshlager, Abrahamsen,
Lin 2024; Sec. 4 of the same paper) adds momentum in sample space:
``φ_k = μ φ_(k-1) + Ĵᵀ (K + λI)⁻¹ (r̂ − μ Ĵ φ_(k-1))``, ``θ ← θ − η φ_k``; μ = 0 is the
Woodbury step of ENGD.

The kernel matrix needs no Jacobian: row n's weight gradient of a linear layer is
``J_n = Σ_s g_ns Z̃_nsᵀ`` (pre-activation gradients g, augmented layer inputs Z̃) over
the Taylor graph's columns s (Dangel, Müller, Zeinhofer,
NeurIPS 2024, Sec. 3.2), so ``J_n · J_n' = Σ_s,s' (g_ns · g_n's') (Z̃_ns · Z̃_n's')``:
per layer, either that sum of Gram products (cheap for wide layers) or the per-point
Jacobian block and its Gram matrix (cheap for narrow ones), whichever costs fewer
multiplications.

Under ``torch.distributed`` each rank holds the rows of its own points; K, r̂ and
``Ĵ φ`` span the rows of all ranks, gathered by :mod:`taylorc.optim.sample_space`
(:func:`sample_space_step`). For many rows, :mod:`taylorc.optim.nystrom` stands in for
the solve with ``(K̂ + λI)⁻¹``, K̂ a randomized Nyström approximation from ``Ĵ (Ĵᵀ Ω)``
(the ``solver`` of :func:`sample_space_step`).
"""

from __future__ import annotations

import math

import torch

from .distributed import LocalReducer
from .factors import gram, layer_gradient
from .gramian import layer_jacobian
from .layer import Layer
from .linearization import Linearization
from .sample_space import Rows, gather_linearizations, gather_rows


def _layer_kernel(a: Layer, b: Layer, jacobians: dict | None = None) -> torch.Tensor:
    """``(N_a M_a, N_b M_b)``: one layer's part ``J_a J_bᵀ`` of the kernel matrix, rows
    point-major, then output. ``jacobians`` memoises the per-point Jacobian blocks by
    record (one term's block serves every term pair)."""
    cols_a, cols_b = a.nonzero_columns(), b.nonzero_columns()  # the others add nothing
    d_out, d_in = a.d_out, a.d_in
    if len(cols_a) * len(cols_b) * (d_out + d_in) < d_out * d_in:  # wide: Gram products
        ga, Za, gb, Zb = a.g, a.Z, b.g, b.Z  # (M, N, S, d_out), (N, S, d_in [+ 1])
        (Ma, Na), (Mb, Nb) = ga.shape[:2], gb.shape[:2]
        K = ga.new_zeros(Na, Ma, Nb, Mb)
        for s in cols_a:
            for t in cols_b:
                gg = torch.einsum("mno,kpo->nmpk", ga[:, :, s], gb[:, :, t])
                K += gg * (Za[:, s] @ Zb[:, t].T)[:, None, :, None]
        return K.reshape(Na * Ma, Nb * Mb)
    jacobians = {} if jacobians is None else jacobians
    Ja, Jb = (_jacobian_rows(layer, jacobians) for layer in (a, b))
    return gram(Ja.T) if b is a else Ja @ Jb.T


def _jacobian_rows(layer: Layer, memo: dict) -> torch.Tensor:
    """``(N M, P_l)``: the layer's per-point Jacobian block, once per record."""
    if id(layer) not in memo:
        memo[id(layer)] = layer_jacobian(layer).flatten(0, 1)
    return memo[id(layer)]


def kernel(
    lins: list[Linearization],
    cols: list[Linearization] | None = None,
    counts: list[int] | None = None,
) -> torch.Tensor:
    """The kernel matrix ``K = Ĵ Ĵᵀ`` of the stacked, scaled residual rows, ``(R, R)``; with
    ``cols``, its block ``Ĵ_lins Ĵ_colsᵀ`` (``(R_lins, R_cols)``: under
    ``torch.distributed``, this rank's rows against those of all ranks,
    :mod:`taylorc.optim.sample_space`).

    Args:
        lins: one linearisation per loss term (:func:`taylorc.optim.linearization.linearize`),
            term t with residual ``r_t (N_t, M_t)``: the rows.
        cols: the columns' linearisations, the same terms (None or ``lins``: the square,
            symmetric K, whose blocks below the diagonal are the mirror of those above).
        counts: N_t per term for the scaling (None: the points of ``cols``).

    Returns:
        rows and columns term by term, each term point-major (row ``n M_t + m``), in the
        linearisations' dtype; block (t, u) scaled by ``1/√(N_t N_u)``.
    """
    square = cols is None or cols is lins
    cols = lins if cols is None else cols
    counts = _counts(cols, counts)
    jacobians: dict = {}
    blocks: dict = {}
    for t, (la, na) in enumerate(zip(lins, counts)):
        for u, (lb, nb) in enumerate(zip(cols, counts)):
            if square and u < t:  # K is symmetric: the mirror of block (u, t)
                blocks[t, u] = blocks[u, t].T
                continue
            K = la.r.new_zeros(la.r.numel(), lb.r.numel())
            for name, a in la.layers.items():
                b = lb.layers.get(name)
                if b is not None:
                    K += _layer_kernel(a, b, jacobians)
            blocks[t, u] = K / math.sqrt(na * nb)
    rows = [torch.cat([blocks[t, u] for u in range(len(cols))], 1) for t in range(len(lins))]
    return torch.cat(rows, 0)


def scaled_residual(lins: list[Linearization], counts: list[int] | None = None) -> torch.Tensor:
    """``r̂ = [r_t / √N_t]`` flattened point-major, ``(R,)`` (the order of :func:`kernel`);
    ``counts``: N_t per term (None: the points of ``lins``; under ``torch.distributed``
    the global N_t, this rank's rows)."""
    counts = _counts(lins, counts)
    return torch.cat([lin.r.reshape(-1) / math.sqrt(n) for lin, n in zip(lins, counts)])


def _counts(lins: list[Linearization], counts: list[int] | None) -> list[int]:
    """N_t per term: ``counts``, or (None) the points of ``lins``."""
    return [lin.r.shape[0] for lin in lins] if counts is None else counts


def transpose_product(
    lins: list[Linearization], v: torch.Tensor, counts: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """``Ĵᵀ v`` as blocks ``[∇W | ∇b]`` per weight name, for ``v`` of shape ``(R,)`` (the
    rows of ``lins``, term by term), in the residuals' dtype.

    ``J_tᵀ v_t = N * layer_gradient(layer, v_t)`` (the gradient of ½ mean ``v·r`` over
    the N points here), scaled by ``1/√N_t``; ``counts``: N_t per term (None: N, the
    points here; under ``torch.distributed`` the global N_t, this rank's share of the sum).
    """
    out: dict[str, torch.Tensor] = {}
    i = 0
    for lin, n in zip(lins, _counts(lins, counts)):
        N, M = lin.r.shape
        vt = v[i : i + N * M].reshape(N, M).to(lin.r.dtype)
        i += N * M
        for name, layer in lin.layers.items():
            block = layer_gradient(layer, vt) * (N / math.sqrt(n))
            out[name] = out[name] + block if name in out else block
    return out


def jacobian_product(
    lins: list[Linearization], blocks: dict[str, torch.Tensor], counts: list[int] | None = None
) -> torch.Tensor:
    """``Ĵ φ`` for ``φ`` given as blocks per weight name, ``(R,)`` (the order of
    :func:`kernel`); rows scaled by ``1/√N_t``, ``counts`` as :func:`transpose_product`'s."""
    parts = []
    for lin, n in zip(lins, _counts(lins, counts)):
        (jv,) = lin.jvp(blocks)  # (M, N)
        parts.append(jv.T.reshape(-1) / math.sqrt(n))
    return torch.cat(parts)


def damped_solve(A: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """``(A + λI)⁻¹ rhs`` for a symmetric positive semi-definite ``A (n, n)``, ``rhs (n,)``.

    Cholesky (n³/3 multiplications) when ``λ > 0`` and the factorisation succeeds; else the
    minimum-norm least-squares solution by SVD (``gelsd``, about 10x the time at n = 3000,
    and what a singular, undamped ``A`` needs). Returns ``(n,)`` in ``A``'s dtype.
    """
    A = A + damping * torch.eye(len(A), dtype=A.dtype, device=A.device)
    if damping > 0:
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_solve(rhs[:, None], L)[:, 0]
    return torch.linalg.lstsq(A, rhs[:, None], driver="gelsd").solution[:, 0]


def sample_space_step(
    lins: list[Linearization],
    damping: float,
    momentum: float = 0.0,
    previous: dict[str, torch.Tensor] | None = None,
    reducer=None,
    solver=None,
    state: dict | None = None,
) -> dict[str, torch.Tensor]:
    """SPRING's ``φ = μ φ_prev + Ĵᵀ (K + λI)⁻¹ (r̂ − μ Ĵ φ_prev)``; μ = 0: ENGD-Woodbury.

    The R x R system is solved in float64 by Cholesky (``K + λI`` is symmetric positive
    definite for λ > 0; with λ = 0 a least-squares solve takes a singular K). Under
    ``torch.distributed`` Ĵ holds the rows of all ranks (:mod:`taylorc.optim.sample_space`):
    every rank computes its rows of K against all rows, the row blocks, ``r̂`` and
    ``Ĵ φ_prev`` are all-gathered, every rank solves the same system and uses rank 0's
    solution v (broadcast), each rank's rows give its part of ``Ĵᵀ v`` (all-reduced),
    and rank 0's φ is broadcast: the ranks stay bitwise in lockstep.

    Args:
        lins: one linearisation per loss term (this rank's points).
        damping: λ >= 0.
        momentum: μ in [0, 1).
        previous: ``φ_prev`` per weight name (None: zero); the same on every rank.
        reducer: :class:`~taylorc.optim.distributed.Reducer` of the process group, or
            :class:`~taylorc.optim.distributed.LocalReducer` / None for one process.
        solver: None (the exact solve above) or ``solver(lins, rows, rhs, damping, reducer,
            state) -> v (R,)`` float64, ``(K + λI)⁻¹ rhs`` without K (the Nyström solve,
            :class:`~taylorc.optim.nystrom.NystromSolver`; ``rhs`` from each rank's rows).
        state: the optimiser's state, for ``solver``'s sketch generator (``state_dict``).

    Returns:
        ``φ`` per weight name, blocks ``[W | b]`` in the residuals' dtype, the same on
        every rank; the update is ``θ ← θ − η φ``.
    """
    reducer = LocalReducer(lins[0].r.device) if reducer is None else reducer
    rows = Rows.of(lins, reducer)
    counts = rows.totals
    if solver is None:
        cols = gather_linearizations(lins, rows, reducer)  # one process: lins
        K = gather_rows(kernel(lins, cols, counts), rows, reducer).double()
        rhs = scaled_residual(cols).double()
    else:
        rhs = gather_rows(scaled_residual(lins, counts), rows, reducer).double()
    if momentum and previous:
        jp = gather_rows(jacobian_product(lins, previous, counts), rows, reducer)
        rhs = rhs - momentum * jp.double()
    if solver is None:
        v = damped_solve(K, rhs, damping)
    else:
        v = solver(lins, rows, rhs, damping, reducer, state)
    reducer.broadcast_([v])
    phi = transpose_product(lins, rows.local(v, reducer.rank), counts)
    phi = {name: block.to(lins[0].r.dtype) for name, block in phi.items()}
    reducer.sum_(list(phi.values()))
    if momentum and previous:
        for name, block in previous.items():
            phi[name] = phi[name] + momentum * block if name in phi else momentum * block
    reducer.broadcast_(list(phi.values()))
    return phi
