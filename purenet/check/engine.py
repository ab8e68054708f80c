"""The comparison engine of the derivative checks: probing, the stencil, the compiled JAX side.

Three gradients of one scalar, compared leaf by leaf:

* **JAX**: ``jax.grad`` of the JAX forward, in float64.
* **reference**: the hand-derived backward in NumPy float64
  (``purenet.reference``), which never calls JAX's autodiff.
* **finite differences (FD)**: the fourth-order central stencil

      f'(theta; v) ~ [f(theta - 2h v) - 8 f(theta - h v) + 8 f(theta + h v) - f(theta + 2h v)] / (12 h)

  on the JAX forward in float64: along every coordinate of a small leaf,
  along random unit directions v of a large one (a wrong entry anywhere
  changes <g, v> for almost every v).  Its truncation error is O(h^4), so
  with h = 1e-5 rounding (~1e-11 |f| / h) dominates and 1e-6 is a safe
  relative tolerance.

For each leaf, each pair passes when ``abs <= atol + rtol * scale``, scale
being the largest |entry| of JAX's gradient for entrywise comparisons and
the gradient's norm for directional ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.check.report import Discrepancy, GradientCheckError, GradientReport, LeafCheck
from purenet.compiled import cached
from purenet.core import ConfigError
from purenet.validate import DataError, require_number

STENCIL = ((-2.0, 1.0), (-1.0, -8.0), (1.0, 8.0), (2.0, -1.0))  # (step multiple, weight / 12h)


def _compare(a: np.ndarray, b: np.ndarray, scale: float, rtol: float, atol: float, label) -> Discrepancy:
    """The worst |a - b| over a leaf, relative to ``scale``, and whether it is within tolerance."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if diff.size == 0:
        return Discrepancy(0.0, 0.0, "-", True)
    worst = int(np.argmax(diff))
    abs_error = float(diff.flat[worst])
    if not np.isfinite(abs_error):
        return Discrepancy(abs_error, np.inf, label(worst), False)
    rel_error = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else np.inf)
    return Discrepancy(abs_error, rel_error, label(worst), abs_error <= atol + rtol * scale)


def _index_label(shape: tuple) -> Callable[[int], str]:
    return lambda flat: str(tuple(int(i) for i in np.unravel_index(flat, shape))) if shape else "()"


def _probe_directions(size: int, max_coordinates: int, count: int, rng: np.random.Generator):
    """Coordinate vectors for a small leaf, random unit directions for a large one."""
    if size <= max_coordinates:
        return np.eye(size), True
    directions = rng.standard_normal((count, size))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True), False


def _stencil_chunks(theta: np.ndarray, probes: list[tuple[int, np.ndarray]], eps: float) -> list[np.ndarray]:
    """Every stencil point of every probe direction, in chunks of one fixed number of rows.

    ``probes`` holds per leaf ``(offset, directions)``, each direction acting
    on ``theta[offset:offset + n]``.  A chunk is at most ~32 MB, so large
    models are evaluated in several calls of one compiled function.
    """
    rows = [
        (offset, direction, step)
        for offset, directions in probes
        for direction in directions
        for step, _ in STENCIL
    ]
    size = max(1, min(len(rows), 4_000_000 // max(1, theta.size)))
    chunks = []
    for start in range(0, max(len(rows), 1), size):
        points = np.broadcast_to(theta, (size, theta.size)).copy()
        for r, (offset, direction, step) in enumerate(rows[start : start + size]):
            points[r, offset : offset + direction.size] += step * eps * direction
        chunks.append(points)
    return chunks


def jit_for_checks(fn: Callable) -> Callable:
    """jit for a check: on CPU, skip LLVM's costly optimizations and XLA's fusion emitters.

    A check compiles each function once and runs it a few times, so for the
    small models checks are made on, compile time is nearly all the cost.
    Optimization level 0 halves it, and the older loop emitters in place of
    the fusion emitters cut it 2.7x more (0.46 to 0.17 s for a random
    network's Hessian-vector product); both leave float64 arithmetic as written.
    """
    if jax.default_backend() == "cpu":
        return jax.jit(fn, compiler_options=_cpu_check_options())
    return jax.jit(fn)


@functools.cache
def _cpu_check_options() -> dict:
    """The CPU compile options for checks, less the fusion-emitter switch where this XLA lacks it."""
    options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    try:
        jax.jit(lambda a: a + 1.0, compiler_options=options).lower(1.0).compile()
    except Exception:  # an older XLA refuses the unknown option: any failure here means "unsupported"
        del options["xla_cpu_use_fusion_emitters"]
    return options


class _JaxSide(NamedTuple):
    value: float
    outputs: Any
    grads: list[np.ndarray]
    fd: list[np.ndarray]


@cached
def _compiled_side(scalar: Callable, treedef: Any, shapes: tuple) -> tuple[Callable, Callable]:
    """The compiled JAX side of a check, built once per (scalar, tree layout) in the shared cache.

    ``scalar(args, data) -> (value, outputs)``; the point is passed flattened,
    and ``data`` (targets, a cotangent) is an argument rather than a captured
    constant, so a second check of the same model and loss compiles nothing.

    Returns:
      ``(everything, at_points)``: value, outputs, gradient and the first
      chunk of stencil values in one call; then the stencil values alone.
    """
    bounds = np.cumsum([0] + [math.prod(shape) for shape in shapes])

    def unravel(point):
        parts = [point[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
        return jax.tree_util.tree_unflatten(treedef, parts)

    def value_and_outputs(point, data):
        return scalar(unravel(point), data)

    at_points = jax.vmap(lambda point, data: value_and_outputs(point, data)[0], in_axes=(0, None))

    def everything(point, data, points):
        (value, outputs), grad = jax.value_and_grad(value_and_outputs, has_aux=True)(point, data)
        return value, outputs, grad, at_points(points, data)

    return jit_for_checks(everything), jit_for_checks(at_points)


def _jax_side(
    scalar: Callable, args: Any, data: Any, probes: list[tuple[int, np.ndarray]], eps: float
) -> _JaxSide:
    """JAX's value, outputs and gradient at ``args``, and finite differences along every probe.

    The gradient and the first chunk of stencil points are one compiled call:
    for small models compilation, not arithmetic, is what a check costs.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    shapes = tuple(tuple(np.shape(leaf)) for leaf in leaves)
    # Flattened in NumPy and unflattened inside the trace: eager JAX slicing
    # would compile one small program per leaf shape.
    theta = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)
    bounds = np.cumsum([0] + [math.prod(shape) for shape in shapes])
    everything, at_points = _compiled_side(scalar, treedef, shapes)
    chunks = _stencil_chunks(np.asarray(theta), probes, eps)
    value, outputs, grad, first = everything(theta, data, chunks[0])
    rest = [np.asarray(at_points(chunk, data)) for chunk in chunks[1:]]
    values = np.concatenate([np.asarray(first), *rest])
    weights = np.array([w for _, w in STENCIL])
    fd, cursor = [], 0
    for _, directions in probes:
        block = values[cursor : cursor + len(STENCIL) * len(directions)]
        fd.append(block.reshape(len(directions), len(STENCIL)) @ weights / (12.0 * eps))
        cursor += len(STENCIL) * len(directions)
    grad = np.asarray(grad)
    grads = [grad[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
    return _JaxSide(float(value), outputs, grads, fd)


def leaf_names(tree: Any, prefix: str) -> list[str]:
    return [prefix + jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """How a check probes and what it tolerates (the public checks' keyword arguments).

    Attributes:
      reference_rtol: tolerance of the reference against JAX, relative to
        the leaf's scale.
      fd_rtol: tolerance of finite differences against either, relative
        (the checks' ``rtol``).
      atol: absolute floor of the FD comparisons, times max(1, |J|), for
        leaves whose gradient is ~0; the reference comparison's floor is
        1e-4 of it times the largest gradient entry (not |J|), since the
        reference and JAX differ only by rounding.
      eps: the finite-difference step h.
      max_coordinates: leaves with at most this many entries are probed
        coordinate by coordinate; larger ones along ``directions`` random
        unit directions.
      directions: the number of random directions for a large leaf.
      seed: seeds the random directions.
    """

    reference_rtol: float
    fd_rtol: float
    atol: float
    eps: float
    max_coordinates: int
    directions: int
    seed: int


def tolerances(subject: str, *values: Any) -> Tolerances:
    """``Tolerances(*values)`` after refusing, naming ``subject``, a value that would make the check lie.

    A step of 0 or NaN gives NaN differences, a negative tolerance fails
    everything, and probing no coordinate and no direction checks nothing.
    """
    tol = Tolerances(*values)
    for field in ("reference_rtol", "fd_rtol", "atol"):
        require_number(subject, _ARGUMENT.get(field, field), getattr(tol, field), low=0.0)
    require_number(subject, "eps", tol.eps, low=0.0, low_open=True, high=1.0)
    for field, most in (("max_coordinates", 10**6), ("directions", 10**4), ("seed", 2**63 - 1)):
        require_number(subject, field, getattr(tol, field), low=0, high=most, integer=True)
    if tol.max_coordinates == 0 and tol.directions == 0:
        raise ConfigError(
            subject, "max_coordinates=0 and directions=0 probe nothing: a check of nothing cannot pass"
        )
    return tol


_ARGUMENT = {"fd_rtol": "rtol"}  # the public keyword of each field, for the message


def _compare_leaf(
    name: str,
    g_jax: np.ndarray,
    g_ref: np.ndarray | None,
    fd: np.ndarray,
    probe,
    floors: tuple[float, float],
    tol: Tolerances,
) -> LeafCheck:
    """The three pairwise comparisons for one leaf; ``floors``: (finite differences', the reference's)."""
    atol, reference_floor = floors
    directions, by_coordinates = probe
    shape = g_jax.shape
    scale = float(np.max(np.abs(g_jax), initial=0.0))
    if by_coordinates:
        label, fd_scale, fd_by = _index_label(shape), scale, f"{g_jax.size} coords"
        project = lambda g: g.reshape(-1)  # noqa: E731
    else:
        label, fd_scale, fd_by = (
            (lambda k: f"dir {k}"),
            float(np.linalg.norm(g_jax)),
            f"{len(directions)} dirs",
        )
        project = lambda g: directions @ g.reshape(-1)  # noqa: E731

    def against_fd(g):
        return _compare(fd, project(g), fd_scale, tol.fd_rtol, atol, label)

    reference_vs_jax = (
        None
        if g_ref is None
        else _compare(g_ref, g_jax, scale, tol.reference_rtol, reference_floor, _index_label(shape))
    )
    return LeafCheck(
        name,
        tuple(shape),
        scale,
        fd_by,
        reference_vs_jax,
        against_fd(g_jax),
        None if g_ref is None else against_fd(g_ref),
    )


def three_way(
    subject: str,
    scalar: Callable[[Any, Any], tuple[jax.Array, Any]],
    args: Any,
    data: Any,
    names: list[str],
    reference: tuple[Any, Any] | None,
    margin: float,
    tol: Tolerances,
) -> GradientReport:
    """Compare jax.grad of ``scalar`` at ``args`` with the reference and with finite differences.

    Args:
      scalar: ``(args, data) -> (value, outputs)`` in JAX; a function the
        caller keeps (``purenet.compiled.cached``), so its compilation is reused.
      data: the arrays ``scalar`` needs besides ``args`` (targets, a cotangent).
      reference: ``(gradient tree like args, reference outputs)``, or None;
        the outputs may be None where there is no reference forward.  Its
        tree was checked against ``args`` (``check_like``) before this.
    """
    leaves = jax.tree_util.tree_leaves(args)
    rng = np.random.default_rng(tol.seed)
    probes = [_probe_directions(np.size(leaf), tol.max_coordinates, tol.directions, rng) for leaf in leaves]
    offsets = np.cumsum([0] + [np.size(leaf) for leaf in leaves])[:-1]
    jax_side = _jax_side(scalar, args, data, [(int(o), d) for o, (d, _) in zip(offsets, probes)], tol.eps)
    if not np.isfinite(jax_side.value):
        raise DataError(
            subject, f"the checked value is {jax_side.value} at this point: there is nothing to compare"
        )
    ref_leaves, forward_error = [None] * len(leaves), None
    if reference is not None:
        ref_grads, ref_outputs = reference
        ref_leaves = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(ref_grads)]
        if ref_outputs is not None:
            forward_error = _relative_difference(ref_outputs, jax_side.outputs)
    atol = tol.atol * max(1.0, abs(jax_side.value))
    # The reference and JAX differ only by rounding, so their floor scales with the gradient itself:
    # a floor scaled by |J| would pass any gradient far smaller than J (or than a constant added to J).
    gradient_scale = max((float(np.max(np.abs(g), initial=0.0)) for g in jax_side.grads), default=0.0)
    reference_floor = tol.atol * 1e-4 * gradient_scale
    checks = tuple(
        _compare_leaf(name, g_jax, g_ref, fd, probe, (atol, reference_floor), tol)
        for name, g_jax, g_ref, fd, probe in zip(names, jax_side.grads, ref_leaves, jax_side.fd, probes)
    )
    return GradientReport(
        subject,
        jax_side.value,
        forward_error,
        margin,
        checks,
        tol.reference_rtol,
        tol.fd_rtol,
        tol.atol,
        tol.eps,
    )


def _relative_difference(a: Any, b: Any) -> float:
    """max |a - b| over all leaves, relative to max |b| (at least 1e-300)."""
    a_leaves, b_leaves = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    worst = max(
        (
            float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
            for x, y in zip(a_leaves, b_leaves)
        ),
        default=0.0,
    )
    scale = max((float(np.max(np.abs(np.asarray(y)), initial=0.0)) for y in b_leaves), default=0.0)
    return worst / max(scale, 1e-300)


def finish(report: GradientReport, raise_on_failure: bool) -> GradientReport:
    if raise_on_failure and not report.passed:
        raise GradientCheckError(report)
    return report


__all__ = ["STENCIL", "Tolerances", "finish", "leaf_names", "three_way"]
