"""taylorc: collapsed Taylor mode for the differential operators of scientific machine learning.

``taylorc.compile(model, operator="laplacian")`` traces the model with torch.fx,
rewrites the graph into forward Taylor propagation (collapsed), and returns a
module computing the operator per sample. See docs/architecture.md.
"""

from . import config, cpu, errors, methods, operators, optim, prdp
from .api import CompiledOperator, compile
from .losses import unbiased_squared_residual
from .passes.rules import register_rule

__all__ = [
    "CompiledOperator",
    "compile",
    "config",
    "cpu",
    "errors",
    "methods",
    "operators",
    "optim",
    "prdp",
    "register_rule",
    "unbiased_squared_residual",
]
__version__ = "0.1.0"
