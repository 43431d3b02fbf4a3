"""How one node's Taylor coefficients are emitted: the rule lookup, the value and the
coefficients of a node, which nodes need jets, and composite rules propagated through
the trace of their identity. Shared by the taylor and collapse passes.

Method: Griewank & Walther, "Evaluating Derivatives" (2008), ch. 13.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from .. import ir
from ..errors import UnsupportedOperatorError, user_source_line
from ..rules.jet import Jet, RuleContext
from ..rules.table import CONSTANT_OPS, RULES

aten = torch.ops.aten


def map_args(args, env, pick):
    """Replace source nodes in (nested) args by ``pick(env[node])``."""
    return torch.fx.node.map_arg(args, lambda n: pick(env[n]))


def depends_on(graph: torch.fx.Graph, root: str) -> set[torch.fx.Node]:
    """Nodes whose value depends on the placeholder named ``root``."""
    out = set()
    for n in graph.nodes:
        if n.op == "placeholder" and n.name == root or any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def differentiable_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The inputs through which derivatives flow (none for constant ops, not a where's
    condition, no boolean or integer tensor: ``mask.to(float)`` is a constant)."""
    if node.op == "call_function" and node.target in CONSTANT_OPS:
        return []
    if node.op == "call_function" and node.target is aten.where.self:
        return [a for a in node.args[1:] if isinstance(a, torch.fx.Node)]
    return [a for a in node.all_input_nodes if ir.carries_derivatives(a.meta.get("val"))]


def differentiable_ancestors(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Nodes from which the output is reached through differentiable inputs."""
    reach: set[torch.fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        for a in differentiable_inputs(stack.pop()):
            if a not in reach:
                reach.add(a)
                stack.append(a)
    return reach


def needs_jet(graph: torch.fx.Graph, root: str) -> set[torch.fx.Node]:
    """Nodes that depend on ``root`` AND reach the output through differentiable inputs.

    A varying node that only feeds constant ops (a detached max shift, a
    comparison) needs its value only: no rule is run for it.
    """
    return differentiable_ancestors(graph) & depends_on(graph, root)


def rule_for(node: torch.fx.Node):
    """The registered :class:`~taylorc.rules.define.RuleInfo` of a node.

    Raises:
        UnsupportedOperatorError: naming the ATen op, the node, the user's source line,
            and how to register a rule.
    """
    info = RULES.get(node.target)
    if info is None:
        where = user_source_line(node)
        raise UnsupportedOperatorError(
            f"no Taylor rule for the ATen op {node.target} (graph node '{node.name}')"
            + (f", from your code at\n  {where}" if where else "")
            + "\nRegister one with taylorc.register_rule("
            + f"torch.ops.{node.target}, rule)"
            + " (see docs/architecture.md), or rewrite the model with supported ops."
        )
    return info


def emit_value(node: torch.fx.Node, env: dict) -> torch.fx.Proxy:
    """Order 0: the op itself on the values of its arguments."""
    args = map_args(node.args, env, lambda j: j[0] if isinstance(j, Jet) else j)
    kwargs = map_args(node.kwargs, env, lambda j: j[0] if isinstance(j, Jet) else j)
    return node.target(*args, **kwargs)


def emit_coefficient(ctx: RuleContext, node: torch.fx.Node, env: dict, k: int):
    """Order k >= 1 of ``node`` by its registered rule."""
    info = rule_for(node)
    args = map_args(node.args, env, lambda j: j)
    kwargs = map_args(node.kwargs, env, lambda j: j)
    try:
        return info.rule(ctx, k, *args, **kwargs)
    except UnsupportedOperatorError:
        raise
    except NotImplementedError as e:  # a rule that refuses a case: name the op and the node
        where = user_source_line(node)
        raise UnsupportedOperatorError(
            f"the Taylor rule of {node.target} (graph node '{node.name}') does not cover this "
            f"use: {e}" + (f", from your code at\n  {where}" if where else "")
        ) from e


def shape_of(node: torch.fx.Node) -> tuple[int, ...]:
    """Shape of a tensor-valued node; () for nodes with several outputs (their getitems carry shapes)."""
    v = node.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else ()


_COMPOSITES: dict = {}


def _argument_dtypes(node: torch.fx.Node, n: int, default: torch.dtype) -> tuple:
    """Dtypes of the n tensor arguments of a composite op (complex inputs of a real |z|)."""
    vals = [a.meta.get("val") for a in node.args if isinstance(a, torch.fx.Node)]
    if len(vals) == n and all(isinstance(v, torch.Tensor) for v in vals):
        return tuple(v.dtype for v in vals)
    return (default,) * n


def propagate_composite(ctx: RuleContext, k: int, identity, args, kwargs):
    """Coefficient k of a composite op, by propagating jets through the trace of ``identity``.

    The trace (ATen, core decompositions) is made once per identity and
    argument shapes; the sub-jets of orders below k are kept in ``ctx.cache``
    between the calls for successive orders.
    """
    state = ctx.cache.get("composite")
    if state is None:
        sub = _composite_trace(ctx, identity, args, kwargs)
        env, it = {}, iter(a for a in args if isinstance(a, Jet))
        for n in sub.graph.nodes:
            if n.op == "placeholder":
                env[n] = next(it)
        reach = differentiable_ancestors(sub.graph)
        state = ctx.cache["composite"] = {"sub": sub, "env": env, "ctx": {}, "reach": reach}
    sub, env = state["sub"], state["env"]
    for n in sub.graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else [n.args[0]]
            coeffs = tuple(env[o][k] for o in outs)
            if all(c is None for c in coeffs):
                return None
            return coeffs if isinstance(n.args[0], (tuple, list)) and len(outs) > 1 else coeffs[0]
        if n not in state["ctx"]:
            state["ctx"][n] = _composite_value(ctx, n, env, state["reach"])
        sctx = state["ctx"][n]
        while sctx is not None and len(env[n].coeffs) <= k:
            env[n].coeffs.append(emit_coefficient(sctx, n, env, len(env[n].coeffs)))
    raise AssertionError("composite trace has no output")


def _composite_trace(ctx: RuleContext, identity, args, kwargs) -> torch.fx.GraphModule:
    """The ATen trace of ``identity`` on the composite op's arguments, made once per
    identity, tensor shapes and dtypes, other argument values and device."""
    val = ctx.node.meta["val"]
    val = val if isinstance(val, torch.Tensor) else val[0]  # several outputs: same dtype, device
    tensors = [a for a in args if isinstance(a, Jet)]
    # the trace depends on which arguments are tensors, their shapes, and the other values
    signature = tuple(
        ("tensor", a.shape) if isinstance(a, Jet) else ("value", repr(a)) for a in args
    )
    dtypes = _argument_dtypes(ctx.node, len(tensors), val.dtype)
    key = (identity, signature, repr(sorted(kwargs.items())), dtypes, val.device.type)
    sub = _COMPOSITES.get(key)
    if sub is None:

        def fn(*ts):
            it = iter(ts)
            real = [next(it) if isinstance(a, Jet) else a for a in args]
            return identity(*real, **kwargs)

        fake = [torch.empty(t.shape, dtype=d, device="meta") for t, d in zip(tensors, dtypes)]
        trace = make_fx(fn, decomposition_table=core_aten_decompositions(), tracing_mode="fake")
        sub = _COMPOSITES[key] = trace(*fake)
    return sub


def _composite_value(ctx: RuleContext, n: torch.fx.Node, env: dict, reach: set):
    """Emit the value of node ``n`` of a composite's trace into ``env``; returns the rule
    context of its coefficients (None: it carries its value only)."""
    varying = any(isinstance(env.get(a), Jet) and not env[a].is_constant for a in n.all_input_nodes)
    if n.op == "get_attr":
        raise UnsupportedOperatorError(
            f"the composite rule of {ctx.node.target} creates a tensor constant"
        )
    sctx = None
    if varying and n.target not in CONSTANT_OPS and n in reach:
        sctx = dataclasses.replace(ctx, node=n, value=None, cache={})
    value = emit_value(n, env)
    if sctx is not None:
        sctx.value = value
    env[n] = Jet([value], shape_of(n))
    return sctx
