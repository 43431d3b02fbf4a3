"""Old names that keep working: a renamed attribute, module name or keyword answers with a
``DeprecationWarning`` that names its new spelling (the public-API rule: a new way to say
something keeps the old way working). Moved modules: ``taylorc.MOVED``.
"""

from __future__ import annotations

import warnings


def renamed(old: str, new: str) -> property:
    """A property ``old`` that reads and writes the attribute ``new``, with a
    ``DeprecationWarning`` (for a class attribute or dataclass field that was renamed)."""

    def warn():
        warnings.warn(f"{old} is now {new}", DeprecationWarning, stacklevel=3)

    def get(self):
        warn()
        return getattr(self, new)

    def put(self, value):
        warn()
        setattr(self, new, value)

    return property(get, put, doc=f"The old name of ``{new}`` (deprecated).")


def renamed_names(namespace: dict, names: dict[str, str]):
    """A module ``__getattr__`` that answers each old name of ``names`` (old -> new) with
    the object ``namespace`` (the module's ``globals()``) holds under the new one, with a
    ``DeprecationWarning``.

    Raises:
        AttributeError: (from the returned function) a name that is neither.
    """
    module = namespace["__name__"]

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} is now {names[name]}", DeprecationWarning, stacklevel=2)
        return namespace[names[name]]

    return __getattr__


def renamed_keyword(value, old_value, old: str, new: str):
    """``value`` (the keyword ``new``), or ``old_value`` where the caller used the old
    keyword ``old`` (given: not None), with a ``DeprecationWarning``."""
    if old_value is None:
        return value
    warnings.warn(f"the keyword {old}= is now {new}=", DeprecationWarning, stacklevel=3)
    return old_value
