"""Rules of matrix functions: inverse, solve, determinant, log-determinant.

Taylor identities (Griewank & Walther, "Evaluating Derivatives", 2008, sec. 13.2):
differentiating ``A(t) X(t) = B(t)`` k times gives, in the derivative convention,

    X_k = A_0^{-1} (B_k - sum_{j=1..k} C(k, j) A_j X_{k-j}),

(the inverse is ``B = I``), and ``L = log|det A|`` has ``L' = tr(A^{-1} A')``, so

    L_k = sum_{j=0..k-1} C(k-1, j) tr(Y_j A_{k-j}),   Y = A^{-1},

and ``det A = sign * exp(L)`` follows by Faa di Bruno with every derivative of exp
equal to ``det A``. In collapsed mode the terms linear in the top coefficient use its
collapsed form and the products of lower coefficients are summed over directions
first (Dangel et al. 2025), as every other rule does through ``ctx.top``.
"""

from __future__ import annotations

import math

import torch

from .jet import Jet, compose, scale, total

aten = torch.ops.aten


def _mm(a, b):
    return None if a is None or b is None else aten.matmul.default(a, b)


def _column(c):
    return None if c is None else aten.unsqueeze.default(c, -1)


def _solve_coefficient(ctx, k: int, A: Jet, b_k, X: list, A0):
    """Coefficient k of the solution of ``A X = B`` given ``b_k`` (None: zero) and ``X[:k]``.

    ``X`` holds the lower coefficients (matrix form); the standard ones are appended.
    """
    xs = Jet(X, tuple(ctx.out_shape) + ((1,) if X[0] is not None and _is_col(ctx) else ()))
    linear = [b_k, scale(_mm(ctx.coef(A, k), X[0]), -1)]
    rest = [
        (-math.comb(k, j), None, _mm(ctx.rest_coef(A, j, k), ctx.rest_coef(xs, k - j, k)))
        for j in range(1, k)
    ]
    inner = ctx.top(k, linear, rest)
    Xk = None if inner is None else aten.linalg_solve.default(A0, inner)
    if not ctx.is_collapsed(k):
        X.append(Xk)
    return Xk


def _is_col(ctx) -> bool:
    return ctx.cache.get("vector", False)


def _lower_coefficients(X: list, k: int, emit) -> None:
    """Extend ``X`` with the standard coefficients up to order ``k - 1``; ``emit(j)``
    appends coefficient j.

    The taylor pass calls a rule at orders 1..K in turn with one context, so ``X`` is
    filled already; the collapse pass calls it at order K alone with a fresh context.
    The lower orders are emitted again then (the same nodes, merged by CSE): without
    them the products of lower coefficients in the top order would silently drop out.
    """
    while len(X) < k:
        emit(len(X))


def inv_rule(ctx, k, A, check_errors=False):
    """Coefficients of ``linalg_inv_ex(A)``: ``X_k = -A0^-1 sum C(k,j) A_j X_(k-j)``."""
    X = ctx.cache.setdefault("X", [ctx.value[0]])
    _lower_coefficients(X, k, lambda j: _solve_coefficient(ctx, j, A, None, X, A[0]))
    return _solve_coefficient(ctx, k, A, None, X, A[0]), None


def solve_rule(ctx, k, A, B, *, left=True, check_errors=False):
    """Coefficients of ``_linalg_solve_ex(A, B)``: ``X_k = A0^-1 (B_k - sum C(k,j) A_j X_(k-j))``."""
    if not left:
        raise NotImplementedError("linalg.solve with left=False: transpose the system instead")
    b_shape = tuple(B.shape if isinstance(B, Jet) else B.shape)
    vector = len(b_shape) == 1 or (len(b_shape) == A.ndim - 1 and b_shape == tuple(A.shape[:-1]))
    ctx.cache["vector"] = vector
    X = ctx.cache.setdefault("X", [_column(ctx.value[0]) if vector else ctx.value[0]])

    def b_coef(j):
        b_j = ctx.coef(B, j) if isinstance(B, Jet) else None
        return _column(b_j) if vector else b_j

    _lower_coefficients(X, k, lambda j: _solve_coefficient(ctx, j, A, b_coef(j), X, A[0]))
    Xk = _solve_coefficient(ctx, k, A, b_coef(k), X, A[0])
    if Xk is not None and vector:
        Xk = aten.squeeze.dims(Xk, [-1])
    return Xk, None, None, None


def _trace_product(y, a):
    """tr(y @ a) over the last two dims, without forming the product."""
    if y is None or a is None:
        return None
    return aten.sum.dim_IntList(aten.mul.Tensor(y, aten.transpose.int(a, -1, -2)), [-2, -1])


def _inverse_coefficients(ctx, A: Jet, upto: int) -> list:
    """Standard coefficients 0..upto of A^{-1}: Y_j = -Y_0 sum_i C(j,i) A_i Y_(j-i)."""
    Y = ctx.cache.setdefault("Y", [aten.linalg_inv.default(A[0])])
    while len(Y) <= upto:
        j = len(Y)
        s = total([scale(_mm(A[i], Y[j - i]), math.comb(j, i)) for i in range(1, j + 1)])
        Y.append(scale(_mm(Y[0], s), -1))
    return Y


def _logabsdet_coefficient(ctx, k, A: Jet):
    """Coefficient k of log|det A| (cached per order for det's Faa di Bruno step)."""
    L = ctx.cache.setdefault("L", {})
    if k not in L:
        ys = Jet(_inverse_coefficients(ctx, A, k - 1), A.shape)
        linear = [_trace_product(ys[0], A[k])]
        rest = [
            (
                math.comb(k - 1, j),
                None,
                _trace_product(ctx.rest_coef(ys, j, k), ctx.rest_coef(A, k - j, k)),
            )
            for j in range(1, k)
        ]
        L[k] = ctx.top(k, linear, rest)
    return L[k]


def _refuse_complex(ctx):
    if ctx.node.args[0].meta["val"].is_complex():
        raise NotImplementedError(f"{ctx.node.target} of a complex matrix: no Taylor rule")


def slogdet_rule(ctx, k, A):
    """Coefficients of ``_linalg_slogdet``: ``L_k = sum C(k-1,j) tr(Y_j A_(k-j))``, Y = A^-1."""
    _refuse_complex(ctx)
    return None, _logabsdet_coefficient(ctx, k, A), None, None


def det_rule(ctx, k, A):
    """Coefficients of ``_linalg_det``: ``det = sign exp(L)`` by Faa di Bruno."""
    _refuse_complex(ctx)
    L = Jet([None] + [_logabsdet_coefficient(ctx, j, A) for j in range(1, k + 1)], A.shape[:-2])
    det = ctx.value[0]
    # every derivative of exp(L) is det itself: Faa di Bruno with g_m = det
    return compose(ctx, k, L, [det] * (k + 1)), None, None


# -- Cholesky --------------------------------------------------------------------------------
#
# Differentiating A = L L^T k times: sum_j C(k, j) L_j L_(k-j)^T = A_k, so
#     L_k L_0^T + L_0 L_k^T = S := A_k - sum_{j=1..k-1} C(k, j) L_j L_(k-j)^T,
# and with M = L_0^{-1} L_k (lower triangular), M + M^T = L_0^{-1} S L_0^{-T}: M is the lower
# triangle of that symmetric matrix with its diagonal halved, L_k = L_0 Phi(L_0^{-1} S L_0^{-T})
# (Murray, "Differentiation of the Cholesky decomposition", 2016, sec. 3, for k = 1).
# S is the part ctx.top combines (A_k linear, the products rest); Phi and the triangular
# solves are linear, so they act on the collapsed S as on any other.


def _mT(c):
    return None if c is None else aten.transpose.int(c, -2, -1)


def _phi(m):
    """Lower triangle of ``m`` with its diagonal halved (the lower M with M + M^T = m)."""
    half_diag = aten.mul.Tensor(aten.diag_embed.default(aten.diagonal.default(m, 0, -2, -1)), 0.5)
    return aten.sub.Tensor(aten.tril.default(m), half_diag)


def _read_triangle(c, upper: bool):
    """The symmetric matrix cholesky sees in ``c``: it reads the lower (upper) triangle only."""
    if upper:
        return aten.add.Tensor(aten.triu.default(c), _mT(aten.triu.default(c, 1)))
    return aten.add.Tensor(aten.tril.default(c), _mT(aten.tril.default(c, -1)))


def _cholesky_coefficient(ctx, k: int, A: Jet, Ls: list, upper: bool):
    """Coefficient k of the lower factor L, given the standard ``Ls[:k]`` (appended to)."""
    ls = Jet(Ls, tuple(ctx.out_shape))
    a_k = ctx.coef(A, k)
    linear = [None if a_k is None else _read_triangle(a_k, upper)]
    rest = [
        (-math.comb(k, j), None, _mm(ctx.rest_coef(ls, j, k), _mT(ctx.rest_coef(ls, k - j, k))))
        for j in range(1, k)
    ]
    S = ctx.top(k, linear, rest)
    Lk = None
    if S is not None:
        L0 = Ls[0]
        Y = aten.linalg_solve_triangular.default(L0, S, upper=False)  # L0^-1 S
        Z = aten.linalg_solve_triangular.default(_mT(L0), Y, upper=True, left=False)  # Y L0^-T
        Lk = _mm(L0, _phi(Z))
    if not ctx.is_collapsed(k):
        Ls.append(Lk)
    return Lk


def cholesky_rule(ctx, k, A, *, upper=False, check_errors=False):
    """Coefficients of ``linalg_cholesky_ex`` (see the module docstring)."""
    _refuse_complex(ctx)
    L0 = ctx.value[0]
    Ls = ctx.cache.setdefault("L", [_mT(L0) if upper else L0])
    _lower_coefficients(Ls, k, lambda j: _cholesky_coefficient(ctx, j, A, Ls, upper))
    Lk = _cholesky_coefficient(ctx, k, A, Ls, upper)
    return (_mT(Lk) if upper else Lk), None
