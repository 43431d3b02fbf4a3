"""The ``taylorc`` command.

``taylorc dump MODULE:FACTORY --operator laplacian --input-shape 8,5 --out DIR``
compiles a user's model and writes the debug dump (see :mod:`taylorc.debug`);
``taylorc demo poisson`` runs the 5-d Poisson PINN (:mod:`taylorc_contrib.demos.poisson`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

import torch

from taylorc_contrib.demos import poisson

from .api import compile as compile_operator


def load_factory(spec: str):
    """``MODULE:FACTORY`` -> the object FACTORY names (module path or a ``.py`` file).

    Raises:
        ValueError: the spec has no ``:`` or names nothing.
    """
    if ":" not in spec:
        raise ValueError(f"expected MODULE:FACTORY, got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        loader = importlib.util.spec_from_file_location(path.stem, path)
        if loader is None:
            raise ValueError(f"cannot load {mod_name}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(mod_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _dump(args) -> int:
    obj = load_factory(args.model)
    model = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    dtype = getattr(torch, args.dtype)
    if isinstance(model, torch.nn.Module):
        model = model.to(dtype)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    op = compile_operator(model, args.operator, method=args.method, debug_dir=args.out)
    out = op(torch.randn(*shape, dtype=dtype))
    shapes = (
        {k: tuple(v.shape) for k, v in out.items()} if isinstance(out, dict) else tuple(out.shape)
    )
    print(op.explain())
    print(f"output shape: {shapes}")
    print(f"dump written to {args.out}")
    return 0


def _demo(args, rest) -> int:
    if args.name != "poisson":
        print(f"unknown demo {args.name!r}; available: poisson", file=sys.stderr)
        return 2
    poisson.main(rest)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taylorc`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="taylorc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="compile a model and dump every pass")
    d.add_argument(
        "model",
        help="MODULE:FACTORY (a module path or file.py, and a model or a function returning one)",
    )
    d.add_argument("--operator", default="laplacian")
    d.add_argument("--method", default="collapsed", choices=["collapsed", "taylor"])
    d.add_argument("--input-shape", required=True, help="comma-separated, batch first: 8,5")
    d.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    d.add_argument("--out", required=True, help="directory for the dump")
    m = sub.add_parser("demo", help="run a demo (poisson); extra arguments go to the demo")
    m.add_argument("name")
    args, rest = parser.parse_known_args(argv)
    if args.command == "dump":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _dump(args)
    return _demo(args, rest)


if __name__ == "__main__":
    raise SystemExit(main())
