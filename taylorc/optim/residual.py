"""A PINN residual as a graph: its operator and model calls found by a trace, not a hook.

A residual is a plain callable of the points (``lambda x: -lap(x) - f(x)``). KFAC and
ENGD need the layers it reaches, so :func:`run` traces it with ``torch.fx`` (the
curvlinops-style trace of the loss), the compiled operators of the model and the
model itself as leaf calls (every other module and function is traced through), and
evaluates each node as the trace creates it: a leaf call is answered by the
operator's graph that keeps its linear layers' columns
(:meth:`taylorc.api.CompiledOperator.taylor_graph`; for a direct model call, the
value operator's), so curvature is read from the graph the residual evaluates
(Dangel, Müller, Zeinhofer, "Kronecker-Factored Approximate Curvature for
Physics-Informed Neural Networks", NeurIPS 2024, Sec. 3). Because every node has its
value when it is made, Python code of the residual that branches on values, asks for
a length or converts to a number runs as it would called directly; the trace is made
at every evaluation, so Python values the residual reads are those of the call.
"""

from __future__ import annotations

import warnings
import weakref
from operator import attrgetter

import torch
import torch.fx
from torch.fx.node import map_arg

from ..api import CompiledOperator
from ..api import compile as _compile
from ..errors import KFACError
from ..runtime.backend import TRACING


class _Value(torch.fx.Proxy):
    """A proxy that knows its value: Python asks it for numbers, lengths and truth."""

    def __len__(self):
        return len(self.tracer.value(self.node))

    def __int__(self):
        return int(self.tracer.value(self.node))

    def __index__(self):
        return int(self.tracer.value(self.node))

    def __float__(self):
        return float(self.tracer.value(self.node))


class _Tracer(torch.fx.Tracer):
    """``torch.fx``'s symbolic tracer that evaluates every node as it creates it.

    The model and its compiled operators are leaves, answered through their
    layer-keeping graphs (recorded in :attr:`runs`); modules and parameters the
    residual reaches otherwise are traced through and registered on the root.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor):
        super().__init__()
        self.model, self.x = model, x
        self.values: dict = {}
        self.runs: list = []
        self.evaluating = False  # inside a node's evaluation: modules run as themselves

    def call_module(self, m, forward, args, kwargs):
        if self.evaluating:  # the tracer patches Module.__call__: not this code's calls
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self.evaluating:  # ... nor its attribute reads
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return m is self.model or isinstance(m, CompiledOperator)

    def path_of_module(self, m: torch.nn.Module) -> str:
        for name, child in self.root.named_children():
            if child is m:
                return name
        name = f"call{len(self.root._modules)}"
        self.root.add_module(name, m)
        return name

    def create_arg(self, a):
        if isinstance(a, torch.nn.Parameter) and all(a is not p for p in self.root.parameters()):
            self.root.register_parameter(f"param{len(self.root._parameters)}", a)
        return super().create_arg(a)

    def proxy(self, node: torch.fx.Node) -> _Value:
        self.value(node)
        return _Value(node, self)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        return bool(self.value(obj.node))

    def iter(self, obj: torch.fx.Proxy):
        return iter([obj[i] for i in range(len(self.value(obj.node)))])

    def keys(self, obj: torch.fx.Proxy):
        return self.value(obj.node).keys()

    def value(self, node: torch.fx.Node):
        """The value of ``node``, evaluated once."""
        if node not in self.values:
            outer, self.evaluating = self.evaluating, True
            try:
                self.values[node] = self._evaluate(node)
            finally:
                self.evaluating = outer
        return self.values[node]

    def _evaluate(self, node: torch.fx.Node):
        args = map_arg(node.args, self.value)
        kwargs = map_arg(node.kwargs, self.value)
        if node.op == "placeholder":
            return self.x
        if node.op == "get_attr":
            return attrgetter(node.target)(self.root)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_, *rest = args
            return getattr(self_, node.target)(*rest, **kwargs)
        if node.op == "call_module":
            return self._leaf(attrgetter(node.target)(self.root), args, kwargs)
        return args[0]  # output

    def _leaf(self, module, args: tuple, kwargs: dict):
        """A leaf call's value, through the layer-keeping graph (recorded in ``runs``)."""
        if module is self.model:
            if kwargs:  # keyword calls are not the operator's: plain forward
                return module(*args, **kwargs)
            module = value_operator(self.model)
        if module.model is not self.model:
            raise KFACError(
                "a residual calls a compiled operator of another model: compile the operators "
                "of the residuals from the model given to the optimiser"
            )
        if module.method not in ("collapsed", "taylor"):
            raise KFACError(
                f"a residual calls an operator compiled with method={module.method!r}, which "
                "propagates no Taylor coefficients through the layers: use 'collapsed' or "
                "'taylor'"
            )
        graph = module.taylor_graph(*args, perturbations=False)  # g from the output columns
        result = graph.run(*args)
        self.runs.append((graph, result))
        return result.outputs


class _Residual(torch.nn.Module):
    """The root the tracer traces: ``forward(x) = residual(x)``, the model a submodule."""

    def __init__(self, model: torch.nn.Module, residual):
        super().__init__()
        self.model, self.residual = model, residual

    def forward(self, x):
        return self.residual(x)


# the value operator "u" of each model, which answers the residual's direct model calls;
# weak keys: it dies with the model
_VALUE_OPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def value_operator(model: torch.nn.Module) -> CompiledOperator:
    """``taylorc.compile(model, "u")``, made once per model: the operator through which a
    residual's direct call of the model runs (its layer-keeping graph)."""
    op = _VALUE_OPS.get(model)
    if op is None:
        op = _VALUE_OPS[model] = _compile(model, "u")
    return op


def legacy_value_op(args: tuple, where: str) -> tuple:
    """``args`` without a leading value operator (the old forms ``f(model, value_op, residual,
    x, ...)`` and ``Linearizer(model, value_op, ...)``): the value operator was an argument
    of ``where`` until the residual's trace built it (:func:`value_operator`); passing it
    still works, with a ``DeprecationWarning``. A compiled operator given as the residual
    itself is followed by the points, so it is kept."""
    old = args and isinstance(args[0], CompiledOperator)
    if old and (len(args) == 1 or not isinstance(args[1], torch.Tensor)):
        warnings.warn(
            f"{where} no longer takes the value operator (it is built from the model): "
            "drop that argument",
            DeprecationWarning,
            stacklevel=3,
        )
        return args[1:]
    return args


def run(model, residual, x: torch.Tensor, *legacy) -> tuple[torch.Tensor, list]:
    """Evaluate ``residual(x)`` through the layer-keeping graphs of the calls it makes.

    Args:
        model: the ``nn.Module`` the residual's operators were compiled from; a direct
            call of it runs through :func:`value_operator`.
        residual: callable ``x -> r``.
        x: the points ``(N, *in)``.
        legacy: the old form ``run(model, value_op, residual, x)`` (deprecated).

    Returns:
        ``(r, runs)``: the residual's value and, per leaf call in evaluation order,
        ``(TaylorGraph, LayerRun)`` (:mod:`taylorc.methods.layer_graph`).

    Raises:
        KFACError: it calls an operator of another model, or of a method without
            Taylor coefficients.
        Exception: what the residual itself raises.
    """
    residual, x = legacy_value_op((residual, x, *legacy), "optim.residual.run")[:2]
    tracer = _Tracer(model, x)
    # fx's tracing flag and Module patches are process-wide: a background compile of an
    # operator's graph (backend="auto") must not run inside this trace, nor it inside one
    with TRACING:
        graph = tracer.trace(_Residual(model, residual))
        out = next(n for n in graph.nodes if n.op == "output")
        return tracer.value(out), tracer.runs
