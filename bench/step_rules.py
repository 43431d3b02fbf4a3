"""ENGD's step rule on the main job: the 5-d Poisson demo with ENGD's line search replaced.

``python bench/step_rules.py MODE [demo flags]`` runs ``examples/poisson.py``'s training
(``--optimizer engd``, 270 s cap) with MODE one of ``grid31`` (the paper's α ∈ {2⁻³⁰..1}),
``grid11`` ({2⁻¹⁰..1}), ``grid6`` ({2⁻⁵..1}) or ``backtracking`` (``lr="backtracking"``),
and prints the relative L2 error. Run the modes alone, one after the other (the budget is
wall time). Results: docs/kfac.md, "The main job on ENGD"; bench/results/main-job-engd.json.
"""

from __future__ import annotations

import sys

import taylorc.optim.engd as engd
from taylorc.optim import step_rules
from taylorc_contrib.demos import poisson

GRIDS = {"grid31": 30, "grid11": 10, "grid6": 5}


def _grid_step(smallest: int):
    """ENGD's step with the grid line search over α ∈ {2^-smallest..1}."""
    grid = tuple(2.0**-k for k in range(smallest, -1, -1))

    def take_step(model, layers, blocks, lr, loss_fn, current, reducer=step_rules.LOCAL):
        step_rules.line_search(model, layers, blocks, loss_fn, current, grid, reducer)

    return take_step


def main(argv: list[str]) -> float:
    mode, rest = argv[0], argv[1:]
    rule = "backtracking" if mode == "backtracking" else "line_search"
    if mode in GRIDS:
        engd.take_step = _grid_step(GRIDS[mode])
    args = ["--optimizer", "engd", "--step-rule", rule, "--quiet", "--figure", ""] + rest
    return poisson.main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
