"""Methods as objects: each declares its options, plan, pass pipeline and runtime inputs.

``taylorc.compile(model, op, method=taylorc.methods.Stein(samples=64, sigma=1e-2))``
and the string form ``method="stein", samples=64, sigma=1e-2`` are the same thing:
:func:`from_name` builds the object from the name and the keywords that belong to it.

| name | class | paper |
| --- | --- | --- |
| ``"collapsed"`` | :class:`Collapsed` | Dangel, Siebert, Zeinhofer, Walther, NeurIPS 2025 |
| ``"taylor"`` | :class:`Taylor` | Griewank & Walther 2008, ch. 13 |
| ``"nested"`` | :class:`Nested` | torch.func nested autograd (the reference) |
| ``"zcs"`` | :class:`ZCS` | Leng et al., J. Comput. Phys. 2024 |
| ``"auto"`` | :class:`Auto` | ZCS or collapsed by :func:`auto_method` |
| ``"stochastic"`` | :class:`Stochastic` | Shi et al., NeurIPS 2024 |
| ``"stein"`` | :class:`Stein` | He et al., AISTATS 2023 |
"""

from __future__ import annotations

import inspect

from .base import Method
from .reverse import AUTO_ZCS_MIN_FUNCTIONS, ZCS, Auto, Nested, auto_method
from .stochastic import Stein, Stochastic
from .taylor import Collapsed, Taylor

# the keywords of compile() that belong to methods, at their defaults
DEFAULTS = {
    "samples": None,
    "sigma": None,
    "variance_reduction": True,
    "distribution": "rademacher",
    "generator": None,
}
CLASSES = dict((c.name, c) for c in (Collapsed, Taylor, Nested, ZCS, Auto, Stochastic, Stein))
NAMES = tuple(CLASSES)


def from_name(method, **options) -> Method:
    """The method object for ``method`` (a name or a :class:`Method`) and its keywords.

    Keywords a named method does not take are ignored, as ``compile`` always did; with a
    method object, every keyword must stay at its default (the options live on the object).

    Raises:
        ValueError: an unknown name; a keyword the method does not take; missing options.
        TypeError: ``method`` neither a name nor a :class:`Method`.
    """
    if isinstance(method, Method):
        given = [k for k, v in options.items() if v is not DEFAULTS.get(k) and v != DEFAULTS.get(k)]
        if given:
            raise ValueError(
                f"options {sorted(given)} belong on the method object: {type(method).__name__}(...)"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a taylorc.methods.Method, got {method!r}")
    if method not in CLASSES:
        raise ValueError(f"method must be one of {NAMES}, got {method!r}")
    cls = CLASSES[method]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in options.items() if k in accepted}
    return cls(**kwargs)


__all__ = [
    "AUTO_ZCS_MIN_FUNCTIONS",
    "Auto",
    "Collapsed",
    "Method",
    "Nested",
    "Stein",
    "Stochastic",
    "Taylor",
    "ZCS",
    "auto_method",
    "from_name",
]
