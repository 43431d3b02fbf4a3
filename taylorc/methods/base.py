"""What every method declares: its options, its plan, its passes, its runtime inputs."""

from __future__ import annotations

import math

import torch

from .. import operators as _ops


class Method:
    """A way to compute the operators of a :class:`~taylorc.api.CompiledOperator`.

    A method owns its options (validated in ``__init__``), its jet plan, the pass
    pipeline that turns the captured graph into the operator's graph, and the extra
    inputs it feeds the graph at every call. ``api`` only caches graphs and calls
    :meth:`run`; nothing there compares method names.

    Subclasses set ``name`` and override what differs.
    """

    name = ""
    needs_wrt = False  # the call has several arguments and wrt= names the coordinates
    builds_graph = True
    # whether the graph may serve every batch size (then proved per build by
    # passes.batch_size.generalize); a method whose graph depends on B says why not
    dynamic_batch = True
    static_reason = ""
    compilable = True  # backend="auto" may compile the graph after warm-up
    compiled_by_backend = True  # False: the graph runs as built, whatever the backend

    def check(self, op) -> None:
        """Raise ``ValueError`` for options that do not fit the compiled operator."""
        if self.needs_wrt and op.wrt is None:
            raise ValueError(
                f"method={self.name!r} is for models of several arguments (a DeepONet's "
                "(branch_input, trunk_input)): name the coordinate argument with wrt= (index or name)"
            )

    def key(self) -> tuple:
        """Hashable options that change the graph (the graph cache's key)."""
        return (self.name,)

    def resolve(self, op, args: tuple, i: int) -> Method:
        """The method a call runs (``Auto`` picks one per call)."""
        return self

    def plan(self, op, D: int) -> _ops.JetPlan:
        """The :class:`~taylorc.operators.plan.JetPlan` of ``op`` over D coordinates."""
        return _ops.build_plan(op.ops, D, op.coords)

    def example(self, x: torch.Tensor, args: tuple) -> tuple[torch.Tensor, tuple]:
        """The coordinates and arguments the model is traced on."""
        return x, args

    def passes(self, op, cap, ctx, x: torch.Tensor) -> list:
        """The pass pipeline for the captured graph ``cap`` of coordinates like ``x``."""
        raise NotImplementedError

    def inputs(self, x: torch.Tensor, gm, ctx) -> list:
        """Extra runtime inputs after the model's own (shift leaves, noise)."""
        return []

    def run(self, op, args: tuple, i: int) -> list:
        """The operators' values at ``args[i]``, in the order of ``op.ops``: the graph's, or,
        for a call that records no autograd graph, ``ctx.inference``'s when the pipeline found
        one (the CPU whole-MLP kernel, :class:`taylorc.passes.mlp.InferenceMLP`)."""
        x = args[i]
        gm, cap, ctx = op.graph_for(x, args, self)
        inputs = cap.inputs(op.model, *args)
        if ctx.inference is not None and op.config.whole_mlp and ctx.inference.applies(inputs):
            return ctx.inference(inputs)
        return gm(*inputs, *self.inputs(x, gm, ctx))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.key()[1:])
        return f"{type(self).__name__}({opts})"


def width(x: torch.Tensor) -> int:
    """D: the number of coordinates per point of ``(B, *in)``."""
    return math.prod(x.shape[1:])
