import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" keeps the suite within CI's budget on 2 cores; "nightly" runs many more examples. The
# heaviest property tests set their own counts per tier (helpers.two_tiers).
settings.register_profile(
    "ci", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("TAYLORC_HYPOTHESIS_PROFILE", "ci"))

# one thread per pytest-xdist worker (the workers share the cores), else at most two
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads()))
)

# every pass manager validates the IR after every pass (taylorc.ir.validate)
os.environ.setdefault("TAYLORC_CHECK_IR", "1")

if not torch.cuda.is_available():  # the Triton kernels run in the interpreter on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

# On a GPU machine, TAYLORC_TEST_DEVICE=cuda runs the kernel tests with compiled kernels:
#   TAYLORC_TEST_DEVICE=cuda pytest tests/test_kernels.py tests/test_mlp_kernel.py
if os.environ.get("TAYLORC_TEST_DEVICE", "cpu") != "cpu":
    torch.set_default_device(os.environ["TAYLORC_TEST_DEVICE"])

# backend="auto" (the default) stays eager in the suite: no inductor compile after warm-up,
# no process-wide allocator change (tests/test_dynamic_batch.py switches both on where
# tested); environment variables, so subprocesses (torchrun, probes) inherit them
os.environ.setdefault("TAYLORC_AUTO_COMPILE_AFTER", "never")
os.environ.setdefault("TAYLORC_TUNE_ALLOCATOR", "0")
# no contention policy: the suite shares its cores (xdist workers, CI neighbours), and a
# thread count that follows the load would make compile counts depend on it
# (tests/test_threads.py sets the modes it tests)
os.environ.setdefault("TAYLORC_CONTENTION", "off")
import taylorc.runtime.config  # noqa: E402  (after TRITON_INTERPRET: taylorc imports triton)

taylorc.runtime.config.CONFIG.auto_compile_after = taylorc.runtime.config._compile_after()
taylorc.runtime.config.CONFIG.tune_allocator = taylorc.runtime.config._flag(
    "TAYLORC_TUNE_ALLOCATOR"
)
taylorc.runtime.config.CONFIG.contention = taylorc.runtime.config._contention()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
