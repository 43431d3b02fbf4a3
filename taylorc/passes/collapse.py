"""The collapse pass: propagate the top-order coefficient already summed over directions.

Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic
Differentiation" (NeurIPS 2025): a linear operator reads the top coefficient
only through a weighted sum over directions, and every rule is linear in the
top coefficients of its inputs (e.g. ``y_2 = g_1 x_2 + g_2 x_1^2``), so the
sum can be pushed from the output to the input. The pass re-emits each node's
order-K coefficient with its rule in collapsed mode, taking the lower orders
from the standard Taylor graph, and replaces the output's ``contract_top``
einsum by the collapsed coefficient. The old ``(R, *S)`` top-order chain dies
(dead-code elimination).
"""

from __future__ import annotations

import torch
import torch.fx

from .. import ir
from ..rules.jet import Jet, RuleContext
from . import PassContext, relink
from .taylor import Emitter, emit_coefficient, propagate_composite, shape_of


class CollapsePass:
    """Replace the standard top-order chain of a Taylor graph by its collapsed form.

    Reads the jets of ``gm``'s :class:`~taylorc.ir.GraphInfo` (made by the taylor pass) and
    ``ctx.source``; a graph whose plan is not collapsible is returned unchanged.
    """

    name = "collapse"
    requires = ("taylor",)
    forbids = ("collapsed", "clean")
    ensures = ("collapsed",)

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        plan, info = ctx.plan, ir.info(gm)
        contract = next(
            (
                n
                for n in gm.graph.nodes
                if n.op == "call_function" and getattr(ir.tag_of(n), "role", None) == "contract_top"
            ),
            None,
        )
        if not plan.collapsible or contract is None:
            return gm
        em = Emitter(gm.graph, plan.R)
        before = set(gm.graph.nodes)
        env: dict[torch.fx.Node, Jet] = {}
        with gm.graph.inserting_before(contract):
            weights = _top_weights(em, contract, ctx)
            for node in ctx.source.graph.nodes:
                if node.op != "output":
                    _collapse_node(node, env, em, contract, weights, info.jets, ctx)
        (result,) = [a for a in ctx.source.graph.nodes if a.op == "output"][0].args
        if isinstance(result, (tuple, list)):
            result = result[0]
        top = env[result][plan.K]
        if top is None:
            raise AssertionError(
                "collapsed top coefficient vanished while the standard one did not"
            )
        emitted = {n for n in gm.graph.nodes if n not in before}
        ir.replace(gm, contract, top.node)
        gm.graph.erase_node(contract)
        ir.dce(gm)
        info.method = "collapsed"
        schedule_early(gm.graph, emitted)
        return gm


def _top_weights(em: Emitter, contract: torch.fx.Node, ctx: PassContext):
    """The collapse weights the output's ``contract_top`` reads (its first R_top columns),
    or None for unit weights."""
    plan = ctx.plan
    if plan.top_weight_tensor(ctx.dtype, ctx.device) is None:
        return None
    weights = em.proxy(contract.args[1][0])  # the top_weights buffer
    if plan.R_top < plan.R:
        weights = torch.ops.aten.slice.Tensor(weights, -1, 0, plan.R_top)
        ir.set_tag(weights.node, ir.Tag(None, plan.K, "top", plan.R, role="top_weights"))
    return weights


def _collapse_node(node, env: dict, em: Emitter, contract, weights, jets: dict, ctx) -> None:
    """Emit the collapsed top coefficient of one source node (before ``contract``), taking
    its lower orders from the standard graph; ``jets[node]`` then names it."""
    plan, K = ctx.plan, ctx.plan.K
    names = jets[node]
    coeffs = [em.proxy(m) if m is not None else None for m in names[:K]]
    env[node] = Jet(coeffs, shape_of(node) if "val" in node.meta else ())
    if len(names) <= K:
        return  # constants carry the value only
    marker = contract.prev
    rctx = RuleContext(
        node,
        K,
        plan.R,
        collapsed=True,
        G=plan.G,
        weights=weights,
        warn=ctx.warn,
        composite=propagate_composite,
        R_top=plan.R_top,
        weight_values=[float(w) for w in plan.top_weights[0][: plan.R_top]]
        if plan.G == 1
        else None,
    )
    if node.op == "placeholder":
        seed = names[K] and em.proxy(names[K])
        if seed is not None and plan.R_top < plan.R:
            seed = torch.ops.aten.slice.Tensor(seed, 0, 0, plan.R_top)
        top = rctx.contract(seed) if seed is not None else None
    else:
        rctx.value = coeffs[0]
        top = emit_coefficient(rctx, node, env, K)
    env[node].coeffs.append(top)
    em.tag_since(marker, node, K, "top", stop=contract, coefficient=True)
    jets[node] = names[:K] + [top.node if isinstance(top, torch.fx.Proxy) else None]


def schedule_early(graph: torch.fx.Graph, new: set[torch.fx.Node]) -> None:
    """Move each of the ``new`` nodes right behind the last original node it reads.

    The pass emits the whole collapsed chain after the standard graph, which keeps
    every layer's lower-order coefficients alive to the end (memory, and cache
    misses on the CPU). Interleaving each collapsed coefficient with the layer it
    belongs to frees them as in the standard graph. The order stays topological:
    a new node goes after the original nodes it reads and after the new nodes
    it reads (same slot, emitted earlier).
    """
    slot: dict[torch.fx.Node, int] = {}
    groups: dict[int, list[torch.fx.Node]] = {}
    originals = [n for n in graph.nodes if n not in new]
    position = {n: i for i, n in enumerate(originals)}
    for n in graph.nodes:
        if n in new:
            slot[n] = max(
                (slot[a] if a in slot else position[a] for a in n.all_input_nodes), default=0
            )
            groups.setdefault(slot[n], []).append(n)
    relink([m for i, n in enumerate(originals) for m in [n] + groups.get(i, [])])
