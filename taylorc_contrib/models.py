"""Model architectures of the field that taylorc's examples and benchmarks use."""

from __future__ import annotations

import torch
from torch import nn


def _mlp(d_in: int, width: int, depth: int, d_out: int, activation) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), activation()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class DeepONet(nn.Module):
    """Deep operator network in cartesian-product form (Lu et al., Nat. Mach. Intell. 2021, Eq. 2).

    ``u(f)(x) = sum_k b_k(f) t_k(x) + bias``: a branch MLP reads each input
    function at its sensors, a trunk MLP reads each point; every function is
    paired with every point.

    Args:
        sensors: number of sensor values per input function (branch input width).
        coords: number of coordinates per point (trunk input width).
        width, depth: hidden width and number of hidden layers of both MLPs.
        basis: number of basis functions p per output.
        outputs: number of output fields (each with its own p basis functions).
        activation: hidden activation class (smooth for derivatives of order >= 2).

    Shapes: ``forward(branch_input (M, sensors), trunk_input (N, coords))`` gives
    ``(M, N)`` (or ``(M, N, outputs)``), in the parameters' dtype.
    """

    def __init__(
        self,
        sensors: int,
        coords: int,
        width: int = 64,
        depth: int = 3,
        basis: int = 64,
        outputs: int = 1,
        activation=nn.Tanh,
    ):
        super().__init__()
        self.basis, self.outputs = basis, outputs
        self.branch = _mlp(sensors, width, depth, basis * outputs, activation)
        self.trunk = _mlp(coords, width, depth, basis * outputs, activation)
        self.trunk_activation = activation()
        self.bias = nn.Parameter(torch.zeros(outputs))

    def forward(self, branch_input: torch.Tensor, trunk_input: torch.Tensor) -> torch.Tensor:
        b = self.branch(branch_input).unflatten(-1, (self.outputs, self.basis))  # (M, o, p)
        t = self.trunk_activation(self.trunk(trunk_input)).unflatten(-1, (self.outputs, self.basis))
        u = torch.einsum("mop,nop->mno", b, t) + self.bias
        return u[..., 0] if self.outputs == 1 else u

    def aligned(self, branch_input: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``u`` at P (function, point) pairs: ``(P, sensors)``, ``(P, coords)`` -> ``(P,)``.

        The "aligned" layout of DeepXDE's PI-DeepONets (DataVect in Leng et al. 2024):
        the branch input is repeated per point, so coordinates can be ``(P, D)`` leaves.
        """
        b = self.branch(branch_input).unflatten(-1, (self.outputs, self.basis))
        t = self.trunk_activation(self.trunk(points)).unflatten(-1, (self.outputs, self.basis))
        u = (b * t).sum(-1) + self.bias
        return u[..., 0] if self.outputs == 1 else u


__all__ = ["DeepONet"]
