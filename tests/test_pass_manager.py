"""Passes state what they require and ensure; the pass manager checks every pipeline's order."""

import pytest
import torch

import taylorc
from taylorc.passes import PassOrderError, check_order
from taylorc.passes.cleanup import CleanupPass
from taylorc.passes.collapse import CollapsePass
from taylorc.passes.lower import LowerPass
from taylorc.passes.taylor import TaylorPass
from taylorc.passes.zcs import ZCSPass


@pytest.mark.parametrize(
    "passes, message",
    [
        ([CleanupPass()], "needs \\['operator'\\]"),
        ([TaylorPass(), CleanupPass(), CollapsePass()], "before"),
        ([TaylorPass(), CleanupPass(), LowerPass()], "before"),
        ([TaylorPass(), ZCSPass({})], "before"),
    ],
)
def test_misordered_pipelines_are_refused(passes, message):
    with pytest.raises(PassOrderError, match=message):
        check_order(passes)


def test_every_method_pipeline_is_in_order_and_lowering_reports_its_result():
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    x = torch.randn(5, 2, dtype=torch.float64)
    for kwargs in (
        {},
        {"method": "taylor"},
        {"method": "stochastic", "samples": 2},
        {"method": "stein", "samples": 2, "sigma": 0.1},
    ):
        op = taylorc.compile(mlp.double(), "laplacian", **kwargs)
        op.config.whole_mlp = False
        op.lower_everywhere = kwargs == {}
        op(x)
        stages = [r["pass"] for r in op._last.records]
        assert stages[0] == "capture" and "cleanup" in stages
    op = taylorc.compile(mlp.double(), "laplacian")
    op.config.whole_mlp = False
    op.lower_everywhere = True
    op(x)
    lower = next(r for r in op._last.records if r["pass"] == "lower")
    assert lower["done"]["lowered"]  # the tanh step, by its source node's name
