"""Every public name of the public modules has a docstring (the API reference is built from them)."""

import importlib
import inspect

import pytest

MODULES = [
    "taylorc",
    "taylorc.operators",
    "taylorc.methods",
    "taylorc.rules",
    "taylorc.prdp",
    "taylorc.errors",
    "taylorc.optim",
]


@pytest.mark.parametrize("name", MODULES)
def test_public_names_have_docstrings(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        pytest.skip(f"{name} is not built")
    assert inspect.getdoc(module), name
    missing = []
    for attr in getattr(module, "__all__", []):
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(attr)
    assert missing == [], f"{name}: no docstring for {missing}"


def _package_modules():
    import pkgutil

    import taylorc

    for info in pkgutil.walk_packages(taylorc.__path__, "taylorc."):
        yield info.name


def test_every_public_function_class_and_method_has_a_docstring():
    """The house rule, package-wide: a public function, class or method defined in a taylorc
    module has a docstring (an override inherits its base's, as ``inspect.getdoc`` reads it)."""
    missing = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{name}.{attr}")
            if inspect.isclass(obj):
                for meth, member in vars(obj).items():
                    fn = member.fget if isinstance(member, property) else member
                    if meth.startswith("_") or not inspect.isfunction(fn):
                        continue
                    if not inspect.getdoc(getattr(obj, meth)) and not inspect.getdoc(fn):
                        missing.append(f"{name}.{attr}.{meth}")
    assert missing == [], f"no docstring for {missing}"
