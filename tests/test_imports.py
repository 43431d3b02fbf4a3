"""The package's import structure: no cycles, every module imports on its own, no module
imports from a layer above its own, and function-level imports only for optional or heavy
third-party dependencies."""

import ast
import pathlib
import subprocess
import sys

import networkx as nx
import pytest

import taylorc

ROOT = pathlib.Path(taylorc.__file__).parent

# The layers, bottom to top (issue 31). A module may import its own group and the groups on
# lower rows; groups on one row are peers and import neither each other nor anything above.
LAYERS = [
    ("errors", "deprecation"),  # the exception types | old names that keep working
    ("ir", "operators"),  # graph schema, op facts, batch analyses | operator specs, plans, stencils
    ("rules",),  # the jet algebra and the rule table (reads ir's op facts)
    ("kernels", "capture", "debug"),  # Triton/torch.library ops | tracing into the ir | dumps
    ("passes",),  # graph passes
    ("methods",),  # one module per differentiation method
    ("runtime",),  # graph cache, torch.compile backend, CPU tuning, config
    ("api",),  # taylorc.compile, CompiledOperator
    ("optim", "prdp"),  # the consumers: KFAC, ENGD, SPRING; differentiable solvers
    ("__init__",),  # the package re-exports the api and the consumers
    ("cli",),  # the command, which also runs the demos (taylorc_contrib, outside the package)
]

# Function-level imports, each with its reason: optional or heavy third-party dependencies only.
# A taylorc module is imported at the top of the file (a cycle is fixed by moving code).
LAZY_IMPORTS = {
    ("taylorc.debug", "pydot"): "optional: graph drawing (docs extra)",
    ("taylorc.runtime.backend", "torch._inductor.compile_fx"): "heavy: Inductor",
    ("taylorc.optim.compiled", "torch._inductor.compile_fx"): "heavy: Inductor",
    ("taylorc.optim.factors", "scipy.linalg"): "heavy: SciPy's BLAS, at the first large CPU Gram",
    ("taylorc.optim.factors", "threadpoolctl"): "heavy: loaded after SciPy's BLAS, to see it",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports():
    """``(module, imported module, "file:line", in a function body)`` for each import in
    taylorc; a ``from`` import of a taylorc submodule names the submodule."""
    mods = _modules()
    for name, path in sorted(mods.items()):
        tree = ast.parse(path.read_text())
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        funcs = (
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        )
        in_function = {id(i) for f in funcs for i in ast.walk(f)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - max(node.level - 1, 0)]
                if not node.level:
                    target = node.module or ""
                else:
                    target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield name, sub if sub in mods else target, where, id(node) in in_function
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, alias.name, where, id(node) in in_function


def module_graph() -> nx.DiGraph:
    """Edges from each module to the taylorc modules it imports (at any depth of its code)."""
    mods, g = _modules(), nx.DiGraph()
    g.add_nodes_from(mods)
    for name, target, _, _ in _imports():
        if target in mods and target != name:
            g.add_edge(name, target)
    return g


def _group(module: str) -> str:
    """The row name of a module: its subpackage or root module (``__init__`` for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_module_graph_has_no_cycle():
    g = module_graph()
    assert len(g) > 30 and g.number_of_edges() > 30  # the graph was read
    assert list(nx.simple_cycles(g)) == []


def test_no_module_imports_from_a_layer_above():
    """The layering of issue 31: nothing in ir/, rules/, passes/, methods/, runtime/ imports the
    api, the consumers (optim, prdp) or contrib; the core never imports the consumers."""
    rank = {group: i for i, row in enumerate(LAYERS) for group in row}
    mods = _modules()
    assert {_group(m) for m in mods} <= set(rank), "place the new subpackage in LAYERS"
    upward = sorted(
        {
            f"{name} -> {target} ({where})"
            for name, target, where, _ in _imports()
            if target in mods
            and _group(target) != _group(name)
            and rank[_group(target)] >= rank[_group(name)]
        }
    )
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_function_level_imports_are_listed():
    """An import inside a function body hides a dependency (and often a cycle): only optional
    or heavy third-party modules are imported there, each listed in LAZY_IMPORTS."""
    lazy = {(name, target, where) for name, target, where, in_function in _imports() if in_function}
    unlisted = sorted(f"{n} -> {t} ({w})" for n, t, w in lazy if (n, t) not in LAZY_IMPORTS)
    assert not unlisted, "function-level imports not in LAZY_IMPORTS:\n" + "\n".join(unlisted)
    assert set(LAZY_IMPORTS) <= {(n, t) for n, t, _ in lazy}  # no stale entry


@pytest.mark.slow  # one interpreter per module
def test_every_module_imports_on_its_own():
    names = sorted(_modules())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'taylorc' or m.startswith('taylorc.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
