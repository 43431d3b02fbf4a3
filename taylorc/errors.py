"""Typed errors of taylorc.

Every error names its cause (the ATen op, the graph node and, where the trace
recorded it, the user's source line) and says what to do about it. Names that were
renamed keep working with a ``DeprecationWarning`` (:func:`renamed`, :func:`renamed_names`,
:func:`renamed_keyword`).
"""

from __future__ import annotations

import warnings

import torch.fx


class TaylorcError(Exception):
    """Base class of the errors taylorc raises itself."""


class UnsupportedOperatorError(TaylorcError, NotImplementedError):
    """An ATen op in the traced model has no Taylor rule in the registry.

    Raised by the taylor pass. The message names the op overload, the graph
    node and the user's source line, and how to add a rule with
    :func:`taylorc.register_rule`.
    """


class BatchCouplingError(TaylorcError, ValueError):
    """The model mixes batch rows, so per-sample derivatives are not defined by the graph."""


class TraceError(TaylorcError, RuntimeError):
    """The model could not be traced to a functional ATen graph.

    Typical causes: data-dependent Python control flow (``if x.sum() > 0``),
    ``.item()``/``.tolist()`` on traced tensors, or in-place mutation of inputs.
    """


class InputMutationError(TraceError):
    """The model writes into its own inputs, parameters or buffers while it runs.

    Raised at capture (after functionalization, which turns every other in-place
    op into a functional one). The message names the op, the mutated tensor and
    the user's source line.
    """


class KFACError(TaylorcError, ValueError):
    """A PINN loss that Kronecker-factored curvature cannot read from the Taylor graph.

    Raised by :mod:`taylorc.optim`: a parameter that the residual uses outside the
    linear layers of the compiled graph (the message names it), an operator compiled
    with a method that propagates no Taylor coefficients, or a residual of another model.
    """


def user_source_line(node: torch.fx.Node) -> str | None:
    """The innermost frame of ``node``'s recorded stack trace that lies outside torch.

    Args:
        node: a node of a graph captured by :mod:`taylorc.capture` (which records
            stack traces).

    Returns:
        ``'File "...", line N, in fn\\n    code'`` or ``None`` when nothing was recorded.
    """
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    lines = trace.strip().splitlines()
    frames = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("File "):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            frames.append((line.strip(), code))
    for loc, code in reversed(frames):
        if "site-packages/torch/" not in loc and "/taylorc/" not in loc:
            return f"{loc}\n    {code}"
    return None


def renamed(old: str, new: str) -> property:
    """A property ``old`` that reads and writes the attribute ``new``, with a
    ``DeprecationWarning`` (for a class attribute or dataclass field that was renamed)."""

    def warn():
        warnings.warn(f"{old} is now {new}", DeprecationWarning, stacklevel=3)

    def get(self):
        warn()
        return getattr(self, new)

    def put(self, value):
        warn()
        setattr(self, new, value)

    return property(get, put, doc=f"The old name of ``{new}`` (deprecated).")


def renamed_names(namespace: dict, names: dict[str, str]):
    """A module ``__getattr__`` that answers each old name of ``names`` (old -> new) with
    the object ``namespace`` (the module's ``globals()``) holds under the new one, with a
    ``DeprecationWarning``.

    Raises:
        AttributeError: (from the returned function) a name that is neither.
    """
    module = namespace["__name__"]

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} is now {names[name]}", DeprecationWarning, stacklevel=2)
        return namespace[names[name]]

    return __getattr__


def renamed_keyword(value, old_value, old: str, new: str):
    """``value`` (the keyword ``new``), or ``old_value`` where the caller used the old
    keyword ``old`` (given: not None), with a ``DeprecationWarning``."""
    if old_value is None:
        return value
    warnings.warn(f"the keyword {old}= is now {new}=", DeprecationWarning, stacklevel=3)
    return old_value
