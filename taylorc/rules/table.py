"""The rule table: every ATen overload's Taylor rule, one entry per op, by family.

Each entry names the op, the helper that makes its rule (:mod:`taylorc.rules.define`,
:mod:`taylorc.rules.derivatives`: ``deflinear``, ``def_bilinear``, ``def_deriv``,
``def_comp``, ``nonsmooth``, ``piecewise``, ``register``) and the body, written here when
it is one line and otherwise in its family's module (:mod:`~taylorc.rules.shape`,
:mod:`~taylorc.rules.arithmetic`, :mod:`~taylorc.rules.activations`,
:mod:`~taylorc.rules.composites`, :mod:`~taylorc.rules.indexing`,
:mod:`~taylorc.rules.linalg`, :mod:`~taylorc.rules.special`). Importing it fills
:data:`RULES`; ``docs/ops.md`` is generated from it (``tools/ops_table.py``).
Users extend the registry with :func:`register_rule`.
"""

from __future__ import annotations

import functools
import operator

import sympy
import torch

from . import activations, arithmetic, composites, indexing, linalg, shape, special
from .define import (
    CONSTANT_OPS,
    RULES,
    def_bilinear,
    def_comp,
    deflinear,
    elementwise,
    nonsmooth,
    nonsmooth_comp,
    piecewise,
    register,
    register_rule,
)
from .derivatives import DerivativeTable, X, Y, def_deriv, lower_sympy, table_of

__all__ = ["CONSTANT_OPS", "RULES", "elementwise", "lower_sympy", "register_rule"]

aten = torch.ops.aten


# -- linear ops ----------------------------------------------------------------------

deflinear(
    [aten.view.default, aten._unsafe_view.default, aten.reshape.default],
    lambda ctx, k, c, x, shape: aten.reshape.default(c, ctx.lead(k) + list(shape)),
)
deflinear(
    aten.unsqueeze.default,
    lambda ctx, k, c, x, d: aten.unsqueeze.default(c, d % (x.ndim + 1) + ctx.nlead(k)),
)
deflinear(aten.squeeze.dim, lambda ctx, k, c, x, d: aten.squeeze.dims(c, [ctx.dim(d, x.ndim, k)]))
deflinear(
    aten.squeeze.dims,
    lambda ctx, k, c, x, dims: aten.squeeze.dims(c, shape.lead_dims(ctx, k, dims, x.ndim)),
)
deflinear(
    aten.squeeze.default,
    lambda ctx, k, c, x: aten.squeeze.dims(
        c, [i + ctx.nlead(k) for i, s in enumerate(x.shape) if s == 1]
    ),
)
deflinear(
    aten.permute.default,
    lambda ctx, k, c, x, dims: aten.permute.default(
        c, list(range(ctx.nlead(k))) + shape.lead_dims(ctx, k, dims, x.ndim)
    ),
)
deflinear(
    aten.t.default,
    lambda ctx, k, c, x: c if x.ndim < 2 else aten.transpose.int(c, ctx.nlead(k), ctx.nlead(k) + 1),
)
deflinear(
    aten.transpose.int,
    lambda ctx, k, c, x, a, b: aten.transpose.int(c, ctx.dim(a, x.ndim, k), ctx.dim(b, x.ndim, k)),
)
deflinear(
    aten.flip.default,
    lambda ctx, k, c, x, dims: aten.flip.default(c, shape.lead_dims(ctx, k, dims, x.ndim)),
)
deflinear(aten.select.int, lambda ctx, k, c, x, d, i: aten.select.int(c, ctx.dim(d, x.ndim, k), i))
deflinear(
    aten.slice.Tensor,
    lambda ctx, k, c, x, d=0, start=None, end=None, step=1: aten.slice.Tensor(
        c, ctx.dim(d, x.ndim, k), start, end, step
    ),
)
deflinear(
    aten.index_select.default,
    lambda ctx, k, c, x, d, index: aten.index_select.default(c, ctx.dim(d, x.ndim, k), index[0]),
)
deflinear(
    [aten.alias.default, aten.clone.default, aten.contiguous.default, aten.lift_fresh_copy.default],
    lambda ctx, k, c, x, *a, **kw: c,
)
deflinear(aten._to_copy.default, lambda ctx, k, c, x, **kw: aten._to_copy.default(c, **kw))
deflinear(aten.neg.default, lambda ctx, k, c, x: aten.neg.default(c))
deflinear(aten.expand.default, shape.expand)
deflinear([aten.sum.dim_IntList, aten.sum.default], shape.reduce(aten.sum.dim_IntList))
deflinear([aten.mean.dim, aten.mean.default], shape.reduce(aten.mean.dim))
register(aten.cat.default, shape.cat_rule, "linear")
register(aten.stack.default, functools.partial(shape.cat_rule, stack=True), "linear")


# -- sums and products ---------------------------------------------------------------

register([aten.add.Tensor, aten.add.Scalar], arithmetic.add_rule(1), "linear")
register([aten.sub.Tensor, aten.sub.Scalar], arithmetic.add_rule(-1), "linear")
def_bilinear([aten.mul.Tensor, aten.mul.Scalar], lambda a, b: aten.mul.Tensor(a, b))
def_bilinear(
    [aten.mm.default, aten.bmm.default], arithmetic.matmul, note="matmul over the direction axis"
)
register(aten.matmul.default, arithmetic.matmul_rule, "bilinear")
register(aten.addmm.default, arithmetic.addmm_rule, "bilinear", note="bias + Leibniz over mm")
register(
    [aten.div.Tensor, aten.div.Scalar],
    arithmetic.div_rule,
    "composite",
    note="a * reciprocal(b) when b varies",
)


# -- elementwise ops from derivative tables -------------------------------------------

def_deriv(aten.tanh.default, DerivativeTable(ode=1 - Y**2), note="g' = 1 - g^2")
def_deriv(aten.sigmoid.default, DerivativeTable(ode=Y * (1 - Y)), note="g' = g (1 - g)")
def_deriv(aten.exp.default, DerivativeTable(ode=Y), note="g' = g")
def_deriv(aten.sin.default, table_of(sympy.sin))
def_deriv(aten.cos.default, table_of(sympy.cos))
def_deriv(aten.log.default, table_of(sympy.log))
def_deriv(aten.sqrt.default, table_of(sympy.sqrt))
def_deriv(aten.rsqrt.default, table_of(lambda x: 1 / sympy.sqrt(x)))
def_deriv(aten.reciprocal.default, table_of(lambda x: 1 / x))
def_deriv(aten.sinh.default, table_of(sympy.sinh))
def_deriv(aten.cosh.default, table_of(sympy.cosh))
def_deriv(aten.atan.default, table_of(sympy.atan))
def_deriv(aten.erf.default, table_of(sympy.erf))
def_deriv(aten.log1p.default, table_of(lambda x: sympy.log(1 + x)))
def_deriv(aten.expm1.default, table_of(lambda x: sympy.exp(x) - 1))
def_deriv(
    aten.pow.Tensor_Scalar,
    functools.cache(lambda p: DerivativeTable(expr=X ** sympy.nsimplify(p))),
    note="scalar exponent",
)
register(
    aten.relu.default,
    nonsmooth(lambda x, y: aten.sign.default(y)),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
register(
    aten.abs.default,
    activations.abs_rule,
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2; complex: sqrt(re^2 + im^2)",
)


# -- linear layers -------------------------------------------------------------------

def_comp(aten.linear.default, lambda x, w, b=None: torch.nn.functional.linear(x, w, b))


# -- activations and elementwise ops of PINN practice ----------------------------------

def_deriv(aten.gelu.default, functools.cache(activations.gelu_table), note="erf and tanh forms")
def_deriv(aten.tan.default, table_of(sympy.tan))
def_deriv(aten.asinh.default, table_of(sympy.asinh))
def_deriv(aten.silu.default, table_of(lambda x: x / (1 + sympy.exp(-x))), note="x sigmoid(x)")
def_deriv(
    aten.softplus.default,
    functools.cache(
        lambda beta=1, threshold=20: DerivativeTable(
            expr=sympy.log(1 + sympy.exp(sympy.nsimplify(beta) * X)) / sympy.nsimplify(beta)
        )
    ),
    note="threshold branch ignored: the smooth formula everywhere",
)
register(
    aten.elu.default,
    piecewise(activations.elu_pieces),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
register(
    aten.leaky_relu.default,
    piecewise(activations.leaky_pieces),
    "elementwise",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
register(
    [aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default],
    piecewise(activations.clamp_pieces),
    "elementwise",
    smooth=False,
    note="derivative 0 outside the bounds; warns at order >= 2",
)
register(aten.where.self, shape.where_rule, "linear", note="the condition carries no Taylor terms")


# -- several outputs, reductions, indexing --------------------------------------------

register(
    operator.getitem, shape.getitem_rule, "linear", note="selects one output of a multi-output op"
)
deflinear(
    aten.split_with_sizes.default,
    lambda ctx, k, c, x, sizes, dim=0: aten.split_with_sizes.default(
        c, sizes, ctx.dim(dim, x.ndim, k)
    ),
)
deflinear(
    aten.split.Tensor,
    lambda ctx, k, c, x, size, dim=0: aten.split.Tensor(c, size, ctx.dim(dim, x.ndim, k)),
)
deflinear(aten.unbind.int, lambda ctx, k, c, x, dim=0: aten.unbind.int(c, ctx.dim(dim, x.ndim, k)))
deflinear(aten.gather.default, shape.gather)
deflinear(aten.repeat.default, shape.repeat)
deflinear(
    aten.constant_pad_nd.default,
    lambda ctx, k, c, x, pad, value=0: aten.constant_pad_nd.default(c, pad, 0.0),
)
deflinear(aten.view_as_real.default, lambda ctx, k, c, x: aten.view_as_real.default(c))
deflinear(
    aten.view_as_complex.default,
    lambda ctx, k, c, x: aten.view_as_complex.default(aten.contiguous.default(c)),
)
deflinear(aten.real.default, lambda ctx, k, c, x: aten.real.default(c))
deflinear(aten.imag.default, lambda ctx, k, c, x: aten.imag.default(c))
deflinear(
    aten._fft_r2c.default,
    lambda ctx, k, c, x, dim, normalization, onesided: aten._fft_r2c.default(
        c, shape.lead_dims(ctx, k, dim, x.ndim), normalization, onesided
    ),
)
deflinear(
    aten._fft_c2r.default,
    lambda ctx, k, c, x, dim, normalization, last_dim_size: aten._fft_c2r.default(
        c, shape.lead_dims(ctx, k, dim, x.ndim), normalization, last_dim_size
    ),
)
deflinear(
    aten._fft_c2c.default,
    lambda ctx, k, c, x, dim, normalization, forward: aten._fft_c2c.default(
        c, shape.lead_dims(ctx, k, dim, x.ndim), normalization, forward
    ),
)
register(
    aten.amax.default,
    shape.extremum(aten.argmax.default),
    "linear",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
register(
    aten.amin.default,
    shape.extremum(aten.argmin.default),
    "linear",
    smooth=False,
    note="exact a.e.; warns at order >= 2",
)
register(
    aten.convolution.default,
    shape.convolution,
    "linear",
    note="linear in the input; directions folded into the batch",
)


# -- composites over registered ops -----------------------------------------------------

def_comp(
    aten.native_layer_norm.default,
    composites.layer_norm_identity,
    note="(x - mean) rsqrt(var + eps), affine",
)
def_comp(
    aten._softmax.default,
    composites.softmax_identity,
    note="exp(x - max) / sum; the max shift cancels",
    quiet=True,
)
def_comp(
    aten._log_softmax.default,
    composites.log_softmax_identity,
    note="(x - max) - log sum exp(x - max)",
    quiet=True,
)
def_comp(aten.linalg_vector_norm.default, composites.vector_norm_identity, note="2-norm only")
def_comp(
    aten.pow.Tensor_Tensor, lambda a, b: torch.exp(b * torch.log(a)), note="a > 0: exp(b log a)"
)
def_comp(aten.baddbmm.default, lambda s, a, b, beta=1, alpha=1: beta * s + alpha * torch.bmm(a, b))
def_comp(
    aten.native_batch_norm.default,
    composites.batch_norm_eval_identity,
    note="eval mode: an affine map per channel",
)


# -- piecewise ops, pooling, group norm, products and variances, distances -------------

# hardtanh is clamp(x, min_val, max_val) with the bounds -1 and 1 by default
register(
    aten.hardtanh.default,
    piecewise(lambda ctx, x0, lo=-1.0, hi=1.0: activations.clamp_pieces(ctx, x0, lo, hi)),
    "elementwise",
    smooth=False,
    note="clamp(x, min_val, max_val); warns at order >= 2",
)
# clamp_min with a tensor bound is what capture makes of a decomposition's in-place
# clamp_min_ (cosine_similarity's norm floor; capture.functionalize_leftovers)
for _op, _note in (
    (aten.clamp.Tensor, "tensor bounds: where(x < lo, lo, x), then hi; warns at order >= 2"),
    (aten.clamp_min.Tensor, "where(x < lo, lo, x); warns at order >= 2"),
):
    register(
        _op,
        nonsmooth_comp(
            activations.clamp_tensor_identity, "derivatives follow the active bound or input"
        ),
        "composite",
        smooth=False,
        note=_note,
    )
# maximum(a, b) = where(a >= b, a, b): the larger operand's coefficients (a.e.)
register(
    aten.maximum.default,
    nonsmooth_comp(lambda a, b: torch.where(a >= b, a, b), "derivatives follow the larger operand"),
    "composite",
    smooth=False,
    note="where(a >= b, a, b); warns at order >= 2",
)
register(
    aten.minimum.default,
    nonsmooth_comp(
        lambda a, b: torch.where(a <= b, a, b), "derivatives follow the smaller operand"
    ),
    "composite",
    smooth=False,
    note="where(a <= b, a, b); warns at order >= 2",
)
def_comp(
    [aten.prod.default, aten.prod.dim_int],
    composites.prod_identity,
    note="tree of pairwise products (Leibniz); zeros and signs allowed",
)
def_comp(
    aten.var.correction,
    composites.var_identity,
    note="sum((x - mean)^2) / (N - correction); std: sqrt",
)
def_comp(
    aten.var_mean.correction, composites.var_mean_identity, note="(var, mean) as var.correction"
)
deflinear(
    aten.diagonal.default,
    lambda ctx, k, c, x, offset=0, dim1=0, dim2=1: aten.diagonal.default(
        c, offset, ctx.dim(dim1, x.ndim, k), ctx.dim(dim2, x.ndim, k)
    ),
    note="linear; trace and einsum('ii->') capture to diagonal + sum",
)
deflinear(
    aten.avg_pool2d.default,
    shape.avg_pool2d,
    note="linear; avg_pool1d captures to it; directions folded into the planes",
)
register(
    aten.max_pool2d_with_indices.default,
    shape.max_pool2d_rule,
    "linear",
    smooth=False,
    note="gathers the selected entries; max_pool1d captures to it; warns at order >= 2",
)
def_comp(
    aten.native_group_norm.default,
    composites.group_norm_identity,
    note="(x - mean) rsqrt(var + eps) per group, affine per channel",
)
register(
    aten._cdist_forward.default,
    composites.cdist_rule,
    "composite",
    note="sqrt(sum d^2) for p = 2 (smooth off the diagonal); other p > 0 by |d| (warns)",
)


# -- writes, scatters, cumulative ops, advanced indexing -----------------------

register(
    aten.slice_scatter.default,
    indexing.scatter_rule(aten.slice_scatter.default, 1),
    "linear",
    note="y[..., a:b] = v after functional capture; linear in (y, v)",
)
register(
    aten.select_scatter.default,
    indexing.scatter_rule(aten.select_scatter.default, 1),
    "linear",
    note="y[..., i] = v after functional capture; linear in (y, v)",
)
register(
    aten.diagonal_scatter.default,
    indexing.scatter_rule(aten.diagonal_scatter.default, 1),
    "linear",
    note="writes into a diagonal; linear in (y, v)",
)
register(aten.copy.default, indexing.copy_rule, "linear", note="y[...] = v: the values written")
register(
    aten.index_put.default,
    indexing.index_put_rule,
    "linear",
    note="y[:, idx] = v, index_add; linear in (y, v), indices constant",
)
for _op in (aten.scatter_add.default, aten.scatter.src, aten.scatter_reduce.two):
    register(
        _op,
        indexing.scatter_src_rule(_op),
        "linear",
        note="linear in (y, src), index constant"
        + (
            " (sum, mean; amax, amin follow the selected entries and warn at order >= 2)"
            if "reduce" in str(_op)
            else ""
        ),
    )
register(aten.scatter.value, indexing.scatter_value_rule, "linear", note="scatters a constant")
register(aten.complex.default, indexing.complex_rule, "linear", note="torch.complex(re, im)")
deflinear(
    aten.cumsum.default,
    lambda ctx, k, c, x, dim, dtype=None: aten.cumsum.default(
        c, ctx.dim(dim, x.ndim, k), **({} if dtype is None else {"dtype": dtype})
    ),
    note="linear",
)
def_comp(
    aten.cumprod.default,
    indexing.cumprod_identity,
    note="running products (Leibniz along the dim)",
)
for _op in (aten.cummax.default, aten.cummin.default):
    register(
        _op,
        indexing.cumulative_extremum,
        "linear",
        smooth=False,
        note="follows the running extremum; exact a.e.; warns at order >= 2",
    )
register(
    aten.index.Tensor,
    indexing.index_rule,
    "linear",
    note="x[:, [0, 2]]; linear in x, integer indices constant",
)
def_comp(
    aten.logcumsumexp.default,
    indexing.logcumsumexp_identity,
    note="m + log cumsum exp(x - m); the max shift cancels",
    quiet=True,
)


# -- matrix functions ----------------------------------------------------------

register(
    aten.linalg_inv_ex.default,
    linalg.inv_rule,
    "linear",
    note="X_k = -A0^-1 sum C(k,j) A_j X_(k-j)",
)
register(
    aten._linalg_solve_ex.default,
    linalg.solve_rule,
    "bilinear",
    note="A X = B: X_k = A0^-1 (B_k - sum C(k,j) A_j X_(k-j))",
)
register(
    aten._linalg_slogdet.default,
    linalg.slogdet_rule,
    "composite",
    note="L_k = sum C(k-1,j) tr(Y_j A_(k-j)), Y = A^-1",
)
register(aten._linalg_det.default, linalg.det_rule, "composite", note="det = sign exp(log|det|)")
register(
    aten.linalg_cholesky_ex.default,
    linalg.cholesky_rule,
    "composite",
    note="L_k = L0 Phi(L0^-1 (A_k - sum C(k,j) L_j L_(k-j)^T) L0^-T), Phi: tril, half diagonal",
)


# -- special functions and remainders ------------------------------------------

def_deriv(aten.erfc.default, table_of(sympy.erfc))
def_deriv(
    aten.erfinv.default,
    DerivativeTable(ode=sympy.sqrt(sympy.pi) / 2 * sympy.exp(Y**2)),
    note="g' = sqrt(pi)/2 exp(g^2)",
)
def_deriv(aten.acosh.default, table_of(sympy.acosh), note="x > 1")
def_deriv(aten.atanh.default, table_of(sympy.atanh), note="|x| < 1")
def_deriv(aten.exp2.default, DerivativeTable(ode=sympy.log(2) * Y), note="g' = log(2) g")
def_deriv(aten.lgamma.default, table_of(sympy.loggamma), note="derivatives: polygamma")
def_deriv(aten.digamma.default, DerivativeTable(expr=sympy.polygamma(0, X)), note="polygamma")
for _op, _round in (
    (aten.fmod.Scalar, torch.trunc),
    (aten.fmod.Tensor, torch.trunc),
    (aten.remainder.Scalar, torch.floor),
    (aten.remainder.Tensor, torch.floor),
):
    register(
        _op,
        special.remainder(_round),
        "composite",
        smooth=False,
        note="a - round(a/b) b; exact a.e.; warns at order >= 2",
    )

# d/dx polygamma(n, x) = polygamma(n + 1, x) (DLMF 5.15.1); the tensor is the second argument
def_deriv(
    aten.polygamma.default,
    functools.cache(lambda n: DerivativeTable(expr=sympy.polygamma(n, X))),
    note="g^(m) = polygamma(n + m)",
    operand=1,
)
def_comp(
    aten.atan2.default,
    special.atan2_identity,
    note="atan(a/b) or -atan(b/a), whichever quotient is bounded (constants dropped)",
)
# hypot(a, b) = sqrt(a^2 + b^2): smooth away from a = b = 0
def_comp(aten.hypot.default, lambda a, b: torch.sqrt(a * a + b * b), note="sqrt(a^2 + b^2)")
