"""No import cycles: every module imports on its own, and the module graph is a DAG."""

import ast
import pathlib
import subprocess
import sys

import networkx as nx
import pytest

import taylorc

ROOT = pathlib.Path(taylorc.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def module_graph() -> nx.DiGraph:
    """Edges from each module to the taylorc modules it imports (at any depth of its code)."""
    mods, g = _modules(), nx.DiGraph()
    for name, path in mods.items():
        g.add_node(name)
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - max(node.level - 1, 0)]
                if not node.level:
                    target = node.module or ""
                else:
                    target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    t = sub if sub in mods else target
                    if t in mods and t != name:
                        g.add_edge(name, t)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != name:
                        g.add_edge(name, alias.name)
    return g


def test_module_graph_has_no_cycle():
    g = module_graph()
    assert len(g) > 30 and g.number_of_edges() > 30  # the graph was read
    assert list(nx.simple_cycles(g)) == []


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
