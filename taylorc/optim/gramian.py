"""The dense Gramian (Gauss-Newton matrix) of a PINN loss: ``gramian``.

G = Σ_terms 1/N_t Σ_n J_nᵀ J_n with J_n = ∂r_n/∂θ the per-point Jacobian of the
residual, read exactly from each linear layer's inputs Z̃ and pre-activation gradients
g (J_n = Σ_s g_ns Z̃_nsᵀ per layer; Dangel, Müller, Zeinhofer, NeurIPS 2024, Sec. 3.2). This is the curvature of energy
natural gradient descent (Müller & Zeinhofer, "Achieving High Accuracy with PINNs via
Energy Natural Gradient Descent", ICML 2023); P x P memory: small nets only.
"""

from __future__ import annotations

import torch

from .factors import gram, to_vector
from .layer import Layer
from .linearization import Linearization, linearize


def layout(lins: list[Linearization], model) -> list[Layer]:
    """The layers of all terms, in the model's parameter order (one per weight)."""
    seen: dict[str, Layer] = {}
    for lin in lins:
        for name, layer in lin.layers.items():
            seen.setdefault(name, layer)
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return sorted(seen.values(), key=lambda layer: order[layer.weight])


def size(layer: Layer) -> int:
    """Number of parameters of a layer (W and b)."""
    return layer.d_out * layer.d_in


def layer_jacobian(layer: Layer) -> torch.Tensor:
    """Per-point Jacobian block ``(N, M, P_l)`` of one layer, ``J_nm = Σ_s g_mns Z̃_nsᵀ``
    flattened as ``cat(W.flatten(), b)`` (the sum over :meth:`Layer.nonzero_columns`)."""
    cols = layer.nonzero_columns()
    g, Z = layer.g, layer.Z
    if len(cols) < layer.S:
        g, Z = g[:, :, cols], Z[:, cols]
    return to_vector(torch.einsum("mnso,nsi->nmoi", g, Z), layer)


def jacobian(lin: Linearization, layers: list[Layer]) -> torch.Tensor:
    """Per-point Jacobian ``(N * M, P)`` of one term's residual; columns by ``layers``,
    each ``cat(W.flatten(), b)`` (zero for layers the term does not reach)."""
    N, M = lin.r.shape
    blocks = []
    for ref in layers:
        layer = lin.layers.get(ref.weight)
        if layer is None:
            blocks.append(lin.r.new_zeros(N, M, size(ref)))
            continue
        blocks.append(layer_jacobian(layer))
    return torch.cat(blocks, -1).reshape(N * M, -1)


def _unweighted(i: int, G_t: torch.Tensor) -> torch.Tensor:
    return G_t


def dense_gramian(
    lins: list[Linearization], layers: list[Layer], weigh=_unweighted
) -> torch.Tensor:
    """``Σ_t 1/N_t J_tᵀ J_t``, ``(P, P)`` (see :func:`jacobian` for the order).

    ``weigh(t, G_t)``: term t's part ``G_t = 1/N_t J_tᵀ J_t`` as it enters the sum (e.g.
    this rank's share of the global mean, :mod:`taylorc.optim.distributed`)."""
    G = 0
    for t, lin in enumerate(lins):
        J = jacobian(lin, layers)
        G = G + weigh(t, gram(J) / lin.r.shape[0])
    return G


def gramian(model, residuals: dict, points: dict) -> torch.Tensor:
    """The dense Gramian of the PINN loss Σ_t 1/(2N_t) Σ_n ||r_t,n||² at the current parameters.

    Args:
        model: the ``nn.Module``; residuals and points as for :class:`taylorc.optim.KFAC`.

    Returns:
        ``(P, P)`` in the points' dtype over the trainable parameters of the linear
        layers the residuals reach (frozen ones, ``requires_grad=False``, are left out);
        ordered layer by layer in the model's order, each layer's ``W.flatten()`` then
        its bias (``parameters_to_vector`` order for an ``nn.Sequential`` MLP).

    Raises:
        taylorc.errors.KFACError: a parameter used outside the linear layers (named).
    """
    lins = [linearize(model, f, points[t], check=True) for t, f in residuals.items()]
    return dense_gramian(lins, layout(lins, model))
