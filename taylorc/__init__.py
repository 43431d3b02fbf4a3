"""taylorc: collapsed Taylor mode for the differential operators of scientific machine learning.

``taylorc.compile(model, operator="laplacian")`` traces the model with torch.fx,
rewrites the graph into forward Taylor propagation (collapsed), and returns a
module computing the operator per sample. See docs/architecture.md.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from . import errors, methods, operators, optim, prdp
from .api import CompiledOperator, compile
from .methods.stochastic import unbiased_squared_residual
from .rules.define import register_rule
from .runtime import config, cpu

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

# modules that moved when the package was redrawn (issue 31): the old import paths
# still work, with a DeprecationWarning naming the new one
MOVED = {
    "taylorc.config": "taylorc.runtime.config",
    "taylorc.cpu": "taylorc.runtime.cpu",
    "taylorc.backend": "taylorc.runtime.backend",
    "taylorc.models": "taylorc_contrib.models",
    "taylorc.losses": "taylorc.methods.stochastic",
    "taylorc.demos": "taylorc_contrib.demos",
    "taylorc.demos.poisson": "taylorc_contrib.demos.poisson",
    "taylorc.demos.common": "taylorc_contrib.demos.common",
    "taylorc.reference": "taylorc.methods.nested",
    "taylorc.sites": "taylorc.passes.layers",
    "taylorc.passes.sites": "taylorc.passes.layers",
    "taylorc.taylor_graph": "taylorc.methods.layer_graph",
    "taylorc.optim.record": "taylorc.optim.linearization",
    "taylorc.optim.steps": "taylorc.optim.step_rules",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the old paths in :data:`MOVED` to the modules' new homes."""

    specs: dict = {}  # new module name -> its own spec

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(MOVED[spec.name])
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs[module.__name__]  # the import set the old path's spec


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
