"""KFAC's and ENGD's per-term cache of linearisations, eager or compiled: :class:`Linearizer`.

It decides when a loss term is compiled (:class:`~taylorc.optim.compiled.CompiledEvaluation`)
and guards the trace: the names a residual reads are compared at every call with those
at the trace (:func:`_snapshot`), and a term whose compiled graph fails or goes stale
runs eagerly from then on, with a warning. The eager path
(:func:`~taylorc.optim.linearization.linearize`) is exact; the compiled one equals it up to
rounding.
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..errors import KFACError
from ..runtime.config import CONFIG
from .compiled import CompiledEvaluation, _why
from .linearization import Linearization, linearize, trainable_names
from .residual import legacy_value_op

BACKENDS = ("auto", "eager", "inductor")


_PLAIN = (int, float, complex, bool, str, type(None))


def _key(v):
    """A value to compare later: plain values by value, anything else by identity."""
    return ("value", v) if isinstance(v, _PLAIN) else ("id", id(v))


def _snapshot(fn) -> dict:
    """What ``fn`` reads by name, one level deep: its closure cells and the globals its
    code names (through ``functools.partial``, also its arguments; of a bound method,
    also the identity of ``self``); numbers, strings and None by value, anything else by
    identity. Not watched: attributes (``self.nu``), entries of containers, and what
    the functions it calls read. A tensor changed in place is read live by the
    compiled graph either way."""
    if isinstance(fn, functools.partial):
        out = {f"partial.{k}": v for k, v in _snapshot(fn.func).items()}
        out["partial(args)"] = tuple(_key(a) for a in fn.args)
        out["partial(keywords)"] = tuple(sorted((k, _key(v)) for k, v in fn.keywords.items()))
        return out
    out = {}
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):  # a bound method
        out["self"] = _key(fn.__self__)
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object (e.g. a compiled operator): its own trace contract
        return out
    cells = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, cells):
        try:
            out[name] = _key(cell.cell_contents)
        except ValueError:  # an empty cell
            out[name] = ("empty",)
    names = getattr(fn, "__globals__", {})
    for name in _code_names(code):
        if name in names:
            out[name] = _key(names[name])
    return out


def _code_names(code) -> set:
    """The names ``code`` and the code objects nested in it (comprehensions, inner
    functions) load: candidates for globals."""
    out = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            out |= _code_names(const)
    return out


class Linearizer:
    """The linearisations of an optimiser's loss terms (KFAC, ENGD), eager or compiled.

    The first call at each (term, residual, shape, dtype, device, θ) runs eagerly with
    the coverage check (:func:`~taylorc.optim.linearization.linearize`, ``check=True``). Later
    calls are eager until the backend compiles: ``"eager"`` (the default) never,
    ``"auto"`` after ``CONFIG.auto_compile_after`` calls (10 by default, as
    :func:`taylorc.compile`'s ``"auto"``; never when None), ``"inductor"`` from the second
    call. A term that cannot be compiled stays eager: with ``"auto"`` a warning says
    why, with ``"inductor"`` it raises (unless ``strict=False``: warns, as ``"auto"``). A compiled graph that fails at a later call
    (e.g. constant columns that stop holding) is dropped with a warning, and the term
    runs eagerly from then on.

    Compiling is for residuals that are functions of their points and the model's
    parameters: a compiled term is a trace, and Python values the residual reads are
    those of the trace. As a guard, at every call the names the residual reads
    (:func:`_snapshot`: closure cells, the globals its code names, a partial's
    arguments) are compared with the trace's; once one is rebound, the term runs
    eagerly from then on, with a warning naming it. Attributes, container entries and
    what the functions it calls read are not watched: keep ``"eager"`` for a residual
    whose coefficients change that way.

    Args:
        model: the ``nn.Module``. (The old form ``Linearizer(model, value_op, ...)`` still
            works, deprecated: the value operator is built from the model.)
        backend: ``"auto"``, ``"eager"`` or ``"inductor"``.
        approx: compiled evaluations also give the factors of this approximation and
            the gradients (:class:`CompiledEvaluation`); None: the columns only.
        strict: with ``"inductor"``, a term that cannot be compiled raises; False: it
            warns and runs eagerly, as with ``"auto"`` (the optimisers pass False when
            distributed: a compile that fails on one rank only must not raise there
            alone while the other ranks wait in the step's next collective).

    Raises:
        ValueError: an unknown backend.
    """

    def __init__(self, model: torch.nn.Module, *args, **kwargs):
        self._setup(model, *legacy_value_op(args, "Linearizer"), **kwargs)

    def _setup(self, model, backend: str = "eager", approx=None, strict: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model, self.backend, self.approx = model, backend, approx
        self.strict = strict
        after = {"auto": CONFIG.auto_compile_after, "inductor": 1, "eager": None}[backend]
        self.after = None if after is None else max(after, 1)
        self._calls: dict = {}
        self.compiled: dict = {}  # key -> CompiledEvaluation, or None where it failed
        self._read: dict = {}  # key -> the residual's _snapshot at the trace
        self._residuals: dict = {}  # key -> the residual (its id is in the key: kept alive)

    def __call__(self, term: str, residual, x: torch.Tensor) -> Linearization:
        """The :class:`~taylorc.optim.linearization.Linearization` of ``residual`` at ``x``.

        Raises:
            KFACError: as :func:`~taylorc.optim.linearization.linearize`; with ``"inductor"``
                and ``strict``, a term that cannot be compiled (the cause named).
        """
        trainable = trainable_names(self.model)
        key = (term, id(residual), tuple(x.shape), x.dtype, x.device, trainable)
        self._residuals[key] = residual
        n = self._calls[key] = self._calls.get(key, 0) + 1
        if n == 1:
            return linearize(self.model, residual, x, check=True)
        if key not in self.compiled and self.after is not None and n > self.after:
            self._read[key] = _snapshot(residual)
            self.compiled[key] = self._compile(term, residual, x, trainable)
        ev = self.compiled.get(key)
        if ev is not None and (now := _snapshot(residual)) != self._read[key]:
            names = sorted(
                k
                for k in now.keys() | self._read[key].keys()
                if now.get(k) != self._read[key].get(k)
            )
            self.compiled[key] = ev = None
            warnings.warn(
                f"the residual of the term {term!r} reads names rebound since its trace "
                f"({', '.join(names)}): it runs eagerly from now on",
                stacklevel=2,
            )
        try:
            if ev is not None:
                return ev(x)
            return linearize(self.model, residual, x)
        except Exception as e:  # StaleColumns, or a compiled graph failing: eager is exact
            if ev is None:
                raise
            self.compiled[key] = None
            warnings.warn(
                f"the compiled linearisation of the term {term!r} is dropped and runs "
                f"eagerly: {_why(e)}",
                stacklevel=2,
            )
            return linearize(self.model, residual, x)

    def _compile(self, term, residual, x, trainable) -> CompiledEvaluation | None:
        try:
            return CompiledEvaluation(self.model, residual, x, trainable, self.approx)
        except Exception as e:  # any trace or inductor failure: the eager path is exact
            msg = (
                f"the linearisation of the term {term!r} (points {tuple(x.shape)}) could "
                f"not be compiled: {_why(e)}"
            )
            if self.backend == "inductor" and self.strict:
                raise KFACError(msg + "; pass backend='eager' to skip compiling") from e
            warnings.warn(msg + "; it runs eagerly", stacklevel=3)
            return None
