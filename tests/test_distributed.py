"""Data-parallel training under torch.distributed (DDP, gloo, CPU) equals one process.

``torchrun --nproc_per_node=2 tests/ddp_worker.py`` (a subprocess with a timeout):
after 3 Adam steps in float64 on 2 ranks with half the points each, every
parameter equals the single-process run on the union to 1e-12, for a loss module
over the compiled Laplacian, one over a dict operator, and DDP wrapping the
CompiledOperator itself. A control case without DDP must differ. The example
``examples/poisson_ddp.py`` runs a few steps under the same launcher.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).parent.parent
CASES = ["laplacian", "dict", "operator", "local"]
needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no torch.distributed/gloo"
)


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 script args`` (1 thread a rank, 120 s)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run(
        [*cmd, str(script), *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@needs_gloo
def test_ddp_two_ranks_equal_single_process():
    out = torchrun(ROOT / "tests" / "ddp_worker.py", *CASES)
    found = dict(re.findall(r"CASE (\w+) maxdiff (\S+)", out.stdout))
    assert sorted(found) == sorted(CASES), out.stdout
    for case in CASES[:-1]:
        assert float(found[case]) <= 1e-12, (case, found[case])
    # the control trained each rank on its own shard only: it must not match
    assert float(found["local"]) > 1e-6, found["local"]


@needs_gloo
def test_poisson_ddp_example_runs():
    args = "--adam-steps 3 --interior 64 --boundary 32 --test-points 100".split()
    out = torchrun(ROOT / "examples" / "poisson_ddp.py", *args)
    # rank 0 alone prints the main job's line
    assert len(re.findall(r"^relative L2 error: \S+", out.stdout, re.M)) == 1, out.stdout
