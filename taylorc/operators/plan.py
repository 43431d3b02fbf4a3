"""Planning: from operator specs to the jets to propagate.

The plan is one set of R directions shared by every requested term (so a dict
of operators costs one propagation), the top order K, and per term the exact
rational weights that read it off the Taylor coefficients. Terms of order K
are grouped by their weight vector up to scale: each group is one collapsed
coefficient (Dangel et al. 2025, Sec. 3; DESIGN.md "All terms of one order
that a linear operator sums with constant weights collapse into one").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sympy
import torch

from .spec import Coefficient, Operator
from .weights import Direction


@dataclass
class PartPlan:
    """One part of a term: ``coef(x) *`` (a weighted read of the order-k coefficients).

    Attributes:
        order: k.
        coef: None (constant 1) or a :class:`~taylorc.operators.spec.Coefficient`.
        weights: for 0 < k < K, ``[w_r for r in range(R)]``; for k = 0, ``[w]``.
        top: for k = K, ``(g, scale)``: scale times collapsed row g.
    """

    order: int
    coef: Coefficient | None = None
    weights: list[sympy.Rational] | None = None
    top: tuple[int, sympy.Rational] | None = None


@dataclass
class TermPlan:
    """How one requested output is read off the propagated coefficients.

    Attributes:
        name: the key in the output dict.
        kind: ``"value"``, ``"gradient"`` or ``"linear"``.
        parts: for linear terms, the :class:`PartPlan` list (summed).
        grad_rows: for gradients, the direction indices of e_0 .. e_{D-1}.
    """

    name: str
    kind: str
    parts: list[PartPlan] = field(default_factory=list)
    grad_rows: list[int] | None = None


@dataclass
class JetPlan:
    """The jets one propagation computes.

    Attributes:
        D: number of input coordinates.
        K: highest Taylor order.
        directions: R integer direction vectors of length D.
        top_weights: G weight vectors over the R directions for order K.
        terms: one :class:`TermPlan` per requested output.
        collapsible: whether order K can be propagated collapsed (no term needs
            the per-direction top coefficients, and G < R).
        coords: coordinate names, if given.
        stochastic: for ``method="stochastic"``, ``(kind, distribution, S, dims)``:
            the directions are placeholders drawn afresh per call
            (:mod:`taylorc.operators.stochastic`).
    """

    D: int
    K: int
    directions: list[Direction]
    top_weights: list[list[sympy.Rational]]
    terms: list[TermPlan]
    collapsible: bool
    coords: list[str] | None = None
    stochastic: tuple | None = None

    @property
    def R(self) -> int:
        """Directions."""
        return len(self.directions)

    @property
    def G(self) -> int:
        """Rows of the collapsed top (collapse weights)."""
        return len(self.top_weights)

    @property
    def R_top(self) -> int:
        """Directions ``[0, R_top)`` carry every nonzero top-order weight (they come first)."""
        return max(
            (r + 1 for row in self.top_weights for r, w in enumerate(row) if w != 0), default=0
        )

    def direction_tensor(self, dtype: torch.dtype, device) -> torch.Tensor:
        """The ``(R, D)`` directions as a tensor."""
        return torch.tensor(self.directions, dtype=dtype, device=device).reshape(self.R, self.D)

    def top_weight_tensor(self, dtype: torch.dtype, device) -> torch.Tensor | None:
        """``(R,)`` (G == 1) or ``(G, R)`` collapse weights; None when G == 1 and all are one."""
        if self.G == 1 and all(w == 1 for w in self.top_weights[0]):
            return None
        w = torch.tensor(
            [[float(x) for x in row] for row in self.top_weights], dtype=dtype, device=device
        )
        return w[0] if self.G == 1 else w

    def coefficient_count(self) -> int:
        """Number of propagated coefficient tensors per node: value + R per order below K + top."""
        if self.K == 0:
            return 1
        top = self.G if self.collapsible else self.R
        return 1 + self.R * (self.K - 1) + top

    def describe(self) -> str:
        """A readable account of the directions, weights and propagated coefficients."""
        lines = [
            f"jet plan: D={self.D}, K={self.K}, R={self.R} directions, "
            f"top order {'collapsible' if self.collapsible else 'not collapsible'}, "
            f"{self.coefficient_count()} coefficients per node"
        ]
        shown = self.directions if self.R <= 12 else self.directions[:12]
        for r, v in enumerate(shown):
            lines.append(f"  v{r} = {list(v)}")
        if self.R > len(shown):
            lines.append(f"  ... {self.R - len(shown)} more")
        for g, row in enumerate(self.top_weights):
            nz = {r: w for r, w in enumerate(row) if w != 0}
            distinct = sorted({str(w) for w in nz.values()})
            lines.append(f"  collapsed row {g}: {len(nz)} directions, weights {distinct}")
        for t in self.terms:
            parts = []
            for p in t.parts:
                c = "" if p.coef is None else f"{p.coef!r} * "
                if p.top is not None:
                    parts.append(f"{c}{p.top[1]} x collapsed row {p.top[0]} (order {p.order})")
                elif p.order == 0:
                    parts.append(f"{c}{p.weights[0]} x u")
                else:
                    n = sum(1 for w in p.weights if w != 0)
                    parts.append(f"{c}order {p.order} over {n} directions")
            if t.grad_rows is not None:
                parts.append(f"order 1: directions {t.grad_rows}")
            if t.kind == "value":
                parts.append("u")
            lines.append(f"  {t.name} ({t.kind}): " + " + ".join(parts))
        return "\n".join(lines)


def build_plan(ops: dict[str, Operator], D: int, coords: Sequence[str] | None = None) -> JetPlan:
    """Merge the parts of all operators over D coordinates into one :class:`JetPlan`.

    Directions needed at the top order come first, so a collapsed row that
    ignores the others reads a prefix of the direction axis.

    Raises:
        ValueError: an operator does not fit D coordinates (or ``coords``).
    """
    if coords is not None and len(coords) != D:
        raise ValueError(
            f"coords names {len(coords)} coordinates ({' '.join(coords)}) but the input has "
            f"{D} per sample: give one name per input column"
        )
    parts = {name: op.parts(D, coords) for name, op in ops.items()}
    K = max((p.order for ps in parts.values() for p in ps), default=0)
    index = _direction_index(parts, K)
    top_rows: list[list[sympy.Rational]] = []
    plans, needs_full_top = [], False
    for name, op in ops.items():
        t = TermPlan(name, op.kind)
        if op.kind == "gradient":
            t.grad_rows = [index[v] for v, _ in parts[name][0].weights]
            needs_full_top |= K == 1
        elif op.kind != "value":
            t.parts = [_part_plan(p, K, index, top_rows) for p in parts[name]]
        plans.append(t)
    collapsible = K > 0 and not needs_full_top and 0 < len(top_rows) < len(index)
    return JetPlan(
        D, K, list(index), top_rows, plans, collapsible, list(coords) if coords else None
    )


def _direction_index(parts: dict, K: int) -> dict[Direction, int]:
    """Every direction of the parts -> its index: the top order's first, each group in a
    canonical order (equal specs give equal plans)."""
    index: dict[Direction, int] = {}
    for top_first in (True, False):
        group = {
            v
            for ps in parts.values()
            for p in ps
            if p.order > 0 and (p.order == K) == top_first
            for v, _ in p.weights
        }
        for v in sorted(group - set(index), reverse=True):
            index[v] = len(index)
    return index


def _part_plan(p, K: int, index: dict[Direction, int], top_rows: list) -> PartPlan:
    """The plan of one part: a weighted read of its order's coefficients; at the top order,
    a scale of the collapsed row of its weights up to scale (added to ``top_rows`` if new)."""
    if p.order == 0:
        return PartPlan(0, p.coef, weights=[sum(c for _, c in p.weights)])
    w = [sympy.Integer(0)] * len(index)
    for v, c in p.weights:
        w[index[v]] += c
    if p.order < K:
        return PartPlan(p.order, p.coef, weights=w)
    s = next(x for x in w if x != 0)
    row = [x / s for x in w]
    if row not in top_rows:
        top_rows.append(row)
    return PartPlan(K, p.coef, top=(top_rows.index(row), s))
