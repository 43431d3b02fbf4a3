"""Data-parallel training under torch.distributed (gloo, CPU) equals one process.

``torchrun --nproc_per_node=2 tests/ddp_worker.py`` (a subprocess with a timeout):
after 3 Adam steps in float64 on 2 ranks with half the points each, every
parameter equals the single-process run on the union to 1e-12, for a loss module
over the compiled Laplacian, one over a dict operator, DDP wrapping the
CompiledOperator itself, and a ZCS DeepONet. A control case without DDP must differ.
A second launch does the same for ``taylorc.optim`` (KFAC*, with and without the
split inversion; KFAC-reduce* with update_every 2, invert_every 3 and a
state_dict round trip; line-search KFAC with three terms; ENGD) on UNEVEN shards, with a
local-only control: the ranks' parameters agree bitwise, and with the one-process run to
1e-12 (kfac_every, whose rounding a near-singular step amplifies: 1e-9). The example
``examples/poisson_ddp.py`` runs a few steps under the same launcher. Single-process:
``KroneckerSum`` rebuilt from another's factorization (what the split inversion
broadcasts) solves alike.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from taylorc.optim import KroneckerSum

ROOT = Path(__file__).parent.parent
CASES = ["laplacian", "dict", "operator", "zcs", "local"]
KFAC_CASES = ["kfac_star", "kfac_star_nosplit", "kfac_every", "kfac_ls", "engd", "kfac_local"]
needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no torch.distributed/gloo"
)


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 script args`` (1 thread a rank, 150 s)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run(
        [*cmd, str(script), *args], env=env, capture_output=True, text=True, timeout=150, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def run_cases(cases: list[str]) -> tuple[dict[str, tuple[float, float]], str]:
    """Run the worker: ``({case: (maxdiff vs one process, spread over ranks)}, stdout)``."""
    out = torchrun(ROOT / "tests" / "ddp_worker.py", *cases)
    found = re.findall(r"CASE (\w+) maxdiff (\S+) spread (\S+) moved (\S+)", out.stdout)
    assert sorted(c for c, *_ in found) == sorted(cases), out.stdout
    # the reference must have moved, or equality would prove nothing
    assert all(float(moved) > 1e-2 for *_, moved in found), out.stdout
    return {c: (float(d), float(s)) for c, d, s, _ in found}, out.stdout


@needs_gloo
def test_ddp_two_ranks_equal_single_process():
    found, _ = run_cases(CASES)
    for case in CASES[:-1]:
        assert found[case][0] <= 1e-12, (case, found[case])
        assert found[case][1] <= 1e-12, (case, found[case])
    # the control trained each rank on its own shard only: it must not match
    assert found["local"][0] > 1e-6, found["local"]


# How far a case moves when only the order of its sums changes, measured in one
# process by permuting the points (5 permutations, this machine): kfac_star 3.6e-14,
# engd 4.5e-14, kfac_ls 2.8e-16, kfac_every 4.6e-11. kfac_every's step 1 solves a
# near-singular 2x2 system (its stale factors make the new direction nearly parallel
# to the previous step: alpha = -90, mu = 8.9e3), so its rounding is amplified; its
# bound stays far below what a wrong reduction gives (the control: 1e-1).
KFAC_TOL = {"kfac_every": 1e-9}


@pytest.mark.slow  # one torchrun launch in the default tier: the DDP equality
@needs_gloo
def test_kfac_two_ranks_uneven_shards_equal_single_process():
    found, stdout = run_cases(KFAC_CASES)
    for case in KFAC_CASES[:-1]:
        assert found[case][0] <= KFAC_TOL.get(case, 1e-12), (case, found[case])
        # lockstep, bitwise: every step applies rank 0's update (broadcast) on every rank
        assert found[case][1] == 0, (case, found[case])
    # the control reduced nothing (a group of one rank each): it must not match
    assert found["kfac_local"][0] > 1e-6 and found["kfac_local"][1] > 1e-6, found["kfac_local"]
    assert "DDP_WRAPPER_REJECTED" in stdout and "EMPTY_SHARD_REJECTED" in stdout, stdout
    assert "MISSING_TERM_REJECTED KFAC" in stdout and "MISSING_TERM_REJECTED ENGD" in stdout, stdout


@pytest.mark.parametrize("terms", [1, 2, 3])
def test_kronecker_sum_from_prepared_factorization(terms):
    gen = torch.Generator().manual_seed(terms)

    def spd(n):
        M = torch.randn(n, n, generator=gen, dtype=torch.float64)
        return M @ M.T + n * torch.eye(n, dtype=torch.float64)

    pairs = [(spd(4), spd(3)) for _ in range(terms)]
    G = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ref = KroneckerSum(pairs)
    got = KroneckerSum(pairs, prepared=[t.clone() for t in ref.prepared()])
    assert [tuple(t.shape) for t in ref.prepared()] == KroneckerSum.prepared_shapes(pairs)
    torch.testing.assert_close(got.solve(G), ref.solve(G), rtol=0, atol=0)
    dense = sum(torch.kron(A, B) for A, B in pairs)  # column-major vec
    want = torch.linalg.solve(dense, G.T.reshape(-1)).reshape(4, 3).T
    torch.testing.assert_close(got.solve(G), want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="prepared"):
        KroneckerSum(pairs, prepared=[t.T.contiguous() for t in ref.prepared()][:1])


@pytest.mark.slow  # one torchrun launch in the default tier: the DDP equality
@needs_gloo
def test_poisson_ddp_example_runs():
    args = "--optimizer adam --adam-steps 3 --interior 64 --boundary 32 --test-points 100"
    out = torchrun(ROOT / "examples" / "poisson_ddp.py", *args.split())
    # rank 0 alone prints the main job's line
    assert len(re.findall(r"^relative L2 error: \S+", out.stdout, re.M)) == 1, out.stdout


@pytest.mark.slow  # one torchrun launch in the default tier: the DDP equality
@needs_gloo
@pytest.mark.parametrize(
    "args",
    [
        # KFAC* over the default group, uneven boundary shards (16/15)
        "--optimizer kfac* --kfac-steps 3 --interior 64 --boundary 31 --test-points 100",
        # the example's default: dense ENGD over the default group, backtracking
        "--kfac-steps 3 --interior 64 --boundary 31 --test-points 100",
    ],
    ids=["kfac*", "engd-default"],
)
def test_poisson_ddp_example_second_order_runs(args):
    out = torchrun(ROOT / "examples" / "poisson_ddp.py", *args.split())
    assert len(re.findall(r"^relative L2 error: \S+", out.stdout, re.M)) == 1, out.stdout


SAMPLE_CASES = ["engd_woodbury", "engd_auto", "spring", "spring_bt", "spring_local"]


@pytest.mark.slow  # one torchrun launch: the sample-space solves' DDP equality
@needs_gloo
def test_sample_space_two_ranks_uneven_shards_equal_single_process():
    """ENGD-Woodbury, ENGD "auto" and SPRING (fixed lr, backtracking) on 2 ranks with
    uneven shards (tests/ddp_worker.py) take the single-process steps on the union."""
    found, stdout = run_cases(SAMPLE_CASES)
    for case in SAMPLE_CASES[:-1]:
        assert found[case][0] <= 1e-10, (case, found[case])
        # lockstep, bitwise: every step applies rank 0's φ (broadcast) on every rank
        assert found[case][1] == 0, (case, found[case])
    # the control gathered nothing (a group of one rank each): it must not match
    assert found["spring_local"][0] > 1e-6 and found["spring_local"][1] > 1e-6, found
    assert "MISSING_TERM_REJECTED SPRING" in stdout, stdout


def test_collective_tensors_stay_referenced_until_the_backend_lets_go():
    """A collective whose backend thread still holds the tensor after it returns (gloo's
    worker does, briefly) keeps it referenced from Python, and the exit hook waits for the
    backend to let go; the stand-in for the worker's reference is an autograd graph that
    saved the tensor."""
    import threading
    import time

    from taylorc.optim import distributed

    t = torch.ones(3, requires_grad=True)
    held = []

    def collective(x):
        held.append((x * x).sum())  # the graph saves x: a reference outside Python's
        threading.Timer(0.2, held.clear).start()

    distributed.run_collective([t], collective, t)
    assert held and any(x is t for x, _ in distributed._HELD)  # kept, not waited for
    start = time.perf_counter()
    distributed.settle_all()
    assert held == [] and time.perf_counter() - start >= 0.15
    assert distributed._HELD == [] and t._use_count() == 1
