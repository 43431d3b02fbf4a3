"""The exact batch-coupling probe: forward-mode tangents on halves of the rows.

Used by :func:`taylorc.ir.coupling.check_batch_independence` where the graph analysis
is not exact (an op it does not follow, an axis it lost, or a refusal to confirm).
"""

from __future__ import annotations

import math

import torch
import torch.fx


def _probe_inputs(gm, inputs, index, generator):
    """Perturbed copies: random points near the given ones, parameters off exact zeros."""
    out = []
    for node, t in zip([n for n in gm.graph.nodes if n.op == "placeholder"], inputs):
        t = t.detach() if isinstance(t, torch.Tensor) else t
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            noise = torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(
                t.device
            )
            if node is index:
                finite = t.isfinite()
                t = torch.where(finite, t, noise)  # NaN or inf points: any point will do
                t = t + 1e-2 * (t.abs().mean() + 1) * noise
            elif node.name.startswith("p_"):
                # a coupling term scaled by a parameter that is zero at initialisation
                # would otherwise hide until training moves it
                t = t + 0.1 * (t.abs().mean() + 1e-3) * noise
        out.append(t)
    return out


def probe_rows(gm: torch.fx.GraphModule, coord: str, inputs: list) -> tuple[str, list[int]] | None:
    """Decide exactly whether output rows depend on other input rows (forward-mode probe).

    For each bit i of the row index and each value of that bit, a random tangent on
    the rows whose bit i has that value is pushed through the graph with
    ``torch.func.jvp`` (``2 ceil(log2 B)`` tangents). Any two distinct rows differ in
    some bit, so an output entry depends on two rows iff for some bit both tangents move
    it (exact: structural zeros are exact in floating point). The output's batch axes
    are those along which every tangent stays on its own rows. The
    parameters are perturbed and the points moved slightly, so a coupling hidden by a
    zero parameter or a special point is still seen (with probability one).

    Args:
        gm: the captured graph; ``inputs``: real tensors for its placeholders, in order.
        coord: the coordinates' placeholder (batch axis 0, B rows).

    Returns:
        ``(verdict, axes)``: ``"independent"`` with the output axes of size B along which
        every row stays on its own rows; ``"coupled"`` when an entry depends on two rows
        or rows land on other rows of a batch-sized axis (a shift, a permutation);
        ``"undecided"`` when every entry depends on one row but no axis holds the B rows
        (a flattened layout: the graph analysis decides); None when the probe cannot
        run (the graph fails on real tensors, its output is not one tensor, or a
        tangent is not finite).
    """
    nodes = [n for n in gm.graph.nodes if n.op == "placeholder"]
    x_node = next(n for n in nodes if n.name == coord)
    i = nodes.index(x_node)
    generator = torch.Generator().manual_seed(0)
    try:
        real = _probe_inputs(gm, inputs, x_node, generator)

        def f(xx):
            out = _ForwardAD(gm).run(*real[:i], xx, *real[i + 1 :])
            return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out

        seen = _push_tangents(f, real[i], generator)
    except Exception:  # noqa: BLE001 - the probe is a second opinion; the analysis stands
        return None
    return _verdict(*seen) if seen is not None else None


def _push_tangents(f, x: torch.Tensor, generator):
    """Push one random tangent per bit of the row index and value of that bit through ``f``.

    Returns:
        ``(candidates, coupled, seen, sized)``: the output axes of size B along which
        every tangent stays on its own rows; whether an entry moved for rows on both
        sides of a bit; whether anything moved; whether the output has an axis of size
        B. None when a tangent is not one finite tensor (``0 * inf`` somewhere).
    """
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)
    candidates, coupled, seen, sized = None, False, False, False
    with torch.no_grad():
        for bit in range(max(1, math.ceil(math.log2(B)))):
            hit = []
            for side in (0, 1):
                picked = ((rows >> bit) & 1) == side
                mask = picked.reshape([B] + [1] * (x.dim() - 1)).to(x.dtype)
                v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * mask
                _, t = torch.func.jvp(f, (x,), (v,))
                if not isinstance(t, torch.Tensor) or not t.isfinite().all():
                    return None
                if candidates is None:
                    candidates = [a for a in range(t.dim()) if t.shape[a] == B]
                    sized = bool(candidates)
                nonzero = t != 0
                hit.append(nonzero)
                candidates = [a for a in candidates if not nonzero.movedim(a, 0)[~picked].any()]
            # an output entry moved by rows on both sides of a bit depends on two rows
            coupled = coupled or bool((hit[0] & hit[1]).any())
            seen = seen or bool(hit[0].any() or hit[1].any())
    return candidates, coupled, seen, sized


def _verdict(candidates, coupled: bool, seen: bool, sized: bool) -> tuple[str, list[int]]:
    """The probe's verdict from what the tangents moved (see :func:`probe_rows`)."""
    if not seen or candidates:  # nothing varies, or an axis keeps every row on its own
        return "independent", candidates or []
    if coupled or sized:  # an entry moved by two rows, or rows moved to other rows (a shift)
        return "coupled", []
    return "undecided", []  # one row per entry, but no axis of B rows: a flattened layout


class _ForwardAD(torch.fx.Interpreter):
    """Runs a captured graph under forward AD: functionalization's ``aten.copy`` (the
    value written by ``y[...] = v``) has no forward-AD formula, so it runs as what it
    computes, ``src`` cast and broadcast to ``self``'s dtype and shape."""

    def call_function(self, target, args, kwargs):
        if target is torch.ops.aten.copy.default:
            base, src = args[0], args[1]
            return src.to(base.dtype).expand(base.shape).clone()
        return super().call_function(target, args, kwargs)
