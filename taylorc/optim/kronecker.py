"""Exact solves with sums of Kronecker products: ``(Σ_t A_t ⊗ B_t) vec X = vec G``.

With column-major vec, ``(A ⊗ B) vec X = vec(B X A)`` for X of shape (d_out, d_in) and
the damped Kronecker factors of a layer, input covariance A (d_in, d_in) and gradient
covariance B (d_out, d_out), symmetric positive definite.

- one term: X = B⁻¹ G A⁻¹;
- two terms (Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 3.4, "invert Kronecker sum"):
  A₁^{-½} A₂ A₁^{-½} = E_A diag(s_A) E_Aᵀ, K_A = A₁^{-½} E_A (so K_Aᵀ A₁ K_A = I and
  K_Aᵀ A₂ K_A = diag(s_A)), the same for B; then
  X = K_B [(K_Bᵀ G K_A) ⊘ (1 + s_B s_Aᵀ)] K_Aᵀ: four ``eigh`` per layer, float64;
- three or more terms: conjugate gradients on the SPD operator X ↦ Σ_t B_t X A_t,
  preconditioned by the exact two-term solve of the first two terms.
"""

from __future__ import annotations

import torch


def _inv_sqrt(M: torch.Tensor) -> torch.Tensor:
    """M^{-½} of an SPD matrix by ``eigh`` (eigenvalues clamped at tiny positive)."""
    e, V = torch.linalg.eigh(M)
    e = e.clamp_min(torch.finfo(M.dtype).tiny)
    return (V * e.rsqrt()) @ V.T


def _congruence(M1: torch.Tensor, M2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, s)`` with Kᵀ M1 K = I and Kᵀ M2 K = diag(s)."""
    R = _inv_sqrt(M1)
    C = R @ M2 @ R
    s, E = torch.linalg.eigh((C + C.T) / 2)
    return R @ E, s


class KroneckerSum:
    """A factored solver for ``Σ_t A_t ⊗ B_t`` (prepared once, applied many times).

    Args:
        pairs: ``[(A_t (d_in, d_in), B_t (d_out, d_out)), ...]``, symmetric positive
            definite (damp them first); computed in float64.
        cg_tol: for three or more terms, CG's relative residual tolerance.
        cg_iters: CG's iteration budget there.
        prepared: the float64 tensors of :meth:`prepared` computed elsewhere (e.g. by
            another rank, :mod:`taylorc.optim.distributed`), shapes
            :meth:`prepared_shapes`: used instead of factorising again.

    Raises:
        ValueError: no pairs; factors of mismatched shapes; ``prepared`` of other shapes.
    """

    def __init__(self, pairs, cg_tol: float = 1e-12, cg_iters: int = 200, prepared=None):
        if not pairs:
            raise ValueError("KroneckerSum needs at least one (A, B) pair")
        shapes = {(A.shape, B.shape) for A, B in pairs}
        if len(shapes) != 1:
            raise ValueError(f"factors of different shapes: {sorted(map(str, shapes))}")
        self.pairs = [(A.double(), B.double()) for A, B in pairs]
        self.cg_tol, self.cg_iters = cg_tol, cg_iters
        (A1, B1), *rest = self.pairs
        if prepared is not None:
            want = self.prepared_shapes(self.pairs)
            if [tuple(t.shape) for t in prepared] != want:
                raise ValueError(f"prepared tensors of shapes other than {want}")
            if not rest:
                self.A_inv, self.B_inv = prepared
            else:
                self.KA, self.KB, self.denom = prepared
        elif not rest:
            self.A_inv, self.B_inv = torch.linalg.inv(A1), torch.linalg.inv(B1)
        else:
            A2, B2 = rest[0]
            self.KA, sA = _congruence(A1, A2)
            self.KB, sB = _congruence(B1, B2)
            self.denom = 1 + sB[:, None] * sA[None, :]

    @staticmethod
    def prepared_shapes(pairs) -> list[tuple[int, int]]:
        """Shapes of :meth:`prepared` for ``pairs``: 1 term ``[A⁻¹, B⁻¹]``, else
        ``[K_A, K_B, 1 + s_B s_Aᵀ]`` (d_in, d_out of the factors)."""
        a, b = pairs[0][0].shape[0], pairs[0][1].shape[0]
        return [(a, a), (b, b)] if len(pairs) == 1 else [(a, a), (b, b), (b, a)]

    def prepared(self) -> list[torch.Tensor]:
        """The factorization (float64) that :meth:`solve` applies; see :meth:`prepared_shapes`."""
        if len(self.pairs) == 1:
            return [self.A_inv, self.B_inv]
        return [self.KA, self.KB, self.denom]

    def _two(self, G: torch.Tensor) -> torch.Tensor:
        """Exact solve with the first one or two terms."""
        if len(self.pairs) == 1:
            return self.B_inv @ G @ self.A_inv
        return self.KB @ ((self.KB.T @ G @ self.KA) / self.denom) @ self.KA.T

    def matvec(self, X: torch.Tensor) -> torch.Tensor:
        """``Σ_t B_t X A_t`` (the operator, for checks and CG)."""
        return sum(B @ X @ A for A, B in self.pairs)

    def solve(self, G: torch.Tensor) -> torch.Tensor:
        """X with ``Σ_t B_t X A_t = G``, ``G (d_out, d_in)``, returned in G's dtype."""
        dtype, G = G.dtype, G.double()
        X = self._two(G)
        if len(self.pairs) > 2:
            X = self._cg(G, X)
        return X.to(dtype)

    def _cg(self, G: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Preconditioned conjugate gradients from X (preconditioner: :meth:`_two`)."""
        R = G - self.matvec(X)
        Zr = self._two(R)
        P, rz = Zr, (R * Zr).sum()
        norm = G.norm()
        for _ in range(self.cg_iters):
            if R.norm() <= self.cg_tol * norm:
                break
            AP = self.matvec(P)
            a = rz / (P * AP).sum()
            X, R = X + a * P, R - a * AP
            Zr = self._two(R)
            rz, rz_old = (R * Zr).sum(), rz
            P = Zr + (rz / rz_old) * P
        return X
