"""Randomized collapsed Taylor mode: unbiased Laplacians and biharmonics from S random directions.

The exact collapsed Laplacian propagates D directions; its randomized version
propagates S << D directions drawn afresh at every call and weights them so
that the expectation is exact (Hutchinson's trace estimator; Shi, Hu, Lin,
Kawaguchi, "Stochastic Taylor Derivative Estimator", NeurIPS 2024, Sec. 4;
torch-jet's randomization). The directions are the graph's ``directions``
buffer, overwritten before each call; the weights are fixed per plan, so one
compiled graph serves every draw. All points of a batch share the draw.

Estimators, with d = |dims|:

- Laplacian, ``rademacher`` / ``normal``: ``E[v v^T] = I`` gives
  ``E[D^2u[v]] = tr H``; weight 1/S.
- Laplacian, ``coordinate``: S of the d unit vectors without replacement,
  weight d/S (sparse directions, as in STDE).
- biharmonic, ``normal``: Isserlis' theorem gives ``E[D^4u[v]] = 3 Delta^2 u``;
  weight 1/(3S).
- biharmonic, ``rademacher``: ``E[D^4u[v]] = 3 Delta^2 u - 2 sum_i u_iiii``, so the
  diagonal is added back by S coordinate samples: weights 1/(3S) and 2d/(3S).
- biharmonic, ``coordinate``: S index pairs (i, j) uniform in dims x dims; for
  i != j, ``12 u_iijj = D^4u[e_i+e_j] + D^4u[e_i-e_j] - D^4u[2^(1/4) e_i] - D^4u[2^(1/4) e_j]``,
  for i == j, ``12 u_iiii = D^4u[12^(1/4) e_i]``; weights +-d^2/(12 S) on four slots
  per pair, so the estimate has expectation ``sum_ij u_iijj``.
"""

from __future__ import annotations

import sympy
import torch

from .plan import JetPlan, PartPlan, TermPlan
from .spec import Biharmonic, Laplacian, Operator, _dims

DISTRIBUTIONS = ("rademacher", "normal", "coordinate")


def _kind(op: Operator) -> str:
    if isinstance(op, Laplacian):
        return "laplacian"
    if isinstance(op, Biharmonic):
        return "biharmonic"
    raise ValueError(
        f"method='stochastic' estimates the Laplacian and the biharmonic only, got {op!r}: "
        "use method='collapsed' (exact) or method='stein' (order <= 2)"
    )


def slot_weights(kind: str, distribution: str, S: int, d: int) -> list[sympy.Rational]:
    """Fixed collapse weights of the propagated directions (their magnitudes come per draw)."""
    S_, d_ = sympy.Integer(S), sympy.Integer(d)
    if kind == "laplacian":
        w = 1 / S_ if distribution != "coordinate" else d_ / S_
        return [w] * S
    if distribution == "normal":
        return [1 / (3 * S_)] * S
    if distribution == "rademacher":
        return [1 / (3 * S_)] * S + [2 * d_ / (3 * S_)] * S
    w = d_**2 / (12 * S_)
    return [w, w, -w, -w] * S


def stochastic_plan(
    name: str, op: Operator, D: int, coords, samples: int, distribution: str
) -> JetPlan:
    """A :class:`JetPlan` of ``slot`` directions whose values are drawn per call.

    Raises:
        ValueError: an operator other than (partial) Laplacian / biharmonic, an
            unknown distribution, or samples < 1.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    kind = _kind(op)
    d = len(_dims(op.dims, D, coords, op.name))
    w = slot_weights(kind, distribution, samples, d)
    K = 2 if kind == "laplacian" else 4
    placeholder = [tuple(int(i == r % D) for i in range(D)) for r in range(len(w))]
    term = TermPlan(name, "linear", [PartPlan(K, top=(0, sympy.Integer(1)))])
    dims = tuple(_dims(op.dims, D, coords, op.name))
    return JetPlan(
        D,
        K,
        placeholder,
        [w],
        [term],
        collapsible=len(w) > 1,
        coords=list(coords) if coords else None,
        stochastic=(kind, distribution, samples, dims),
    )


def sample_directions(plan: JetPlan, generator, dtype, device) -> torch.Tensor:
    """A fresh ``(R, D)`` draw of the plan's directions (see the module docstring)."""
    kind, distribution, S, dims = plan.stochastic
    d, D = len(dims), plan.D
    idx = torch.tensor(dims, device=device)

    def embed(v):  # (n, d) in the dims subspace -> (n, D)
        out = torch.zeros(v.shape[0], D, dtype=dtype, device=device)
        out[:, idx] = v
        return out

    def draw(n, how):
        if how == "normal":
            return embed(torch.randn(n, d, generator=generator, dtype=dtype, device=device))
        if how == "rademacher":
            r = torch.randint(0, 2, (n, d), generator=generator, device=device)
            return embed((2 * r - 1).to(dtype))
        # coordinate: distinct unit vectors while n <= d
        pick = torch.cat(
            [torch.randperm(d, generator=generator, device=device) for _ in range(-(-n // d))]
        )[:n]
        return embed(torch.eye(d, dtype=dtype, device=device)[pick])

    if kind == "laplacian" or distribution == "normal":
        return draw(S, distribution)
    if distribution == "rademacher":
        return torch.cat([draw(S, "rademacher"), draw(S, "coordinate")])
    # coordinate biharmonic: per pair (i, j) the slots e_i+e_j, e_i-e_j (+w), e_i, e_j (-w);
    # for i == j the first slot carries 12^(1/4) e_i (weight 12 w = d^2/S on u_iiii), the rest 0
    eye = torch.eye(d, dtype=dtype, device=device)
    i = torch.randint(0, d, (S,), generator=generator, device=device)
    j = torch.randint(0, d, (S,), generator=generator, device=device)
    ei, ej = eye[i], eye[j]
    same = (i == j).to(dtype)[:, None]
    slots = torch.stack(
        [
            (1 - same) * (ei + ej) + same * 12**0.25 * ei,
            (1 - same) * (ei - ej),
            (1 - same) * 2**0.25 * ei,
            (1 - same) * 2**0.25 * ej,
        ],
        1,
    )  # (S, 4, d)
    return embed(slots.reshape(4 * S, d))
