"""Fused kernels for the Taylor hot paths, each a ``torch.library`` custom op (``taylorc::...``).

Every op has a PyTorch reference implementation (used off CUDA), a Triton
implementation (CUDA; checked on the CPU under ``TRITON_INTERPRET=1``), a fake
implementation for tracing, and an autograd rule. ``mlp_laplacian`` also has a C
implementation for the CPU (:mod:`taylorc.kernels.mlp_laplacian_cpu`, float32 and float64
tanh networks), which calls without autograd use.
"""

from .jet_activation import ACTIVATIONS, jet_activation, jet_activation_reference
from .jet_linear import jet_linear_activation, jet_linear_activation_reference
from .mlp_laplacian import mlp_laplacian, mlp_laplacian_reference

__all__ = [
    "ACTIVATIONS",
    "jet_activation",
    "jet_activation_reference",
    "jet_linear_activation",
    "jet_linear_activation_reference",
    "mlp_laplacian",
    "mlp_laplacian_reference",
]
