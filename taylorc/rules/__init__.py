"""The public rule API: what a user needs to give taylorc the Taylor rule of an op.

A rule computes coefficient k >= 1 of an op's output from the :class:`Jet` s of its
inputs (``jet[j]`` is coefficient j, None when it is zero). Most ops need one line:

* an elementwise function: :func:`def_deriv` with a :class:`DerivativeTable` (its
  derivatives in sympy); Faa di Bruno's formula (:func:`compose`) does the rest;
* a linear op: :func:`deflinear`; a bilinear one: :func:`def_bilinear` (:func:`leibniz`);
* an identity over registered ops: :func:`def_comp`;
* anything else: :func:`register_rule` with ``rule(ctx, k, *args)`` written with
  ``ctx.top`` (:class:`RuleContext`) so that it serves collapsed mode too.

Worked example: docs/architecture.md, "Rules" (a custom ``torch.library`` op given its
derivative table with :func:`def_deriv`; ``tests/test_rule_api.py`` runs it).

Method: Griewank & Walther, "Evaluating Derivatives" (2008), ch. 13; collapsed mode
after Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic
Differentiation" (NeurIPS 2025).
"""

from __future__ import annotations

from . import table  # noqa: F401 - importing the table fills RULES
from .define import CONSTANT_OPS, RULES, RuleInfo, def_bilinear, def_comp, deflinear, register_rule
from .derivatives import DerivativeTable, X, Y, def_deriv
from .jet import Jet, RuleContext, compose, leibniz

__all__ = [
    "CONSTANT_OPS",
    "RULES",
    "DerivativeTable",
    "Jet",
    "RuleContext",
    "RuleInfo",
    "X",
    "Y",
    "compose",
    "def_bilinear",
    "def_comp",
    "def_deriv",
    "deflinear",
    "leibniz",
    "register_rule",
]
