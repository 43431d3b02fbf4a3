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
