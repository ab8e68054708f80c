"""Derivative verification: JAX autodiff against the hand-derived reference and finite differences.

    report.py   the per-leaf report, its table, and GradientCheckError
    engine.py   probing, the finite-difference stencil, the compiled JAX side
    checks.py   the public checks: check_gradients, check_layer
    function.py check_function: any function of pytrees, its grad or VJP
    locate.py   the first node whose own derivative disagrees with JAX
    precision.py  values narrower than float64 entering a checked function
    diagnose.py the verdict of a failed check, in one sentence
    second_order.py  check_hvp: H v and G v, JAX vs the R-operator vs finite differences
    locate_rop.py    the first node whose own R-pass disagrees with JAX
"""

from purenet.check.checks import check_gradients, check_layer
from purenet.check.function import check_function
from purenet.check.locate import Culprit
from purenet.check.report import Discrepancy, GradientCheckError, GradientReport, LeafCheck
from purenet.check.second_order import check_hvp

__all__ = [
    "Culprit",
    "Discrepancy",
    "GradientCheckError",
    "GradientReport",
    "LeafCheck",
    "check_function",
    "check_gradients",
    "check_hvp",
    "check_layer",
]
