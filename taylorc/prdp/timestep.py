"""Implicit time steppers of an evolution spec ``u_t + S u = 0`` (e.g. ``"u_t - nu*u_xx - nu*u_yy"``).

Implicit (backward) Euler: ``(I + dt S) u^{n+1} = u^n``; Crank-Nicolson:
``(I + dt/2 S) u^{n+1} = (I - dt/2 S) u^n`` (LeVeque 2007, ch. 9). The matrices are
assembled by :func:`taylorc.prdp.assemble` from the spatial part of the same spec, so a
network trained through the step sees the same stencils as ``discretize``. The PRDP
paper's heat emulators train through backward-Euler steps (Bhatia, Koehler, Thuerey,
ICLR 2025, Sec. 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sympy
import torch

from ..operators.parse import parse, split_coords
from ..operators.spec import LinearOperator
from .assemble import assemble

SCHEMES = {"euler": sympy.Integer(1), "cn": sympy.Rational(1, 2)}


def split_time(spec, coords: list[str], symbols: Sequence[str], params) -> dict:
    """The spatial operator S of ``spec = u_t + S``: ``{variables: coefficient}``.

    Raises:
        ValueError: no ``u_t`` term, a ``u_t`` coefficient that is not a nonzero number,
            another time derivative, or ``t`` in a coefficient.
    """
    op = parse(spec, coords + ["t"] + list(symbols), params)
    terms = dict(op.terms(len(coords) + 1, coords + ["t"]))
    ct = terms.pop(("t",), None)
    ct = None if ct is None else sympy.sympify(ct, rational=True)
    if ct is None or not ct.is_number or ct == 0:
        raise ValueError(
            f"time stepper: {spec!r} needs a term u_t with a constant nonzero coefficient "
            "(the form u_t + S u, e.g. 'u_t - nu*u_xx - nu*u_yy')"
        )
    t = sympy.Symbol("t")
    spatial = {}
    for variables, c in terms.items():
        c = sympy.sympify(c, rational=True)
        if "t" in variables or c.has(t):
            raise ValueError(
                f"time stepper: {spec!r} has a term in t other than u_t "
                "(only first order in time with time-independent coefficients)"
            )
        spatial[variables] = c / ct
    return spatial


def _scaled(spatial: dict, factor, identity: int) -> LinearOperator:
    terms = {k: factor * c for k, c in spatial.items()}
    terms[()] = identity + terms.get((), 0)
    return LinearOperator(terms, name="time step")


class TimeStepper:
    """One implicit step of ``u_t + S u = 0`` on a grid with Dirichlet data held fixed.

    Args:
        spec: e.g. ``"u_t - nu*u_xx - nu*u_yy"`` (``coords`` names the space axes; ``t``
            is added), coefficient names from ``coefficients``/``params`` allowed.
        grid: the grid, as for :func:`taylorc.prdp.assemble` (so are the following).
        coords: coordinate names.
        coefficients: named coefficients.
        params: named numbers.
        form: ``"full"`` or ``"interior"``.
        dtype: of the matrix values.
        device: of the matrix.
        dt: the time step (in the units of t).
        scheme: ``"euler"`` (backward Euler) or ``"cn"`` (Crank-Nicolson).

    Attributes:
        system: the matrix to solve with (``(I + theta dt S)``, theta 1 or 1/2).
        explicit: ``(I - dt/2 S)`` for Crank-Nicolson, else None.

    Use: ``b = stepper.rhs(u)`` (``u (B, N_full)``), ``x = Solver(stepper.system)(b, K)``,
    ``u_next = stepper.solution(x, u)``; or ``stepper.step(u, solver, K)``.

    Raises:
        ValueError: an unknown scheme, dt <= 0, no coords, or a spec not of the form u_t + S.
    """

    def __init__(
        self,
        spec,
        grid: Sequence[torch.Tensor],
        dt: float,
        coords,
        scheme: str = "euler",
        coefficients: Mapping[str, object] | None = None,
        params: dict | None = None,
        form: str = "full",
        dtype=None,
        device=None,
    ):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        names = split_coords(coords)
        if names is None:
            raise ValueError("a time stepper needs coords naming the space axes, e.g. 'x y'")
        coefficients = dict(coefficients or {})
        spatial = split_time(spec, names, list(coefficients), params)
        theta, dts = SCHEMES[scheme], sympy.Rational(repr(float(dt)))
        kw = dict(coords=names, coefficients=coefficients, dtype=dtype, device=device)
        self.system = assemble(_scaled(spatial, theta * dts, 1), grid, form=form, **kw)
        self.explicit = None
        if scheme == "cn":
            self.explicit = assemble(_scaled(spatial, -(1 - theta) * dts, 1), grid, **kw)
        self.form = form

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        """The right-hand side for :attr:`system` from the full-grid state ``u (B, N_full)``."""
        f = u if self.explicit is None else self.explicit @ u
        return f if self.form == "full" else self.system.lift(f)

    def solution(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The full-grid new state from the solver's ``x`` (adds the boundary data for ``interior``)."""
        if self.form == "full":
            return x
        f = u if self.explicit is None else self.explicit @ u
        return self.system.extend(x, f)

    def step(self, u: torch.Tensor, solver, iters: int) -> torch.Tensor:
        """``u^{n+1}`` from ``u^n (B, N_full)`` with ``solver`` (a :class:`Solver` of ``system``)."""
        return self.solution(solver(self.rhs(u), iters=iters), u)
