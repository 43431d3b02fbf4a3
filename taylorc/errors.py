"""Typed errors of taylorc.

Every error names its cause (the ATen op, the graph node and, where the trace
recorded it, the user's source line) and says what to do about it.
"""

from __future__ import annotations

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
