"""mkdocs hook: the API reference must list every public name, each with a docstring.

After the build, the Sphinx inventory that mkdocstrings writes (``objects.inv``)
is read back and compared with ``__all__`` of the packages in ``PACKAGES``. A
public name that the reference does not render, or whose object has no
docstring, is logged as a warning, so ``mkdocs build --strict`` fails on it.
"""

import importlib
import inspect
import logging
import sys
import zlib
from pathlib import Path

PACKAGES = ("taylorc", "taylorc.operators", "taylorc.optim", "taylorc.prdp")
log = logging.getLogger("mkdocs.hooks.api_reference")


def inventory(site_dir: str) -> set[str]:
    """The object names in ``site_dir/objects.inv`` (Sphinx inventory v2, zlib body)."""
    raw = (Path(site_dir) / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def documented_paths(package: str, name: str, obj) -> set[str]:
    """Where the reference may list ``package.name``: there, or at its defining module."""
    paths = {f"{package}.{name}"}
    if inspect.ismodule(obj):
        paths.add(obj.__name__)
    elif hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
        paths.add(f"{obj.__module__}.{obj.__qualname__}")
    return paths


def missing(site_dir: str) -> list[str]:
    """The complaints about ``PACKAGES``: names not rendered, objects without a docstring."""
    listed = inventory(site_dir)
    problems = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not documented_paths(package, name, obj) & listed:
                problems.append(
                    f"{package}.{name} is public but the API reference does not list it"
                )
            if not (inspect.getdoc(obj) or "").strip():
                problems.append(f"{package}.{name} has no docstring")
    return problems


def on_config(config, **kwargs):
    # import the checkout the site documents, installed or not (as mkdocstrings' paths: [.])
    sys.path.insert(0, str(Path(config.config_file_path).parent))
    return config


def on_post_build(config, **kwargs) -> None:
    for problem in missing(config["site_dir"]):
        log.warning("API reference: %s (add it to docs/api.md or give it a docstring)", problem)
