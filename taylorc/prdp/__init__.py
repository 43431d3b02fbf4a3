"""PRDP: differentiable iterative solvers of taylorc's discretized operators, refined during training.

Bhatia, Koehler, Thuerey, "Progressively Refined Differentiable Physics", ICLR 2025.
"""

from .assemble import assemble
from .multigrid import VCycle
from .refiner import Refiner, contraction_factor, estimate_k_eps
from .solvers import Solver
from .sparse import Pattern, SparseSystem
from .timestep import TimeStepper

__all__ = [
    "Pattern",
    "Refiner",
    "Solver",
    "SparseSystem",
    "TimeStepper",
    "VCycle",
    "assemble",
    "contraction_factor",
    "estimate_k_eps",
]
