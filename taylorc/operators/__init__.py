"""Operator specs and planning: which jets to propagate and how to read the operator off them."""

from .plan import JetPlan, TermPlan, build_plan
from .spec import Biharmonic, Gradient, Laplacian, Operator, Value, parse, verify_expansion

__all__ = [
    "Biharmonic",
    "Gradient",
    "JetPlan",
    "Laplacian",
    "Operator",
    "TermPlan",
    "Value",
    "build_plan",
    "parse",
    "verify_expansion",
]
