"""Randomized Nyström solve of the sample-space system ``(K + λI)⁻¹ b`` of ENGD-Woodbury and
SPRING (``solve="nystrom"``), for many residual rows R.

Guzmán-Cordero, Dangel, Goldshlager, Zeinhofer, "Improving Energy Natural Gradient Descent
through Woodbury, Momentum, and Randomization" (NeurIPS 2025; code ``andresguzco/rla-pinns``,
``rla_pinns/optim/rand_utils.py``) replace the kernel matrix ``K = Ĵ Ĵᵀ``
(:mod:`taylorc.optim.woodbury`) by a rank-ℓ Nyström approximation built from a sketch
``Y = K Ω`` of an R x ℓ Gaussian test matrix Ω; they find it helps only early in
training, for low-dimensional problems with large batches.

**The sketch** (what the anchor does): K is never formed. Per layer l, the Jacobian
block ``Ĵ_l`` of the residual rows (from the layer inputs and pre-activation gradients,
:func:`~taylorc.optim.gramian.layer_jacobian`) gives ``W_l = Ĵ_lᵀ Ω`` (P_l x ℓ) and
``Y = Σ_l Ĵ_l W_l``: O(R S P) to form the blocks (S Taylor columns) plus 2 ℓ R P
multiply-adds, instead of the kernel's R² P; memory R x P_l for one layer at a time.
``Ωᵀ K Ω = Σ_l W_lᵀ W_l`` comes with it, symmetric positive semi-definite by construction.

**The approximation** is the numerically stable Nyström approximation of Frangella,
Tropp, Udell, "Randomized Nyström preconditioning" (SIAM J. Matrix Anal. Appl. 44(2),
2023, Algorithm 2.1; Tropp, Yurtsever, Udell, Cevher 2017, Algorithm 3), the anchor's
``nystrom_stable``: Ω orthonormalised (QR), shift ``ν = √R · eps · ||Y||_F``,
``Y_ν = Y + νΩ``, ``L Lᵀ = Ωᵀ Y_ν = Ωᵀ K Ω + νI`` (Cholesky), ``B = Y_ν L⁻ᵀ``, thin SVD
``B = U Σ Vᵀ``, ``Λ = max(Σ² − ν, 0)``, ``K̂ = U Λ Uᵀ`` (= ``Y (ΩᵀY)⁺ Yᵀ`` up to the
shift), and its damped inverse ``(K̂ + λI)⁻¹ b = U (Λ + λ)⁻¹ Uᵀ b + (b − U Uᵀ b) / λ``
(the anchor's ``apply_inv_sketch_naive``). QR and SVD cost O(R ℓ²), the Cholesky ℓ³/3.
The anchor's sweeps run a variant without the QR and the SVD (``nystrom_stable_fast``,
``apply_B``: a fixed ν = 1e-7, not subtracted, and ``(B Bᵀ + λI)⁻¹`` by a second
Woodbury identity); the form here is exact for ℓ >= rank K and keeps the 1/λ part
apart from the ℓ x ℓ solve.

Under ``torch.distributed`` each rank sketches with its own rows: rank 0's Ω is
broadcast, the ``W_l`` are all-reduced (one collective per layer), each rank's rows of
Y are all-gathered (:func:`~taylorc.optim.sample_space.gather_rows`): no
linearisation is gathered, and every rank holds the same Y and ``Ωᵀ K Ω``.
"""

from __future__ import annotations

import math
import numbers

import torch

from .gramian import layer_jacobian
from .linearization import Linearization
from .sample_space import Rows, gather_rows

RNG_KEY = "sketch_rng"  # the generator's state in the optimiser's state (state_dict)


def check_sketch_size(sketch_size) -> int:
    """``sketch_size`` as an ``int`` ℓ >= 1.

    Raises:
        ValueError: not an integer (a bool included) or ℓ <= 0. An ℓ above the rows R is
            allowed: the solve clamps it to R (Ω of R orthonormal columns is a basis;
            more columns add nothing).
    """
    if isinstance(sketch_size, bool) or not isinstance(sketch_size, numbers.Integral):
        raise ValueError(f"sketch_size must be a positive integer, got {sketch_size!r}")
    if sketch_size <= 0:
        raise ValueError(f"sketch_size must be a positive integer, got {sketch_size!r}")
    return int(sketch_size)


def sketch_matrix(rows: int, sketch_size: int, generator: torch.Generator, device=None):
    """An R x ℓ test matrix with orthonormal columns: the Q of a Gaussian's QR.

    Args:
        rows: R >= 1.
        sketch_size: ℓ, clamped to R.
        generator: draws the Gaussian (on the generator's device; the result is moved
            to ``device``, default that device).

    Returns:
        ``(R, min(ℓ, R))`` float64 (Frangella, Tropp, Udell 2023, Algorithm 2.1, first lines).
    """
    ell = min(check_sketch_size(sketch_size), rows)
    gauss = torch.randn(
        rows, ell, generator=generator, dtype=torch.float64, device=generator.device
    )
    return torch.linalg.qr(gauss.to(device or generator.device))[0]


def _layer_names(lins: list[Linearization]) -> list[str]:
    """Every weight name of ``lins`` once, in first-seen order (the same on every rank)."""
    return list(dict.fromkeys(name for lin in lins for name in lin.layers))


def kernel_sketch(
    lins: list[Linearization],
    omega: torch.Tensor,
    counts: list[int] | None = None,
    reducer=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Y = K Ω`` as ``Ĵ (Ĵᵀ Ω)`` layer by layer, and ``Ωᵀ K Ω``, without K.

    Args:
        lins: one linearisation per loss term (this rank's points).
        omega: ``(R_r, ℓ)`` the test matrix's rows of this rank's residual rows (term by
            term, each point-major: the order of :func:`~taylorc.optim.woodbury.kernel`).
        counts: N_t per term for the ``1/√N_t`` scaling (None: the points of ``lins``;
            distributed: the global N_t).
        reducer: sums the ``W_l = Ĵ_lᵀ Ω`` over the ranks (None: one process).

    Returns:
        ``(Y_r, core)``: this rank's rows of Y, ``(R_r, ℓ)``, and ``Ωᵀ K Ω = Σ_l W_lᵀ W_l``,
        ``(ℓ, ℓ)``, both float64.

    Raises:
        ValueError: ``omega``'s rows are not the rows of ``lins``.
    """
    counts = [lin.r.shape[0] for lin in lins] if counts is None else counts
    sizes = [lin.r.numel() for lin in lins]
    if omega.shape[0] != sum(sizes):
        raise ValueError(f"omega has {omega.shape[0]} rows, the residuals {sum(sizes)}")
    pieces = omega.split(sizes)
    Y = [torch.zeros_like(p) for p in pieces]
    core = omega.new_zeros(omega.shape[1], omega.shape[1])
    for name in _layer_names(lins):
        blocks = {
            t: layer_jacobian(lin.layers[name]).flatten(0, 1).double() / math.sqrt(n)
            for t, (lin, n) in enumerate(zip(lins, counts))
            if name in lin.layers
        }  # (N_t M_t, P_l) each, rows of term t
        W = sum(J.T @ pieces[t] for t, J in blocks.items())
        if reducer is not None:
            reducer.sum_([W])
        core += W.T @ W
        for t, J in blocks.items():
            Y[t] += J @ W
    return torch.cat(Y), core


def nystrom_approximation(
    Y: torch.Tensor, omega: torch.Tensor, core: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stable randomized Nyström approximation ``K̂ = U diag(Λ) Uᵀ`` of a positive
    semi-definite K from its sketch (Frangella, Tropp, Udell 2023, Algorithm 2.1).

    Args:
        Y: ``(R, ℓ)`` the sketch ``K Ω``.
        omega: ``(R, ℓ)`` the test matrix, orthonormal columns (:func:`sketch_matrix`).
        core: ``Ωᵀ K Ω`` (ℓ, ℓ) when known symmetric (:func:`kernel_sketch`); None:
            ``Ωᵀ Y``, symmetrised.

    Returns:
        ``(U, Λ)``: ``(R, ℓ)`` orthonormal columns and ``(ℓ,)`` eigenvalues >= 0, in
        ``Y``'s dtype (float64 expected).

    Raises:
        torch.linalg.LinAlgError: ``Ωᵀ Y + νI`` not positive definite even with ν raised
            10⁶-fold (K far from positive semi-definite).
    """
    if core is None:
        core = omega.T @ Y
        core = (core + core.T) / 2
    eye = torch.eye(core.shape[0], dtype=core.dtype, device=core.device)
    # ν: a few rounding errors of Y's size; the Cholesky needs Ωᵀ Y_ν positive definite
    nu = math.sqrt(Y.shape[0]) * torch.finfo(Y.dtype).eps * torch.linalg.norm(Y).item()
    nu = max(nu, torch.finfo(Y.dtype).tiny)
    for _ in range(4):
        L, info = torch.linalg.cholesky_ex(core + nu * eye)
        if int(info) == 0:
            break
        nu *= 100.0  # rounding made the core indefinite: a larger shift, removed below
    else:
        L = torch.linalg.cholesky(core + nu * eye)  # raises, naming the failure
    B = torch.linalg.solve_triangular(L.mT, Y + nu * omega, upper=True, left=False)
    U, sigma, _ = torch.linalg.svd(B, full_matrices=False)
    return U, (sigma**2 - nu).clamp(min=0.0)


def nystrom_solve(
    U: torch.Tensor, lam: torch.Tensor, rhs: torch.Tensor, damping: float
) -> torch.Tensor:
    """``(U diag(Λ) Uᵀ + λI)⁻¹ rhs = U (Λ + λ)⁻¹ Uᵀ rhs + (rhs − U Uᵀ rhs) / λ``.

    Args:
        U: :func:`nystrom_approximation`'s ``(R, ℓ)`` orthonormal columns.
        lam: its ``(ℓ,)`` eigenvalues Λ.
        rhs: ``(R,)`` (or ``(R, k)``).
        damping: λ > 0 (the complement of U's range is scaled by 1/λ).

    Returns:
        the shape of ``rhs``, in ``U``'s dtype.

    Raises:
        ValueError: λ <= 0 or not finite.
    """
    if not (math.isfinite(damping) and damping > 0):
        raise ValueError(f"the Nyström solve needs damping λ > 0, got {damping!r}")
    rhs = rhs.to(U.dtype)
    coef = U.T @ rhs
    scale = 1.0 / (lam + damping)
    inside = U @ (coef * (scale if rhs.dim() == 1 else scale[:, None]))
    return inside + (rhs - U @ coef) / damping


class NystromSolver:
    """The solver of ``solve="nystrom"``: ``v ≈ (K + λI)⁻¹ rhs`` with K replaced by its
    rank-ℓ randomized Nyström approximation (module docstring; Frangella, Tropp, Udell
    2023, Algorithm 2.1; Guzmán-Cordero et al., NeurIPS 2025), for
    :func:`~taylorc.optim.woodbury.sample_space_step`'s ``solver``.

    Each call draws a fresh test matrix from ``generator``; the optimisers keep the
    generator's state in their ``state_dict`` (:meth:`resume`, :meth:`record`), so a
    restored optimiser draws the same sketches.

    Args:
        sketch_size: ℓ >= 1, clamped to the rows R at each step (ℓ >= rank K gives the
            exact step up to rounding; the anchor runs ℓ ≈ R/10 to R/2).
        generator: a ``torch.Generator`` (its device draws Ω); None: a new CPU
            generator seeded with 0 (the global random state is left alone).

    Raises:
        ValueError: ``sketch_size`` not a positive integer; (at a call) damping <= 0.
    """

    def __init__(self, sketch_size: int, generator: torch.Generator | None = None):
        self.sketch_size = check_sketch_size(sketch_size)
        self.generator = torch.Generator().manual_seed(0) if generator is None else generator

    def __call__(
        self,
        lins: list[Linearization],
        rows: Rows,
        rhs: torch.Tensor,
        damping: float,
        reducer,
        state: dict | None = None,
    ) -> torch.Tensor:
        """``(R,)`` float64 ``(K̂ + λI)⁻¹ rhs`` for the rows of all ranks (``rhs (R,)``);
        ``state``: the optimiser's state, whose generator state (:meth:`resume`) the
        sketch is drawn from and which receives the generator's next (:meth:`record`)."""
        if not (math.isfinite(damping) and damping > 0):
            raise ValueError(f"the Nyström solve needs damping λ > 0, got {damping!r}")
        if state is not None:  # the sketches of a restored state_dict
            self.resume(state)
        omega = sketch_matrix(len(rhs), self.sketch_size, self.generator, rhs.device)
        if state is not None:
            self.record(state)
        reducer.broadcast_([omega])  # rank 0's sketch on every rank
        local = rows.local(omega, reducer.rank)
        Y_r, core = kernel_sketch(lins, local, rows.totals, reducer)
        Y = gather_rows(Y_r, rows, reducer)
        U, lam = nystrom_approximation(Y, omega, core)
        return nystrom_solve(U, lam, rhs, damping)

    def resume(self, state: dict) -> None:
        """Set the generator from ``state[RNG_KEY]`` where an earlier step (or a loaded
        ``state_dict``, which may have cast it to the parameters' dtype) left one."""
        saved = state.get(RNG_KEY)
        if saved is not None:
            self.generator.set_state(torch.as_tensor(saved).to("cpu", torch.uint8))

    def record(self, state: dict) -> None:
        """Store the generator's state in ``state[RNG_KEY]`` (after a step's draw)."""
        state[RNG_KEY] = self.generator.get_state()


def make_solver(solve: str, sketch_size, generator, damping) -> NystromSolver | None:
    """The optimisers' check of the Nyström options: a :class:`NystromSolver` for
    ``solve == "nystrom"``, else None.

    Raises:
        ValueError: ``solve="nystrom"`` without ``sketch_size``, with a bad one, or with
            ``damping`` <= 0; ``sketch_size`` or ``generator`` given to another solve.
    """
    if solve != "nystrom":
        if sketch_size is not None or generator is not None:
            raise ValueError(
                f"sketch_size and generator are options of solve='nystrom', not {solve!r}"
            )
        return None
    if sketch_size is None:
        raise ValueError("solve='nystrom' needs a sketch_size (ℓ columns of the sketch)")
    if not damping > 0:
        raise ValueError(
            f"solve='nystrom' needs damping > 0 (the sketch's complement is scaled by 1/λ), "
            f"got {damping!r}"
        )
    return NystromSolver(sketch_size, generator)
