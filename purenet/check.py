"""Derivative verification: JAX autodiff against the hand-derived reference and finite differences.

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

For each leaf the check reports, for each pair, the largest absolute error,
that error relative to the leaf's scale (the largest |entry| of JAX's
gradient for entrywise comparisons, the gradient's norm for directional
ones), and where it occurred.  A pair passes when
``abs <= atol + rtol * scale``.  Everything runs at float64 copies of the
params and inputs, whether or not the caller enabled float64 globally.

Finite differences are meaningless across a kink (a ReLU at 0, a maxout
tie), so the report also gives the point's distance to the nearest kink;
when a finite-difference comparison fails that close to one, the error says
so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import Layer, MissingReferenceError, PurenetError, as_float64, is_shape
from purenet.losses import LossReference, loss_reference, penalty_reference
from purenet.reference import kink_margin, reference_gradient

_STENCIL = ((-2.0, 1.0), (-1.0, -8.0), (1.0, 8.0), (2.0, -1.0))  # (step multiple, weight / 12h)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


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

    @property
    def forward_passed(self) -> bool:
        return self.forward_error is None or self.forward_error <= self.reference_rtol

    @property
    def passed(self) -> bool:
        return self.forward_passed and all(leaf.passed for leaf in self.leaves)

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
            "no reference forward"
            if self.forward_error is None
            else f"{self.forward_error:.1e} relative" + ("" if self.forward_passed else "  FAIL")
        )
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
            f"FD rtol {self.fd_rtol:g}, atol {self.atol:g}; "
            + ("PASSED" if self.passed else f"FAILED on {len(self.failures)} of {len(self.leaves)} leaves"),
        ]
        return "\n".join(lines)


class GradientCheckError(PurenetError, AssertionError):
    """A gradient check found gradients that disagree; ``error.report`` holds the table."""

    def __init__(self, report: GradientReport):
        message = f"gradients disagree beyond tolerance\n{report}"
        if not np.isinf(report.kink_margin) and report.kink_margin < 1e3 * report.eps:
            message += (
                f"\nnote: this point lies {report.kink_margin:.1e} from a kink, within reach of "
                "the FD stencil, which then straddles it; FD errors there are not evidence of a "
                "wrong derivative: move the point or shrink eps"
            )
        super().__init__(report.subject, message)
        self.report = report


# --------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------


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
        for step, _ in _STENCIL
    ]
    size = max(1, min(len(rows), 4_000_000 // max(1, theta.size)))
    chunks = []
    for start in range(0, max(len(rows), 1), size):
        points = np.broadcast_to(theta, (size, theta.size)).copy()
        for r, (offset, direction, step) in enumerate(rows[start : start + size]):
            points[r, offset : offset + direction.size] += step * eps * direction
        chunks.append(points)
    return chunks


def _jit(fn: Callable) -> Callable:
    """jit for a one-off check: on CPU, skip LLVM's costly optimizations.

    A check compiles each function once and runs it a few times, so for the
    small models checks are made on, compile time is nearly all the cost;
    optimization level 0 halves it and leaves float64 arithmetic as written.
    """
    if jax.default_backend() == "cpu":
        return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})
    return jax.jit(fn)


class _JaxSide(NamedTuple):
    value: float
    outputs: Any
    grads: list[np.ndarray]
    fd: list[np.ndarray]


def _jax_side(scalar: Callable, args: Any, probes: list[tuple[int, np.ndarray]], eps: float) -> _JaxSide:
    """JAX's value, outputs and gradient at ``args``, and finite differences along every probe.

    The gradient and the first chunk of stencil points are one compiled call:
    for small models compilation, not arithmetic, is what a check costs.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    shapes = [np.shape(leaf) for leaf in leaves]
    # Flattened in NumPy and unflattened inside the trace: eager JAX slicing
    # would compile one small program per leaf shape.
    theta = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)
    bounds = np.cumsum([0] + [int(np.prod(shape)) for shape in shapes])

    def unravel(point):
        parts = [point[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
        return jax.tree_util.tree_unflatten(treedef, parts)

    value_and_outputs = lambda point: scalar(unravel(point))  # noqa: E731
    at_points = jax.vmap(lambda point: value_and_outputs(point)[0])

    def everything(point, points):
        (value, outputs), grad = jax.value_and_grad(value_and_outputs, has_aux=True)(point)
        return value, outputs, grad, at_points(points)

    chunks = _stencil_chunks(np.asarray(theta), probes, eps)
    value, outputs, grad, first = _jit(everything)(theta, chunks[0])
    evaluate = _jit(at_points)
    rest = [np.asarray(evaluate(chunk)) for chunk in chunks[1:]]
    values = np.concatenate([np.asarray(first), *rest])
    weights = np.array([w for _, w in _STENCIL])
    fd, cursor = [], 0
    for _, directions in probes:
        block = values[cursor : cursor + len(_STENCIL) * len(directions)]
        fd.append(block.reshape(len(directions), len(_STENCIL)) @ weights / (12.0 * eps))
        cursor += len(_STENCIL) * len(directions)
    grad = np.asarray(grad)
    grads = [grad[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]
    return _JaxSide(float(value), outputs, grads, fd)


def _leaf_names(tree: Any, prefix: str) -> list[str]:
    return [prefix + jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@dataclasses.dataclass(frozen=True)
class _Tolerances:
    reference_rtol: float
    fd_rtol: float
    atol: float
    eps: float
    max_coordinates: int
    directions: int
    seed: int


def _compare_leaf(
    name: str,
    g_jax: np.ndarray,
    g_ref: np.ndarray | None,
    fd: np.ndarray,
    probe,
    atol: float,
    tol: _Tolerances,
) -> LeafCheck:
    """The three pairwise comparisons for one leaf."""
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

    # The reference and JAX differ only by rounding, hence a much smaller floor.
    reference_vs_jax = (
        None
        if g_ref is None
        else _compare(g_ref, g_jax, scale, tol.reference_rtol, atol * 1e-4, _index_label(shape))
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


def _three_way(
    subject: str,
    scalar: Callable[[Any], tuple[jax.Array, Any]],
    args: Any,
    names: list[str],
    reference: tuple[Any, Any] | None,
    margin: float,
    tol: _Tolerances,
) -> GradientReport:
    """Compare jax.grad of ``scalar`` at ``args`` with the reference and with finite differences.

    Args:
      scalar: ``args -> (value, outputs)`` in JAX.
      reference: ``(gradient tree like args, reference outputs)``, or None;
        the outputs may be None where there is no reference forward.
    """
    leaves = jax.tree_util.tree_leaves(args)
    rng = np.random.default_rng(tol.seed)
    probes = [_probe_directions(np.size(leaf), tol.max_coordinates, tol.directions, rng) for leaf in leaves]
    offsets = np.cumsum([0] + [np.size(leaf) for leaf in leaves])[:-1]
    jax_side = _jax_side(scalar, args, [(int(o), d) for o, (d, _) in zip(offsets, probes)], tol.eps)
    ref_leaves, forward_error = [None] * len(leaves), None
    if reference is not None:
        ref_grads, ref_outputs = reference
        ref_leaves = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(ref_grads)]
        shapes = [np.shape(leaf) for leaf in leaves]
        if [g.shape for g in ref_leaves] != shapes:
            raise PurenetError(
                subject,
                f"the reference gradient has leaves of shapes {[g.shape for g in ref_leaves]}, "
                f"expected {shapes} like ({', '.join(names)})",
            )
        if ref_outputs is not None:
            forward_error = _relative_difference(ref_outputs, jax_side.outputs)
    atol = tol.atol * max(1.0, abs(jax_side.value))
    checks = tuple(
        _compare_leaf(name, g_jax, g_ref, fd, probe, atol, tol)
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


def _finish(report: GradientReport, raise_on_failure: bool) -> GradientReport:
    if raise_on_failure and not report.passed:
        raise GradientCheckError(report)
    return report


# --------------------------------------------------------------------------
# The public checks
# --------------------------------------------------------------------------


def check_gradients(
    model: Layer,
    params: Any,
    x: Any,
    targets: Any,
    loss: Callable,
    *,
    regularizer: Any = None,
    reference_loss: LossReference | None = None,
    reference: bool = True,
    reference_rtol: float = 1e-10,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    eps: float = 1e-5,
    max_coordinates: int = 64,
    directions: int = 16,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientReport:
    """Check the gradient of J = loss(model(x), targets) (+ regularizer(params)) three ways.

    Compares, for every parameter leaf and the input x: ``jax.grad``, the
    hand-derived reference backprop and finite differences, all in float64
    (module docstring).  The model runs with ``train=False`` (no dropout).

    Args:
      model, params: the network and its params (any float dtype; checked
        at float64 copies).
      x, targets: one batch of inputs and targets.
      loss: a purenet loss, or your own with ``reference_loss``.
      regularizer: ``None``, or a penalty such as ``L2Penalty(1e-4)``.
      reference_loss: the ``LossReference`` of a loss that is not purenet's.
      reference: compare with the hand-derived reference; ``False`` compares
        JAX with finite differences only (for a model with a layer of your
        own that has no ``bprop`` yet).
      reference_rtol: tolerance of the reference against JAX, relative to
        the leaf's scale.
      rtol: tolerance of finite differences against either, relative.
      atol: absolute floor of the FD comparisons, times max(1, |J|), for
        leaves whose gradient is ~0; the reference comparison uses 1e-4 of
        it, since the reference and JAX differ only by rounding.
      eps: the finite-difference step h.
      max_coordinates: leaves with at most this many entries are probed
        coordinate by coordinate; larger ones along ``directions`` random
        unit directions.
      seed: seeds the random directions.
      raise_on_failure: raise ``GradientCheckError`` (carrying the report)
        when a tolerance is exceeded; ``False`` only returns the report.

    Returns:
      A ``GradientReport``; ``print(report)`` shows the table.
    """
    subject = f"check_gradients({model.name})"
    tol = _Tolerances(reference_rtol, rtol, atol, eps, max_coordinates, directions, seed)
    loss_ref = reference_loss if reference_loss is not None else loss
    with jax.enable_x64(True):
        params64, x64, targets64 = as_float64(params), as_float64(x), as_float64(targets)

        def cost(args):
            p, inputs = args
            outputs = model.apply(p, inputs)
            value = loss(outputs, targets64)
            return (value if regularizer is None else value + regularizer(p)), outputs

        reference_side, margin = None, np.inf
        if reference:
            result = reference_gradient(model, params64, x64, targets64, loss_ref, regularizer)
            reference_side = ((result.g_params, result.g_x), result.outputs)
            margin = kink_margin(model, params64, x64)
            kinks_of_loss = loss_reference(loss_ref).kinks
            if kinks_of_loss is not None:
                margin = min(margin, kinks_of_loss(result.outputs, targets64))
            if hasattr(regularizer, "kinks"):
                margin = min(margin, regularizer.kinks(params64))
        elif regularizer is not None:
            penalty_reference(regularizer)  # the same error as with a reference, early
        names = _leaf_names(params64, "params") + _leaf_names(x64, "x")
        report = _three_way(subject, cost, (params64, x64), names, reference_side, margin, tol)
    return _finish(report, raise_on_failure)


def _example_input(input_shape: Any, rng: np.random.Generator) -> Any:
    """A standard normal input of ``input_shape`` (a tuple of shapes gives a tuple of inputs)."""
    if is_shape(input_shape):
        return rng.standard_normal(tuple(2 if d in (-1, None) else d for d in input_shape))
    return tuple(_example_input(shape, rng) for shape in input_shape)


def check_layer(
    layer: Layer,
    input_shape: Any = (4, 3),
    *,
    bprop: Callable | None = None,
    np_apply: Callable | None = None,
    params: Any = None,
    x: Any = None,
    reference_rtol: float = 1e-10,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    eps: float = 1e-5,
    max_coordinates: int = 64,
    directions: int = 16,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientReport:
    """Check a layer's hand-derived backward against ``jax.grad`` and finite differences.

    Write the forward in ``jax.numpy`` (``layer.apply``) and the backward in
    NumPy, ``bprop(params, x, g_out) -> (g_params, g_x)``; this checks the
    vector-Jacobian product it computes for a random cotangent g_out, i.e. the
    gradient of the scalar  s(params, x) = sum(apply(params, x) * g_out).

    Args:
      layer: the layer; its ``bprop`` and ``np_apply`` are used unless given.
      input_shape: the input's shape (a batch axis of -1 becomes 2), used to
        initialize params and draw x when they are not given.
      bprop: the backward to check (default ``layer.bprop``).
      np_apply: its NumPy forward, compared with ``apply`` when given (default
        ``layer.np_apply``, which may be ``None``).
      params, x: the point to check at (default: ``layer.init`` with
        ``PRNGKey(seed)``, and standard normal x).
      The rest: as for ``check_gradients``.

    Returns:
      A ``GradientReport``; raises ``GradientCheckError`` on a wrong backward.
    """
    bprop = layer.bprop if bprop is None else bprop
    np_apply = layer.np_apply if np_apply is None else np_apply
    if bprop is None:
        raise MissingReferenceError(layer.name, "has no bprop to check; pass check_layer(layer, bprop=...)")
    subject = f"check_layer({layer.name})"
    tol = _Tolerances(reference_rtol, rtol, atol, eps, max_coordinates, directions, seed)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x64 = as_float64(_example_input(input_shape, rng) if x is None else x)
        if params is None:
            shape = jax.tree_util.tree_map(np.shape, x64)
            params = layer.init(jax.random.PRNGKey(seed), shape)[1]
        params64 = as_float64(params)
        # Only the output's shapes are needed here; the compiled check runs the forward.
        outputs = jax.eval_shape(layer.apply, params64, x64)
        g_out = jax.tree_util.tree_map(lambda y: rng.standard_normal(y.shape), outputs)

        def scalar(args):
            p, inputs = args
            y = layer.apply(p, inputs)
            products = jax.tree_util.tree_map(lambda y_i, g_i: jnp.sum(y_i * g_i), y, g_out)
            return sum(jax.tree_util.tree_leaves(products)), y

        ref_outputs = None if np_apply is None else np_apply(params64, x64)
        reference_side = (tuple(bprop(params64, x64, g_out)), ref_outputs)
        margin = np.inf if layer.kinks is None else float(layer.kinks(params64, x64))
        names = _leaf_names(params64, "params") + _leaf_names(x64, "x")
        report = _three_way(subject, scalar, (params64, x64), names, reference_side, margin, tol)
    return _finish(report, raise_on_failure)


__all__ = [
    "Discrepancy",
    "GradientCheckError",
    "GradientReport",
    "LeafCheck",
    "check_gradients",
    "check_layer",
]
