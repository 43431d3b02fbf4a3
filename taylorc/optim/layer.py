"""The record of one layer in one loss term: :class:`Layer`, its layer inputs and
pre-activation gradients, column by column (what the Kronecker factors, gradients and
Jacobian products of :mod:`taylorc.optim.factors` read)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..deprecation import renamed
from ..methods.layer_graph import Columns


@dataclass
class Layer:
    """One weight in one loss term: its layer inputs and pre-activation gradients.

    The Taylor graph applies the weight to S coefficient columns per point (the value,
    the directions of each order, the collapsed top): a layer with weight sharing, whose
    Kronecker factors are the input covariance A (from ``Z``) and the gradient
    covariance B (from ``g``) (Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 3).

    Attributes:
        weight, bias: qualified parameter names (bias None: no bias in the linear layers).
        x_columns: the layer inputs ``X (N, S, d_in)``, detached (without the bias
            entry), as :class:`~taylorc.methods.layer_graph.Columns` (a tensor given here is
            wrapped): some may be held as products ``P ⊙ Q`` (:class:`~taylorc.passes.factored.Factored`).
        g_columns: the pre-activation gradients ``g (M, N, S, d_out)``, ``dr_nm / dz_ns``
            for each of the M residual outputs, the same way.
        e: ``(S,)`` the bias entry of each column (1 on value columns of a use with
            the bias, else 0); None when the layer has no bias.
        bias_columns: the s with ``e_s = 1`` (e is 0/1).
        active_columns: the s that can add to the Jacobian: the others' outputs do not
            reach the operator's result (:attr:`taylorc.passes.layers.Column.output` is
            None and no :class:`~taylorc.passes.factored.Factored` output holds them: g = 0
            by construction), or their Z̃ is zero by construction (a derivative column with
            a known-zero input, e.g. the first layer's top). None: every column.
        constant_columns: the s whose input is the same for every point
            (``X[n, s] = X[0, s]``, checked on the values: the first layer's direction and
            known-zero columns).

    ``active_columns``, ``constant_columns`` and the factored columns only let sums over
    points skip work (:mod:`taylorc.optim.factors`); every formula still sums over all S
    columns, and :attr:`X` and :attr:`g` are the whole tensors. ``live`` and ``shared``:
    the old names of the two (deprecated).
    """

    weight: str
    bias: str | None
    x_columns: Columns
    g_columns: Columns
    e: torch.Tensor | None = None
    bias_columns: tuple[int, ...] = ()
    active_columns: tuple[int, ...] | None = None
    constant_columns: tuple[int, ...] = ()
    live = renamed("Layer.live", "active_columns")
    shared = renamed("Layer.shared", "constant_columns")

    @property
    def X(self) -> torch.Tensor:
        """``(N, S, d_in)`` input columns (factored ones multiplied out, cached)."""
        return self.x_columns.full()

    @property
    def g(self) -> torch.Tensor:
        """``(M, N, S, d_out)`` output gradients (factored ones multiplied out, cached)."""
        return self.g_columns.full()

    @property
    def N(self) -> int:
        """Points."""
        return self.x_columns.dense.shape[0]

    @property
    def S(self) -> int:
        """Columns."""
        return self.x_columns.S

    @property
    def d_in(self) -> int:
        """Columns of the block ``[W | b]``: ``d_in + 1`` with a bias."""
        return self.x_columns.dense.shape[-1] + (self.bias is not None)

    @property
    def d_out(self) -> int:
        """Rows of W."""
        return self.g_columns.dense.shape[-1]

    def __post_init__(self):
        if isinstance(self.x_columns, torch.Tensor):
            self.x_columns = Columns.of(self.x_columns)
        if isinstance(self.g_columns, torch.Tensor):
            self.g_columns = Columns.of(self.g_columns)
        if self.e is not None and not self.bias_columns:  # built by hand: read them from e
            self.bias_columns = tuple(i for i, v in enumerate(self.e.tolist()) if v)

    def split_columns(self) -> tuple[list[int], list[int]]:
        """``(per_point, constant)``: the active columns whose input varies over points,
        and the active columns of :attr:`constant_columns`."""
        active = range(self.S) if self.active_columns is None else self.active_columns
        constant = set(self.constant_columns)
        return [s for s in active if s not in constant], [s for s in active if s in constant]

    def nonzero_columns(self) -> list[int]:
        """The active columns whose augmented input Z̃ is not zero at every point, ascending.

        A constant column (``X[n, s] = X[0, s]``) with ``X[0, s] = 0`` and no bias entry adds
        nothing to the Jacobian ``J_n = Σ_s g_ns Z̃_nsᵀ``: e.g. the derivative columns of a
        layer whose inputs the operator does not differentiate (a DeepONet's branch MLP
        run on (function, point) rows, a parametric PINN's parameter inputs)."""
        per_point, constant = self.split_columns()
        e = self.e
        zero = {s for s in constant if not self.X[0, s].any() and (e is None or e[s] == 0)}
        return sorted(s for s in per_point + constant if s not in zero)

    @property
    def Z(self) -> torch.Tensor:
        """``(N, S, d_in[+1])`` augmented inputs Z̃ (bias entry last; built on each read)."""
        if self.e is None:
            return self.X
        return torch.cat([self.X, self.e.expand(*self.X.shape[:2])[..., None]], -1)
