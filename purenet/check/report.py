"""The report of a derivative check: per-leaf discrepancies, a readable table, the error.

Each leaf (a parameter array or the input) gets the three pairwise
comparisons (reference vs JAX, FD vs JAX, FD vs reference), each the worst
absolute error, that error relative to the leaf's scale, and where it
occurred; ``str(report)`` prints them as a table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from purenet.core import PurenetError


@dataclasses.dataclass(frozen=True)
class Discrepancy:
    """The worst disagreement between two gradients of one leaf."""

    abs_error: float
    rel_error: float
    where: str
    passed: bool

    def __str__(self) -> str:
        return f"{self.rel_error:8.1e} ({self.abs_error:7.1e} at {self.where})"


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """The three-way comparison for one leaf (a parameter array or the input).

    Attributes:
      path: ``params[0]['w']`` or ``x``.
      shape: the leaf's shape.
      scale: the largest |entry| of JAX's gradient for the leaf.
      fd_by: how finite differences probed it: ``"12 coords"`` or ``"16 dirs"``.
      reference_vs_jax, fd_vs_jax, fd_vs_reference: the discrepancies
        (the reference ones are ``None`` when no reference was compared).
    """

    path: str
    shape: tuple
    scale: float
    fd_by: str
    reference_vs_jax: Discrepancy | None
    fd_vs_jax: Discrepancy
    fd_vs_reference: Discrepancy | None

    @property
    def passed(self) -> bool:
        pairs = (self.reference_vs_jax, self.fd_vs_jax, self.fd_vs_reference)
        return all(p.passed for p in pairs if p is not None)


@dataclasses.dataclass(frozen=True)
class GradientReport:
    """What a gradient check found; ``str(report)`` is a readable table.

    Attributes:
      subject: what was checked, e.g. ``check_gradients(serial)``.
      value: the scalar whose gradient was checked (the cost J).
      forward_error: the largest difference between the reference forward
        and the JAX forward, relative to the largest |output|; ``None``
        without a reference forward.
      kink_margin: the distance of the point from the nearest kink (inf for
        a smooth function).
      leaves: one ``LeafCheck`` per parameter leaf and input.
      reference_rtol, fd_rtol, atol, eps: the tolerances and the FD step.
      value_error: the reference cost (loss and penalty) against JAX's,
        relative to max(1, |J|); ``None`` without a reference cost.
      culprits: where the derivation went wrong (``purenet.check.locate``),
        the first in the backward sweep first.
      precision: the narrower-than-float64 values the function computes
        with (``purenet.check.precision``), looked for when a check fails.
      verdict: ``passed``, ``precision``, ``forward``, ``derivation`` or
        ``finite differences``; ``headline`` says it in a sentence.
      quantity: what the leaves compare: ``"gradient"``, or for a
        second-order check ``"Hessian-vector product"`` or ``"Gauss-Newton product"``.
      first_order_error: a second-order check's reference gradient against
        ``jax.grad``, relative to its largest entry (its finite differences
        are of that gradient, so it must be right first); ``None`` otherwise.
    """

    subject: str
    value: float
    forward_error: float | None
    kink_margin: float
    leaves: tuple[LeafCheck, ...]
    reference_rtol: float
    fd_rtol: float
    atol: float
    eps: float
    value_error: float | None = None
    culprits: tuple = ()
    precision: tuple = ()
    verdict: str = ""
    headline: str = ""
    quantity: str = "gradient"
    first_order_error: float | None = None

    @property
    def forward_passed(self) -> bool:
        errors = (self.forward_error, self.value_error, self.first_order_error)
        return all(error is None or error <= self.reference_rtol for error in errors)

    @property
    def passed(self) -> bool:
        return self.forward_passed and all(leaf.passed for leaf in self.leaves)

    @property
    def culprit(self):
        """The first node the check blames (a ``purenet.check.locate.Culprit``), or None."""
        return self.culprits[0] if self.culprits else None

    @property
    def failures(self) -> list[LeafCheck]:
        return [leaf for leaf in self.leaves if not leaf.passed]

    def __str__(self) -> str:
        header = (
            "leaf",
            "shape",
            "max|grad|",
            "FD by",
            "reference vs JAX",
            "FD vs JAX",
            "FD vs reference",
            "",
        )
        rows = [
            (
                leaf.path,
                str(leaf.shape),
                f"{leaf.scale:.2e}",
                leaf.fd_by,
                "-" if leaf.reference_vs_jax is None else str(leaf.reference_vs_jax),
                str(leaf.fd_vs_jax),
                "-" if leaf.fd_vs_reference is None else str(leaf.fd_vs_reference),
                "ok" if leaf.passed else "FAIL",
            )
            for leaf in self.leaves
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        forward = (
            "no reference forward" if self.forward_error is None else f"{self.forward_error:.1e} relative"
        )
        if self.value_error is not None:
            forward += f", cost {self.value_error:.1e} relative"
        if self.first_order_error is not None:
            forward += f", gradient {self.first_order_error:.1e} relative"
        forward += "" if self.forward_passed else "  FAIL"
        margin = "none (smooth)" if np.isinf(self.kink_margin) else f"{self.kink_margin:.2e}"
        lines = [
            f"{self.subject}: value {self.value:.10g} (float64); "
            f"FD by the 4-point central stencil, step {self.eps:g}",
            f"forward, reference vs JAX: {forward}; distance to the nearest kink: {margin}",
            "each cell: relative error (absolute error at where)",
            "",
            line(header),
            "-" * (sum(widths) + 2 * (len(widths) - 1)),
            *(line(row) for row in rows),
            "",
            f"pass when |a - b| <= atol + rtol * scale: reference vs JAX rtol {self.reference_rtol:g}, "
            f"FD rtol {self.fd_rtol:g}, atol {self.atol:g}; " + self._outcome(),
        ]
        return "\n".join(lines)

    def _outcome(self) -> str:
        if self.passed:
            return "PASSED"
        plural = self.quantity + ("es" if self.quantity.endswith("s") else "s")
        failed = [f"{plural} of {len(self.failures)} of {len(self.leaves)} leaves"]
        if not self.forward_passed:
            failed.insert(0, "the forward")
        return "FAILED: " + " and ".join(failed) + (f" ({self.verdict})" if self.verdict else "")


class GradientCheckError(PurenetError, AssertionError):
    """A gradient check found gradients that disagree; ``error.report`` holds the table."""

    def __init__(self, report: GradientReport):
        message = f"{report.headline or 'gradients disagree beyond tolerance'}\n{report}"
        if not np.isinf(report.kink_margin) and report.kink_margin < 1e3 * report.eps:
            message += (
                f"\nnote: this point lies {report.kink_margin:.1e} from a kink, within reach of "
                "the FD stencil, which then straddles it; FD errors there are not evidence of a "
                "wrong derivative: move the point or shrink eps"
            )
        super().__init__(report.subject, message)
        self.report = report


__all__ = ["Discrepancy", "GradientCheckError", "GradientReport", "LeafCheck"]
