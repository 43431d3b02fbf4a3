"""Operator specs and planning: which jets to propagate and how to read the operator off them."""

from .discretize import Grid, discretize, grid_nodes
from .parse import from_sympy, parse, parse_expression, split_coords
from .plan import JetPlan, PartPlan, TermPlan, build_plan
from .spec import (
    Advection,
    Biharmonic,
    Coefficient,
    Gradient,
    Heat,
    Helmholtz,
    Laplacian,
    LinearOperator,
    Operator,
    Part,
    Value,
    Wave,
    WeightedLaplacian,
)
from .weights import multi_index_weights, partial_weights, verify_expansion

__all__ = [
    "Advection",
    "Biharmonic",
    "Coefficient",
    "Gradient",
    "Grid",
    "Heat",
    "Helmholtz",
    "JetPlan",
    "Laplacian",
    "LinearOperator",
    "Operator",
    "Part",
    "PartPlan",
    "TermPlan",
    "Value",
    "Wave",
    "WeightedLaplacian",
    "build_plan",
    "discretize",
    "grid_nodes",
    "from_sympy",
    "multi_index_weights",
    "parse",
    "parse_expression",
    "partial_weights",
    "split_coords",
    "verify_expansion",
]
