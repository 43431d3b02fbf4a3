"""The one op table, and the kernels' activation derivatives checked against the rule registry."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import taylorc
from taylorc.ir import batch
from taylorc.ir import facts as ops
from taylorc.kernels.jet_activation import ACTIVATIONS, derivatives
from taylorc.passes import cleanup
from taylorc.passes import patterns as lower
from taylorc.rules import table as rules

FUNCTIONS = {
    "tanh": torch.tanh,
    "sin": torch.sin,
    "cos": torch.cos,
    "exp": torch.exp,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "silu": F.silu,
    "gelu": F.gelu,
}


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_kernel_reference_derivatives_agree_with_the_rule_registry(act):
    """derivatives(act) (the kernels' table) against the registry's Taylor rules of act."""
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64).unsqueeze(1)
    table = derivatives(act, x.squeeze(1), 4)
    for k in range(1, 5):
        spec = "u_" + "x" * k
        out = taylorc.compile(FUNCTIONS[act], spec, coords="x")(x).squeeze(1)
        assert_close(out, table[k], 1e-12)


def test_the_passes_read_their_sets_from_the_one_table():
    assert cleanup.ZERO_MAKERS == ops.having("zero_maker")
    assert batch.REDUCTIONS == ops.having("reduction")
    assert batch.ALONG_DIM == ops.valued("along_dim")
    assert lower.ACTIVATION_TARGETS == ops.valued("activation")
    assert rules.CONSTANT_OPS == set(ops.having("constant_output"))
    # every activation the kernels lower has a rule
    assert all(op in rules.RULES for op in lower.ACTIVATION_TARGETS)
