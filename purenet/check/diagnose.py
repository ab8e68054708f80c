"""What a failed check means, said in one sentence: precision, forward, derivation (where), or FD.

Three gradients of one scalar (JAX, the hand-derived reference, finite
differences) let a failure be triangulated: the one that disagrees with the
other two is the wrong one.  Before that, two causes that are not a wrong
derivation are told apart: a forward that already disagrees (every gradient
downstream of it is then meaningless), and a function that computes in less
than float64 (``purenet.check.precision``), whose derivatives agree only to
the narrower dtype's rounding.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from purenet.check.precision import PrecisionSource, precision_bound
from purenet.check.report import GradientReport


def _failing(report: GradientReport) -> tuple[list[float], list[float]]:
    """Relative errors of the failing comparisons: (reference vs JAX and forward, finite differences)."""
    exact, fd = [], []
    if not report.forward_passed:
        exact += [e for e in (report.forward_error, report.value_error) if e is not None]
    for leaf in report.failures:
        if leaf.reference_vs_jax is not None and not leaf.reference_vs_jax.passed:
            exact.append(leaf.reference_vs_jax.rel_error)
        fd += [d.rel_error for d in (leaf.fd_vs_jax, leaf.fd_vs_reference) if d is not None and not d.passed]
    return exact, fd


def _explained_by_precision(report: GradientReport, sources: tuple[PrecisionSource, ...]) -> bool:
    """Whether every failing comparison is within what the narrowest source's rounding can cause.

    A rounded constant changes the function a little but leaves its finite
    differences exact, so every comparison is held to ``precision_bound``.
    A cast computes the function itself in the narrow dtype: its finite
    differences carry the forward's rounding, epsilon |J| / eps, relative to
    the gradient's scale, ten times over.
    """
    if not sources:
        return False
    bound = precision_bound(sources)
    fd_bound = bound
    casts = [source for source in sources if source.cast]
    if casts:
        epsilon = max(float(jnp.finfo(source.dtype).eps) for source in casts)
        gradient_scale = max((leaf.scale for leaf in report.leaves), default=0.0)
        noise = 10 * epsilon * max(1.0, abs(report.value)) / (report.eps * max(gradient_scale, 1e-300))
        fd_bound = max(bound, noise)
    exact, fd = _failing(report)
    return all(e <= bound for e in exact) and all(e <= fd_bound for e in fd)


def _precision_headline(report: GradientReport, sources) -> str:
    exact, fd = _failing(report)
    worst = max(exact + fd, default=0.0)
    where = "" if report.culprit is None else f" (lost in {report.culprit.name} at {report.culprit.path})"
    return (
        f"not a wrong derivation: lost precision. The function computes in less than float64: "
        f"{'; '.join(map(str, sources))}. The worst disagreement, {worst:.1e} relative{where}, is within "
        "what that precision allows. To check the derivation itself, make that value float64 (build the "
        "constant inside the function, or pass it as an argument), or loosen reference_rtol and rtol to "
        f"about {precision_bound(sources):.0e}"
    )


def _triangulate(report: GradientReport) -> tuple[str, str]:
    """The odd one out of JAX, the reference and finite differences, over the failing leaves."""
    names = ", ".join(leaf.path for leaf in report.failures[:4]) + (
        ", ..." if len(report.failures) > 4 else ""
    )
    count = f"{len(report.failures)} of {len(report.leaves)} leaves ({names})"

    def fails(attribute: str) -> bool:
        return any(getattr(leaf, attribute) is not None and not getattr(leaf, attribute).passed
                   for leaf in report.failures)  # fmt: skip

    reference, fd_jax, fd_reference = fails("reference_vs_jax"), fails("fd_vs_jax"), fails("fd_vs_reference")
    if reference and fd_reference and not fd_jax:
        return (
            "derivation",
            f"the hand-derived {report.quantity} is wrong (JAX and finite differences agree) on {count}",
        )
    if reference and fd_jax and not fd_reference:
        return "derivation", (
            f"JAX's {report.quantity} is the odd one out (the reference and finite differences agree) on "
            f"{count}: "
            "is a custom_vjp or custom_jvp rule in the JAX code wrong?"
        )
    if fd_jax and not reference and report.leaves[0].reference_vs_jax is None:
        return "derivation", (
            f"jax.grad disagrees with finite differences on {count}: a wrong custom_vjp or custom_jvp "
            "rule, or a kink (|x| at 0, a ReLU) within the stencil's reach of this point"
        )
    if reference and not fd_jax and not fd_reference:
        return "derivation", (
            f"the hand-derived {report.quantity} differs from JAX's beyond reference_rtol on {count}, "
            "by less than finite differences resolve: a derivation computed in low precision (float32?) "
            "or a small slip"
        )
    if (fd_jax or fd_reference) and not reference:
        return "finite differences", (
            f"JAX and the reference agree, finite differences do not, on {count}: a kink within the "
            "stencil's reach, or a forward too noisy for the step eps"
        )
    plural = report.quantity + ("es" if report.quantity.endswith("s") else "s")
    return "derivation", f"the three {plural} disagree pairwise on {count}"


def _only_the_first_order_failed(report: GradientReport) -> bool:
    first_order = report.first_order_error
    if first_order is None or first_order <= report.reference_rtol:
        return False
    return dataclasses.replace(report, first_order_error=None).forward_passed


def diagnose(report: GradientReport, culprits: tuple = (), sources: tuple = ()) -> GradientReport:
    """``report`` with its verdict and headline, given where it failed and what rounds below float64."""
    report = dataclasses.replace(report, culprits=tuple(culprits), precision=tuple(sources))
    if report.passed:
        return dataclasses.replace(report, verdict="passed", headline="PASSED")
    if _explained_by_precision(report, report.precision):
        verdict, headline = "precision", _precision_headline(report, report.precision)
    elif _only_the_first_order_failed(report):
        verdict = "derivation"
        headline = (
            f"the first-order reference gradient differs from jax.grad by {report.first_order_error:.1e} "
            f"relative, so the {report.quantity}'s finite differences (of that gradient) mean nothing"
            + (f": {report.culprit}" if report.culprit is not None else "")
        )
    elif not report.forward_passed:
        verdict = "forward"
        headline = "the reference forward disagrees with JAX" + (
            f": {report.culprit}" if report.culprit is not None else ""
        )
    elif report.culprit is not None:
        verdict = "derivation"
        headline = f"{report.culprit} ({len(report.failures)} of {len(report.leaves)} leaves fail)"
        if len(report.culprits) > 1:
            headline += "; also disagreeing: " + "; ".join(str(c) for c in report.culprits[1:3])
    else:
        verdict, headline = _triangulate(report)
    return dataclasses.replace(report, verdict=verdict, headline=headline)


__all__ = ["diagnose"]
