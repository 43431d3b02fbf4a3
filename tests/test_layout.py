"""The package's layout (issue 31): a small root, short modules and functions, no patched
``forward`` and no recording context variable."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "taylorc"
MODULES = sorted(ROOT.rglob("*.py"))

MAX_ROOT_MODULES = 8
MAX_MODULE_LINES = 410  # 400, with a margin of 10 lines
LONG_MODULES = {"rules/table.py"}  # the rule table: one entry per op, read as a table
MAX_FUNCTION_LINES = 60  # the def line to the last line
LONG_FUNCTIONS_UNDER = "kernels"  # Triton kernels are written as one function each


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_package_root_is_small():
    """The root holds the entry modules only; everything else lives in a subpackage."""
    root = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_modules_are_short():
    """No module grows past about 400 lines (the rule table excepted): split it by topic."""
    long = {
        f"taylorc/{_rel(p)}: {n} lines"
        for p in MODULES
        if _rel(p) not in LONG_MODULES and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, "modules over {} lines:\n{}".format(MAX_MODULE_LINES, "\n".join(sorted(long)))


def test_functions_are_short():
    """No function outside kernels/ is over 60 lines (counted from its def line to its end)."""
    long = [
        f"taylorc/{_rel(p)}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1} lines"
        for p in MODULES
        if _rel(p).split("/")[0] != LONG_FUNCTIONS_UNDER
        for f in ast.walk(ast.parse(p.read_text()))
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over {} lines:\n{}".format(MAX_FUNCTION_LINES, "\n".join(long))


def test_no_recording_context_and_no_patched_forward():
    """Models are not changed in place: no RECORDING context variable (grep) and no
    assignment to ``<something>.forward`` (or ``setattr(..., "forward", ...)``) in taylorc."""
    found = []
    for p in MODULES:
        text = p.read_text()
        found += [
            f"taylorc/{_rel(p)}:{i}: RECORDING"
            for i, line in enumerate(text.splitlines(), 1)
            if "RECORDING" in line
        ]
        for node in ast.walk(ast.parse(text)):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            patched = any(isinstance(t, ast.Attribute) and t.attr == "forward" for t in targets)
            patched |= (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "forward"
            )
            if patched:
                found.append(f"taylorc/{_rel(p)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
