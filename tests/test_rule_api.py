"""The public rule API's worked example: a custom torch.library op given its derivative table."""

import pytest
import torch
from helpers import assert_close

import taylorc
from taylorc.rules import DerivativeTable, Y, def_deriv


@torch.library.custom_op("taylorc_test::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor, a: float) -> torch.Tensor:
    return a * torch.tanh(x)


@scaled_tanh.register_fake
def _(x, a):
    return torch.empty_like(x)


@pytest.fixture
def scaled_tanh_rule():
    """The worked example's rule, registered for the test and removed after it."""
    op = torch.ops.taylorc_test.scaled_tanh.default
    def_deriv(op, lambda a: DerivativeTable(ode=a * (1 - (Y / a) ** 2)))
    yield
    taylorc.rules.RULES.pop(op)


W = torch.randn(3, 5, dtype=torch.float64)


def test_custom_op_with_a_derivative_table_matches_nested_autograd_of_its_definition(
    scaled_tanh_rule,
):
    f = lambda x: scaled_tanh(x @ W, 1.7).sum(1, keepdim=True)
    same = lambda x: (1.7 * torch.tanh(x @ W)).sum(1, keepdim=True)  # the oracle's model
    x = torch.randn(4, 3, dtype=torch.float64)
    for operator in ("laplacian", "biharmonic", "gradient"):
        ref = taylorc.compile(same, operator, method="nested")(x)
        for method in ("collapsed", "taylor"):
            assert_close(taylorc.compile(f, operator, method=method)(x), ref, 1e-10)


def test_public_names_are_the_registry_helpers():
    from taylorc.rules import table as rules

    assert taylorc.rules.RULES is rules.RULES
    assert taylorc.rules.register_rule is taylorc.register_rule
