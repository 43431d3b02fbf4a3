"""Generate docs/ops.md from the rule registry; ``--check`` fails when the file is stale (CI runs it).

python tools/ops_table.py          # rewrite docs/ops.md
python tools/ops_table.py --check  # exit 1 if docs/ops.md differs from the registry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taylorc.capture import decomposed_by_capture
from taylorc.rules.table import CONSTANT_OPS, RULES

PATH = Path(__file__).resolve().parent.parent / "docs" / "ops.md"

HEADER = """# Supported ops

Generated from the rule registry (`taylorc/rules/`) by `tools/ops_table.py`;
CI checks that this file matches the registry. Every op is claimed, and tested against
nested autograd in float64 (`tests/test_rules.py`, relative error < 1e-9), at Taylor
orders 1 to 4, in standard and collapsed mode, and through capture with three
directions against plain autograd or closed forms (`tests/test_differential.py`: the
Laplacian, the gradient and a mixed spec in one collapsed propagation, the biharmonic,
B = 1 and 3; a registered op without a case fails it). The rules are written for any
order (operators allow up to 6), but orders 5-6 are not part of the claim. Ops marked
"warns" are exact almost everywhere and warn at derivative order >= 2. Ops marked
"decomposed by capture" never reach their rule from `taylorc.compile` (core-ATen
decompositions or PyTorch's composite kernels rewrite them first); their rules serve
graphs made otherwise. Add your own with `taylorc.register_rule`.

| op | kind | orders | collapsed | notes |
| --- | --- | --- | --- | --- |
"""


def _name(op) -> str:
    if not hasattr(op, "_schema"):
        return f"{op.__module__.replace('_operator', 'operator')}.{op.__name__}"
    namespace, name = op._schema.name.split("::")
    return f"{namespace}.{name}.{op._overloadname}"


def render() -> str:
    rows = []
    for op, info in RULES.items():
        if info.kind == "user":
            continue
        note = info.note + ("" if info.smooth else (" (warns)" if "warn" not in info.note else ""))
        note += " (decomposed by capture)" if decomposed_by_capture(op) else ""
        rows.append(f"| `{_name(op)}` | {info.kind} | 1-4 | yes | {note.strip()} |")
    consts = ", ".join(f"`{_name(op)}`" for op in sorted(CONSTANT_OPS, key=_name))
    return (
        HEADER
        + "\n".join(sorted(rows))
        + (
            "\n\nConstant ops (their output carries no Taylor coefficients, only the value): "
            + consts
            + ".\n"
        )
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text() != text:
            print(f"{PATH} is stale: run python tools/ops_table.py", file=sys.stderr)
            return 1
        print(f"{PATH} matches the registry ({text.count('| `')} ops)")
        return 0
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
