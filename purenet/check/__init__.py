"""Derivative verification: JAX autodiff against the hand-derived reference and finite differences.

    report.py   the per-leaf report, its table, and GradientCheckError
    engine.py   probing, the finite-difference stencil, the compiled JAX side
    checks.py   the public checks: check_gradients, check_layer
"""

from purenet.check.checks import check_gradients, check_layer
from purenet.check.report import Discrepancy, GradientCheckError, GradientReport, LeafCheck

__all__ = [
    "Discrepancy",
    "GradientCheckError",
    "GradientReport",
    "LeafCheck",
    "check_gradients",
    "check_layer",
]
