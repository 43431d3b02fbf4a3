"""The Stein pass: derivatives of the Gaussian-smoothed model without any back-propagation.

He, Lin, Chen, Xu, Xu, "Learning physics-informed neural networks without
stacked back-propagation" (AISTATS 2023), Sec. 3: model the solution as
``f_sigma(x) = E g(x + delta)``, ``delta ~ N(0, diag(sigma^2))``. Stein's identity
gives its derivatives as expectations of model values (Eqs. 5-6)::

    d_i f    = E[delta_i g(x + delta)] / sigma_i^2
    d_ij f   = E[(delta_i delta_j - [i = j] sigma_i^2) g(x + delta)] / (sigma_i^2 sigma_j^2)

With ``variance_reduction`` (Sec. 3.2) the antithetic pair ``x +- delta`` and the
control variate ``g(x)`` replace ``g(x + delta)`` by ``(g(x+delta) - g(x-delta))/2``
in first-order terms and by ``(g(x+delta) + g(x-delta) - 2 g(x))/2`` in
second-order ones; both keep the expectation and remove the O(1/sigma^2)
noise of the plain estimator. The value is the sample mean of g(x +- delta).

The pass rewrites the captured model (traced at the stacked batch size) into
one graph: the ``(S, B, D)`` standard-normal ``noise`` is a placeholder fed
fresh at each call, the points are replicated over the samples in the graph
(no Python loop), the model runs ONCE on all of x, x + delta, x - delta, and
the requested terms are read off as above.
"""

from __future__ import annotations

import torch
import torch.fx
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from .. import ir
from ..operators.assembly import assemble_terms
from ..operators.spec import LinearOperator, is_constant, resolve_dim
from . import PassContext


def sigma_vector(sigma, D: int, coords) -> torch.Tensor:
    """Smoothing widths per coordinate, ``(D,)`` float64.

    Args:
        sigma: a number, a sequence of D numbers, or a dict ``{coordinate name: width}``
            naming every coordinate.

    Raises:
        ValueError: wrong length, a name that is not a coordinate, a coordinate
            without a width, or a width <= 0.
    """
    if isinstance(sigma, dict):
        if coords is None:
            raise ValueError("sigma given by coordinate name needs coords=")
        unknown = set(sigma) - set(coords)
        missing = [c for c in coords if c not in sigma]
        if unknown or missing:
            raise ValueError(
                f"sigma names {sorted(unknown)} that are not coordinates {list(coords)}"
                if unknown
                else f"sigma gives no width for {missing}"
            )
        values = [float(sigma[c]) for c in coords]
    elif isinstance(sigma, (int, float)):
        values = [float(sigma)] * D
    else:
        values = [float(v) for v in sigma]
        if len(values) != D:
            raise ValueError(f"sigma has {len(values)} widths for {D} coordinates")
    if min(values) <= 0:
        raise ValueError(f"sigma must be positive, got {values}")
    return torch.tensor(values, dtype=torch.float64)


def stein_order(ops: dict, D: int, coords) -> int:
    """Highest derivative order the operators need.

    Raises:
        ValueError: an order above 2 (Stein's identity of order 2 is what the pass implements).
    """
    order = 0
    for name, op in ops.items():
        k = op.order(D, coords)
        if k > 2:
            raise ValueError(
                f"method='stein' estimates derivatives of order <= 2, but {name!r} ({op!r}) "
                f"has order {k}: use method='collapsed' or method='stochastic'"
            )
        order = max(order, k)
    return order


class SteinPass:
    """Rewrite a captured model into its Stein estimator graph.

    The source graph must be captured at batch ``n_eval * B`` (``n_eval = 2S + 1``
    with variance reduction, S without). The result takes the source's
    placeholders with the coordinates ``(B, D)`` and a ``noise`` ``(S, B, D)``
    placeholder, and returns the tuple of terms (shapes of ``model(x)``; the
    gradient appends D).

    Args:
        ops: name -> operator of order <= 2 (mixed second derivatives included).
        coords: coordinate names or None.
        samples: S.
        sigma: ``(D,)`` tensor of smoothing widths per coordinate.
        variance_reduction: antithetic pairs and the control variate g(x).
        batch: B.

    Raises:
        BatchCouplingError: the model mixes batch rows.
    """

    name = "stein"
    requires = ("captured",)
    forbids = ("operator",)
    ensures = ("operator",)

    def __init__(self, ops, coords, samples: int, sigma: torch.Tensor, variance_reduction, batch):
        self.ops, self.coords, self.S = ops, coords, samples
        self.sigma, self.vr, self.B = sigma, variance_reduction, batch

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
        ctx.check_batch(gm)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        ix = next(i for i, n in enumerate(placeholders) if n.name == ctx.coord)
        in_shape = tuple(placeholders[ix].meta["val"].shape[1:])
        D = int(torch.tensor(in_shape).prod()) if in_shape else 1
        S, B = self.S, self.B
        widths = [float(v) for v in self.sigma]  # numbers, outside the trace

        def estimator(*inputs):
            smoothed = _Smoothed(gm, list(inputs[:-1]), ix, inputs[-1], self, in_shape, widths)
            return tuple(smoothed.term(name, op, D, self.coords) for name, op in self.ops.items())

        examples = [
            torch.zeros(n.meta["val"].shape, dtype=n.meta["val"].dtype, device=ctx.device)
            for n in placeholders
        ]
        examples[ix] = torch.zeros((B,) + in_shape, dtype=ctx.dtype, device=ctx.device)
        examples.append(torch.zeros(S, B, D, dtype=ctx.dtype, device=ctx.device))
        out = make_fx(
            estimator,
            decomposition_table=core_aten_decompositions(),
            tracing_mode="fake",
            record_stack_traces=True,
            _allow_non_fake_inputs=True,  # the sigma constant
        )(*examples)
        names = [n.name for n in placeholders] + ["noise"]
        for node, name in zip([n for n in out.graph.nodes if n.op == "placeholder"], names):
            node.name = node.target = name
        out.graph._codegen = torch.fx.graph.CodeGen()
        out.graph.eliminate_dead_code()
        out.recompile()
        noise = [n for n in out.graph.nodes if n.op == "placeholder"][-1:]
        options = {"samples": S, "variance_reduction": self.vr}
        ir.set_info(out, ir.GraphInfo("stein", gm, inputs={"noise": noise}, options=options))
        return out


class _Smoothed:
    """The model at the replicated points of one call, and Stein's estimators from it."""

    def __init__(self, gm, base, ix, noise, stein, in_shape, widths):
        S, B, vr = stein.S, stein.B, stein.vr
        self.S, self.B, self.s = S, B, widths
        x = self.x = base[ix]  # (B, *in)
        self.delta = noise * stein.sigma.to(dtype=x.dtype, device=x.device)  # (S, B, D)
        shift = self.delta.reshape((S, B) + in_shape)
        points = [x[None], x + shift, x - shift] if vr else [x + shift]
        base[ix] = torch.cat(points).reshape((-1,) + in_shape)
        g = gm(*base)
        g = g.reshape((-1, B) + tuple(g.shape[1:]))  # (n_eval, B, *out)
        self.out_nd = g.dim() - 2
        if vr:
            g0, plus, minus = g[0], g[1 : S + 1], g[S + 1 :]
            self.value = ((plus + minus) / 2).mean(0)
            self.odd, self.even = (plus - minus) / 2, (plus + minus - 2 * g0) / 2
        else:
            self.value = g.mean(0)
            self.odd = self.even = g

    def component(self, i):
        """delta_i (S, B), broadcast against (S, B, *out)."""
        return self.delta[..., i].reshape((self.S, self.B) + (1,) * self.out_nd)

    def derivative(self, alpha):
        """Stein's estimate of d^alpha of the smoothed model (orders <= 2)."""
        s = self.s
        idx = [i for i, a in enumerate(alpha) for _ in range(a)]
        if not idx:
            return self.value
        if len(idx) == 1:
            (i,) = idx
            return (self.component(i) * self.odd).mean(0) / s[i] ** 2
        i, j = idx
        w = self.component(i) * self.component(j) - (s[i] ** 2 if i == j else 0.0)
        return (w * self.even).mean(0) / (s[i] ** 2 * s[j] ** 2)

    def weighted(self, vec, inner, against):
        """mean_s (inner . vec) * against, vectorized over the D coordinates."""
        x = self.x
        form = inner @ torch.tensor(vec, dtype=x.dtype, device=x.device)  # (S, B)
        return (form.reshape((self.S, self.B) + (1,) * self.out_nd) * against).mean(0)

    def term(self, name, op, D, coords):
        """One operator: constant first-order and pure second-order parts in one weighted
        mean each, the rest through the per-multi-index estimates."""
        flat, s = self.x.reshape(self.B, D), self.s
        if op.kind != "linear":
            return assemble_terms(self.derivative, self.value, {name: op}, flat, coords, 0)[name]
        first, diag, rest, total = [0.0] * D, [0.0] * D, {}, 0
        for variables, c in op.terms(D, coords).items():
            idx = sorted(resolve_dim(v, D, coords, "stein") for v in variables)
            if not is_constant(c) or (len(idx) == 2 and idx[0] != idx[1]) or not idx:
                rest[tuple(variables)] = c
            elif len(idx) == 1:
                first[idx[0]] += float(c) / s[idx[0]] ** 2
            else:
                diag[idx[0]] += float(c) / s[idx[0]] ** 4
        if any(first):
            total = total + self.weighted(first, self.delta, self.odd)
        if any(diag):
            s2 = torch.tensor([v * v for v in s], dtype=self.x.dtype, device=self.x.device)
            total = total + self.weighted(diag, self.delta * self.delta - s2, self.even)
        if rest:
            other = LinearOperator(rest)
            total = (
                total
                + assemble_terms(self.derivative, self.value, {name: other}, flat, coords, 0)[name]
            )
        return total if not isinstance(total, int) else torch.zeros_like(self.value)
