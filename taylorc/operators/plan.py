"""Planning: from operator specs to the jets to propagate.

The plan is one set of R directions shared by every requested term (so a dict
of operators costs one propagation), the top order K, and per term the exact
rational weights that read it off the Taylor coefficients. Terms of order K
are grouped by their weight vector up to scale: each group is one collapsed
coefficient (Dangel et al. 2025, Sec. 3; DESIGN.md "All terms of one order
that a linear operator sums with constant weights collapse into one").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
import torch

from .spec import Direction, Operator


@dataclass
class TermPlan:
    """How one requested output is read off the propagated coefficients.

    Attributes:
        name: the key in the output dict.
        kind: ``"value"``, ``"gradient"`` or ``"linear"``.
        weights: ``{k: [w_r for r in range(R)]}`` for orders below K (order 0: ``[w]``).
        top: ``(g, scale)``: the order-K part is ``scale`` times collapsed row g, or None.
        grad_rows: for gradients, the direction indices of e_0 .. e_{D-1}.
    """

    name: str
    kind: str
    weights: dict[int, list[sympy.Rational]] = field(default_factory=dict)
    top: tuple[int, sympy.Rational] | None = None
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
    """

    D: int
    K: int
    directions: list[Direction]
    top_weights: list[list[sympy.Rational]]
    terms: list[TermPlan]
    collapsible: bool

    @property
    def R(self) -> int:
        return len(self.directions)

    @property
    def G(self) -> int:
        return len(self.top_weights)

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
            parts = [
                f"order {k}: {sum(1 for w in ws if w != 0)} weights"
                for k, ws in sorted(t.weights.items())
            ]
            if t.top is not None:
                parts.append(f"order {self.K}: {t.top[1]} x collapsed row {t.top[0]}")
            if t.grad_rows is not None:
                parts.append(f"order 1: directions {t.grad_rows}")
            lines.append(f"  {t.name} ({t.kind}): " + "; ".join(parts))
        return "\n".join(lines)


def build_plan(ops: dict[str, Operator], D: int) -> JetPlan:
    """Merge the expansions of ``ops`` over D coordinates into one :class:`JetPlan`.

    Raises:
        ValueError: an operator does not fit D coordinates.
    """
    expansions = {name: op.expansion(D) for name, op in ops.items()}
    K = max((k for e in expansions.values() for k in e), default=0)
    index: dict[Direction, int] = {}
    for e in expansions.values():
        for k, terms in sorted(e.items()):
            if k > 0:
                for v in terms:
                    index.setdefault(v, len(index))
    R = len(index)

    def vector(terms):
        w = [sympy.Integer(0)] * R
        for v, c in terms.items():
            w[index[v]] += c
        return w

    top_rows: list[list[sympy.Rational]] = []
    plans, needs_full_top = [], False
    for name, op in ops.items():
        e = expansions[name]
        t = TermPlan(name, op.kind)
        if op.kind == "gradient":
            t.grad_rows = [index[v] for v in sorted(e[1], key=lambda v: v.index(1))]
            needs_full_top |= K == 1
        elif op.kind == "value":
            t.weights[0] = [sympy.Integer(1)]
        else:
            for k, terms in e.items():
                if k == 0:
                    t.weights[0] = [sum(terms.values())]
                elif k < K:
                    t.weights[k] = vector(terms)
                else:
                    w = vector(terms)
                    s = next(x for x in w if x != 0)
                    row = [x / s for x in w]
                    if row not in top_rows:
                        top_rows.append(row)
                    t.top = (top_rows.index(row), s)
        plans.append(t)
    collapsible = K > 0 and not needs_full_top and 0 < len(top_rows) < R
    return JetPlan(D, K, list(index), top_rows, plans, collapsible)
