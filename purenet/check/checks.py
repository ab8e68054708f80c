"""The public derivative checks: a network's cost (``check_gradients``) and one layer (``check_layer``).

Both compare JAX autodiff, the hand-derived reference and finite
differences leaf by leaf (``purenet.check.engine``), all in float64 copies,
whether or not the caller enabled float64 globally.  What a hand-derived
backward returns is checked like the params and the input (``check_like``)
before any number is compared.  Finite differences are meaningless across a
kink (a ReLU at 0, a maxout tie), so the report also gives the point's
distance to the nearest kink; when a finite-difference comparison fails that
close to one, the error says so.

The JAX side is compiled once per model and loss (or layer) and kept in
purenet's shared compile cache, so a second check of the same model compiles
nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.check.diagnose import diagnose
from purenet.check.engine import finish, leaf_names, three_way, tolerances
from purenet.check.locate import Culprit, locate_in_cost, locate_in_layer
from purenet.check.precision import precision_sources
from purenet.check.report import GradientReport
from purenet.compiled import cached
from purenet.core import ConfigError, InputTypeError, Layer, MissingReferenceError, Reference, check_like
from purenet.cost_reference import reference_pass
from purenet.losses import Loss, loss_reference
from purenet.penalties import penalty_reference
from purenet.reference import checked_pullback
from purenet.shapes import as_float64, is_shape, normalize_shape
from purenet.validate import require_finite


def check_gradients(
    model: Layer,
    params: Any,
    x: Any,
    targets: Any,
    loss: Callable,
    *,
    regularizer: Any = None,
    reference_loss: Reference | None = None,
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

    For every parameter leaf and the input x: ``jax.grad``, the reference
    and finite differences, in float64; the model runs with ``train=False``.

    Args:
      model: the network, a ``Layer``.
      params: its params (checked at float64 copies).
      x: one batch of inputs.
      targets: that batch's targets.
      loss: a purenet ``Loss`` (it carries its reference), or your own.
      regularizer: ``None``, or a penalty such as ``L2Penalty(1e-4)``.
      reference_loss: a loss's reference, ``LossReference(value_and_grad)``.
      reference: compare with the hand-derived reference; ``False``: JAX and
        finite differences only (a layer of your own without a reference).
      reference_rtol: tolerance of the reference against JAX, relative to
        the leaf's scale (``purenet.check.engine.Tolerances`` details each).
      rtol: tolerance of finite differences against either, relative
        (``Tolerances.fd_rtol``).
      atol: absolute floor of the finite-difference comparisons, times
        max(1, |J|), for leaves whose gradient is ~0.
      eps: the finite-difference step h.
      max_coordinates: leaves with at most this many entries are probed
        coordinate by coordinate; larger ones along random unit directions.
      directions: the number of random directions for a large leaf.
      seed: seeds the random directions.
      raise_on_failure: raise ``GradientCheckError`` (carrying the report)
        when a tolerance is exceeded; ``False`` only returns the report.

    Returns:
      A ``GradientReport``; ``print(report)`` shows the table.
    """
    subject = _require_layer("check_gradients", model)
    tol = tolerances(subject, reference_rtol, rtol, atol, eps, max_coordinates, directions, seed)
    loss_ref = reference_loss if reference_loss is not None else loss
    _require_finite_point(subject, params, x)
    with jax.enable_x64(True):
        params64, x64, targets64 = as_float64(params), as_float64(x), as_float64(targets)
        point = (model, params64, x64, targets64)
        result, reference_side, margin = _cost_reference(point, loss, loss_ref, regularizer, reference)
        names = leaf_names(params64, "params") + leaf_names(x64, "x")
        scalar = _cost_scalar(model, loss, regularizer)
        report = three_way(subject, scalar, (params64, x64), targets64, names, reference_side, margin, tol)
        if reference:
            report = dataclasses.replace(report, value_error=_value_error(result.cost, report.value))
        locate = lambda: locate_in_cost(*point, loss_ref, loss, regularizer, report.forward_passed)  # noqa: E731
        report = _conclude(report, locate if reference else None, scalar, (params64, x64), targets64)
    return finish(report, raise_on_failure)


def _cost_reference(point: tuple, loss, loss_ref, regularizer, reference: bool):
    """The reference pass over the cost: (result, (gradients, outputs), kink margin), or early refusals."""
    model, params, x, targets = point
    if not reference:
        _require_targets(model, loss, params, x, targets)
        if regularizer is not None:
            penalty_reference(regularizer)  # the same error as with a reference, early
        return None, None, np.inf
    result, network_margin = reference_pass(model, params, x, targets, loss_ref, regularizer)
    margin = _cost_kink_margin(network_margin(), params, result.outputs, targets, loss_ref, regularizer)
    return result, ((result.g_params, result.g_x), result.outputs), margin


def _value_error(reference_cost: float, jax_cost: float) -> float:
    """The reference cost (loss and penalty) against JAX's, relative to max(1, |J|)."""
    return abs(reference_cost - jax_cost) / max(1.0, abs(jax_cost))


def _conclude(
    report: GradientReport, locate: Callable | None, scalar: Callable, args, data
) -> GradientReport:
    """The report's verdict: on failure, where it went wrong and whether lost precision explains it."""
    if report.passed:
        return diagnose(report)
    culprits = () if locate is None else tuple(locate())
    sources = precision_sources(lambda a, d: scalar(a, d)[0], args, data)
    return diagnose(report, culprits, sources)


def _require_targets(model: Layer, loss: Callable, params, x, targets) -> None:
    """Without the reference pass, a purenet loss's NumPy reference still refuses bad targets by name.

    It runs on zero outputs of the model's output shape: the targets' checks
    (labels in range, BCE targets in [0, 1], shapes) depend on nothing else,
    and NumPy compiles nothing.
    """
    reference = getattr(loss, "reference", None)
    if not isinstance(loss, Loss) or reference is None:
        return
    outputs = jax.eval_shape(model.apply, params, x)
    reference.value(jax.tree_util.tree_map(lambda y: np.zeros(y.shape), outputs), targets)


def _require_finite_point(subject: str, params: Any, x: Any) -> None:
    """The point a check differentiates at: floating (it is differentiated) and finite (NaN means nothing)."""
    for argument, tree in (("params", params), ("x", x)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            dtype = getattr(leaf, "dtype", None) or np.asarray(leaf).dtype
            if not jnp.issubdtype(dtype, jnp.floating):
                where = argument + jax.tree_util.keystr(path)
                raise InputTypeError(
                    subject, f"{where} must be floating (it is differentiated), got dtype {dtype}"
                )
    require_finite(subject, "params", params)
    require_finite(subject, "x", x)


def _require_layer(check: str, layer: Any) -> str:
    """``check(layer.name)``, the subject of every message; anything but a purenet Layer refused."""
    if not isinstance(layer, Layer):
        got = getattr(layer, "__name__", type(layer).__name__)
        raise ConfigError(
            check, f"expected a purenet.Layer to check, got {got}; wrap a function with pn.Layer"
        )
    return f"{check}({layer.name})"


@cached
def _cost_scalar(model: Layer, loss: Callable, regularizer: Any) -> Callable:
    """``((params, x), targets) -> (J, outputs)``: one function object per model, loss and regularizer."""

    def cost(args, targets):
        p, inputs = args
        outputs = model.apply(p, inputs)
        value = loss(outputs, targets)
        return (value if regularizer is None else value + regularizer(p)), outputs

    return cost


def _cost_kink_margin(margin: float, params, outputs, targets, loss, regularizer) -> float:
    """The distance to the nearest kink of the network (``margin``), the loss and the penalty."""
    kinks_of_loss = loss_reference(loss).kinks
    if kinks_of_loss is not None:
        margin = min(margin, kinks_of_loss(outputs, targets))
    if regularizer is not None and penalty_reference(regularizer).kinks is not None:
        margin = min(margin, penalty_reference(regularizer).kinks(params))
    return margin


def _example_input(owner: str, input_shape: Any, rng: np.random.Generator) -> Any:
    """A standard normal input of ``input_shape`` (a tuple of shapes gives a tuple of inputs)."""
    if is_shape(input_shape):
        shape = normalize_shape(owner, input_shape)  # refuses -5, bools, an empty shape by name
        return rng.standard_normal(tuple(2 if d == -1 else d for d in shape))
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ConfigError(owner, f"input_shape must be a shape or a tuple of shapes, got {input_shape!r}")
    return tuple(_example_input(owner, shape, rng) for shape in input_shape)


def check_layer(
    layer: Layer,
    input_shape: Any = (4, 3),
    *,
    bprop: Callable | None = None,
    np_apply: Callable | None = None,
    params: Any = None,
    x: Any = None,
    second_order: bool = False,
    rop: Callable | None = None,
    reference_rtol: float = 1e-10,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    eps: float | None = None,
    max_coordinates: int = 64,
    directions: int = 16,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientReport:
    """Check a layer's hand-derived backward (or R-passes) against JAX and finite differences.

    This checks the vector-Jacobian product the backward computes for a
    random cotangent g_out: the gradient of s(params, x) = sum(apply(params, x) * g_out).

    Args:
      layer: the layer; its ``reference`` is checked unless ``bprop`` is given.
      input_shape: the input's shape (a batch axis of -1 becomes 2), used to
        initialize params and draw x when they are not given.
      bprop: a backward to check, ``bprop(params, x, g_out) -> (g_params, g_x)``,
        in place of the layer's reference.  Whatever it returns is first
        checked like ``(params, x)`` (tree, shapes, dtype kinds) with
        ``check_like``: a wrong tree is refused naming the leaf.
      np_apply: with ``bprop``, its NumPy forward, compared with ``apply``
        when given (the layer's reference forward is used otherwise).
      params: the params to check at (default: ``layer.init`` with
        ``PRNGKey(seed)``, documented and deterministic).
      x: the input to check at (default: standard normal, from ``seed``).
      second_order: check the layer's R-passes instead (its ``Reference.rop``,
        Pearlmutter's R-operator): R{y} against ``jax.jvp`` of ``apply`` and
        R{g_params}, R{g_x} against ``jax.jvp`` of ``jax.vjp``, both and
        finite differences (``purenet.check.layer_rop``).
      rop: with ``second_order``, an R-pass to check in place of the
        layer's, ``rop(params, x, v, r_x) -> (y, r_y, pullback)`` with
        ``pullback(g, r_g) -> ((g_params, g_x), (r_g_params, r_g_x))``.
      reference_rtol: as for ``check_gradients``.
      rtol: as for ``check_gradients``.
      atol: as for ``check_gradients``.
      eps: the finite-difference step; ``None`` is 1e-5 (1e-4 for second order).
      max_coordinates: as for ``check_gradients``.
      directions: as for ``check_gradients``.
      seed: as for ``check_gradients``; it also seeds the default params and x.
      raise_on_failure: as for ``check_gradients``.

    Returns:
      A ``GradientReport``; raises ``GradientCheckError`` on a wrong backward.
    """
    if _second_order(second_order, rop, bprop, np_apply):
        from purenet.check.layer_rop import check_layer_rop  # it builds on this module

        tolerance = (reference_rtol, rtol, atol, 1e-4 if eps is None else eps)
        return check_layer_rop(layer, input_shape, rop, params, x, tolerance, seed, raise_on_failure)
    eps = 1e-5 if eps is None else eps
    tolerance = (reference_rtol, rtol, atol, eps, max_coordinates, directions, seed)
    return finish(
        _check_layer_first_order(layer, input_shape, bprop, np_apply, params, x, tolerance), raise_on_failure
    )


def _check_layer_first_order(
    layer: Layer, input_shape, bprop, np_apply, params, x, tolerance: tuple
) -> GradientReport:
    """check_layer's first order: the backward (the layer's, or ``bprop``) as the gradient of <apply, g>."""
    subject = _require_layer("check_layer", layer)
    _require_something_to_check(layer, bprop)
    tol = tolerances(subject, *tolerance)
    rng = np.random.default_rng(tol.seed)
    with jax.enable_x64(True):
        params64, x64, g_out = _layer_point(layer, input_shape, params, x, tol.seed, rng)
        _require_finite_point(subject, params64, x64)
        ref_outputs, pullback = _layer_pullback(layer, bprop, np_apply, params64, x64)
        reference_side = (checked_pullback(layer.name, params64, x64, pullback)(g_out), ref_outputs)
        margin = _layer_kink_margin(layer, params64, x64)
        names = leaf_names(params64, "params") + leaf_names(x64, "x")
        scalar = _projection_scalar(layer)
        report = three_way(subject, scalar, (params64, x64), g_out, names, reference_side, margin, tol)
        locator = _layer_locator(layer, bprop, params64, x64, g_out, report)
        return _conclude(report, locator, scalar, (params64, x64), g_out)


def _second_order(second_order: Any, rop, bprop, np_apply) -> bool:
    """Whether check_layer checks the R-passes; a flag that is not a bool, or a mixed request, refused."""
    if not isinstance(second_order, bool):
        raise ConfigError("check_layer", f"second_order must be True or False, got {second_order!r}")
    wanted = second_order or rop is not None
    if wanted and (bprop is not None or np_apply is not None):
        raise ConfigError("check_layer", "a second-order check takes rop=; check bprop= in a call of its own")
    return wanted


def _require_something_to_check(layer: Layer, bprop: Callable | None) -> None:
    if bprop is None and layer.reference is None:
        raise MissingReferenceError(
            layer.name,
            "has no bprop to check; pass check_layer(layer, bprop=...), "
            "or build the layer with reference=Reference(forward)",
        )


def _layer_kink_margin(layer: Layer, params, x) -> float:
    if layer.reference is None or layer.reference.kinks is None:
        return float(np.inf)
    return float(layer.reference.kinks(params, x))


def _layer_locator(layer: Layer, bprop, params, x, g_out, report: GradientReport) -> Callable:
    """Where a layer check failed: inside its reference's graph, or, for a given bprop, the layer itself."""
    if bprop is None:
        return lambda: locate_in_layer(layer, params, x, g_out)
    if not report.forward_passed:
        return lambda: [Culprit("forward", layer.name, "params", "value", report.forward_error, "np_apply")]
    return lambda: []


def _layer_point(layer: Layer, input_shape, params, x, seed: int, rng: np.random.Generator):
    """float64 params and input to check a layer at, and a random cotangent of its output's shape."""
    x64 = as_float64(_example_input(layer.name, input_shape, rng) if x is None else x)
    if params is None:
        params = layer.init(jax.random.PRNGKey(seed), jax.tree_util.tree_map(np.shape, x64))[1]
    params64 = as_float64(params)
    # Only the output's shapes are needed here; the compiled check runs the forward.
    outputs = jax.eval_shape(layer.apply, params64, x64)
    return params64, x64, jax.tree_util.tree_map(lambda y: rng.standard_normal(y.shape), outputs)


def _layer_pullback(layer: Layer, bprop, np_apply, params, x) -> tuple[Any, Callable]:
    """The reference outputs (or None) and the pullback to check: the user's ``bprop`` or the layer's."""
    if bprop is not None:
        outputs = None
        if np_apply is not None:  # its output is compared, so it must be shaped like apply's
            outputs = np_apply(params, x)
            check_like(
                outputs, jax.eval_shape(layer.apply, params, x), layer=layer.name, what="np_apply's output"
            )
        return outputs, lambda g: bprop(params, x, g)
    return layer.reference.run(params, x, owner=layer.name)


@cached
def _projection_scalar(layer: Layer) -> Callable:
    """``((params, x), g_out) -> (sum(apply(params, x) * g_out), y)``: the VJP as a gradient."""

    def scalar(args, g_out):
        p, inputs = args
        y = layer.apply(p, inputs)
        products = jax.tree_util.tree_map(lambda y_i, g_i: jnp.sum(y_i * g_i), y, g_out)
        return sum(jax.tree_util.tree_leaves(products)), y

    return scalar


__all__ = ["check_gradients", "check_layer"]
