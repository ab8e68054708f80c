"""``check_hvp``: second-order trust, three ways, leaf by leaf (torch's gradgradcheck, and more).

A Hessian-vector product H v (or a Gauss-Newton product G v) of a network's
cost J = L(f(x; theta), y) + lambda Omega(theta) is computed three times,
all in float64:

* **JAX**: forward over reverse, ``jax.jvp`` of ``jax.grad`` (for G v:
  ``jax.linearize`` of the network, the loss's Hessian by ``jax.jvp`` of its
  ``jax.grad``, and the linear map's transpose);
* **reference**: the hand-derived R-operator (``purenet.cost_reference``),
  which never calls JAX's autodiff;
* **finite differences (FD)**: the fourth-order central stencil of the
  *reference gradient* along the unit direction u = v / |v|,

      H u ~ [g(theta - 2h u) - 8 g(theta - h u) + 8 g(theta + h u) - g(theta + 2h u)] / (12 h),

  times |v|: four first-order reference passes.  For G v the stencil runs
  twice: along u over the reference forward (J u), then over the loss's
  reference gradient along J u (H_L J u); the reference backward then gives
  J^T of that, and the penalty's gradient is differenced along u.

Every entry of every leaf is compared (no probing: all three sides are whole
vectors).  A pair passes where ``|a - b| <= atol_pair + rtol * scale``, the
scale being the leaf's largest |entry| of JAX's product; the floors scale
with the largest product entry overall (and |grad| |v|, the stencil's
rounding), since a product can be 0 exactly where the cost is piecewise
linear.  On failure, ``purenet.check.locate_rop`` walks the R-passes node by
node to say where.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.check.checks import (
    _conclude,
    _cost_kink_margin,
    _cost_scalar,
    _require_finite_point,
    _require_layer,
)
from purenet.check.engine import (
    STENCIL,
    _compare,
    _index_label,
    _relative_difference,
    finish,
    jit_for_checks,
    leaf_names,
    tolerances,
)
from purenet.check.locate import locate_in_cost
from purenet.check.locate_rop import locate_second_order
from purenet.check.report import GradientReport, LeafCheck
from purenet.compiled import cached
from purenet.core import ConfigError, Layer, Reference, check_like, describe_tree
from purenet.cost_reference import reference_pass, second_order_pass
from purenet.loss_record import loss_reference
from purenet.penalties import penalty_reference
from purenet.shapes import as_float64
from purenet.validate import require_finite

KINDS = ("hessian", "ggn")


def check_hvp(
    model: Layer,
    params: Any,
    x: Any,
    targets: Any,
    loss: Callable,
    v: Any = None,
    *,
    regularizer: Any = None,
    reference_loss: Any = None,
    kind: str = "hessian",
    reference_rtol: float = 1e-10,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    eps: float = 1e-4,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientReport:
    """Check H v (or G v) of J = loss(model(x), targets) (+ regularizer) three ways (module docstring).

    Args:
      model: as for ``check_gradients``; every part needs its R-pass
        (``Reference.rop``), as the built-in layers have.
      params: as for ``check_gradients``.
      x: as for ``check_gradients``.
      targets: as for ``check_gradients``.
      loss: as for ``check_gradients``; it needs an R-pass too, as the
        built-in losses have.
      v: the direction, a tree like ``params``; ``None`` draws a standard
        normal one from ``seed``.
      regularizer: as for ``check_gradients``; it needs an R-pass too, as
        the built-in penalties have.
      reference_loss: for a loss of your own, its ``LossReference`` (with
        ``hessian_vp``); ``loss`` is then the JAX function.
      kind: ``"hessian"`` (H v) or ``"ggn"`` (G v = J^T H_L J v, plus the
        penalty's own Hessian times v).
      reference_rtol: the reference against JAX, relative to the leaf's scale.
      rtol: finite differences against either, relative.
      atol: the absolute floor of that comparison, relative to the largest
        product entry.
      eps: the stencil's step h along the unit direction.
      seed: seeds the default ``v``.
      raise_on_failure: raise ``GradientCheckError`` on a failure.

    Returns:
      A ``GradientReport`` with one row per params leaf; on failure its
      ``culprit`` names the node whose own R-pass disagrees with JAX.
    """
    subject = _require_layer("check_hvp", model).replace("check_hvp", f"check_hvp[{_kind(kind)}]", 1)
    tol = tolerances(subject, reference_rtol, rtol, atol, eps, 0, 1, seed)
    loss_ref = _require_jax_functions(subject, loss, regularizer, reference_loss)
    _require_finite_point(subject, params, x)
    with jax.enable_x64(True):
        point = (model, as_float64(params), as_float64(x), as_float64(targets))
        v64 = _direction(subject, point[1], v, seed)
        report = _hvp_report(subject, point, (loss, loss_ref, regularizer), v64, kind, tol)
        locate = _locator(report, point, loss_ref, loss, regularizer, v64, kind)
        report = _conclude(report, locate, *_scalar(point, loss, regularizer))
    return finish(report, raise_on_failure)


def _hvp_report(subject: str, point: tuple, functions: tuple, v, kind: str, tol) -> GradientReport:
    """The three products leaf by leaf; the reference forward, cost and gradient against JAX's."""
    (model, params, x, targets), (loss, loss_ref, regularizer) = point, functions
    ours = second_order_pass(*point, loss_ref, v, regularizer, kind)
    first, network_margin = reference_pass(*point, loss_ref, regularizer)
    margin = _cost_kink_margin(network_margin(), params, first.outputs, targets, loss_ref, regularizer)
    fd = _fd_product(point, loss_ref, regularizer, v, kind, tol.eps)
    value, outputs, gradient, products = _jax_products(model, loss, regularizer)(params, x, targets, v)
    product = products[kind]
    scales = (largest(product), largest(first.g_params) * norm(v))
    return GradientReport(
        subject,
        float(value),
        _relative_difference(ours.outputs, outputs),
        margin,
        leaf_checks(leaf_names(params, "params"), product, ours.product, fd, scales, tol),
        tol.reference_rtol,
        tol.fd_rtol,
        tol.atol,
        tol.eps,
        value_error=abs(ours.cost - float(value)) / max(1.0, abs(float(value))),
        quantity="Hessian-vector product" if kind == "hessian" else "Gauss-Newton product",
        first_order_error=_relative_difference(first.g_params, gradient),
    )


def _locator(report: GradientReport, point: tuple, loss_ref, loss, regularizer, v, kind: str):
    """Where it failed: the first order first (the stencil differences its gradient), else the R-passes."""
    if report.first_order_error is not None and report.first_order_error > report.reference_rtol:
        return lambda: locate_in_cost(*point, loss_ref, loss, regularizer, False)
    return lambda: locate_second_order(*point, loss_ref, regularizer, v, kind)


def _scalar(point: tuple, loss, regularizer) -> tuple:
    """(scalar, args, data) for the precision search of a failed check."""
    model, params, x, targets = point
    return _cost_scalar(model, loss, regularizer), (params, x), targets


def _require_jax_functions(subject: str, loss: Any, regularizer: Any, reference_loss: Any) -> Any:
    """The loss's reference; the loss and the regularizer themselves must be JAX functions, not references."""
    for argument, function in (("loss", loss), ("regularizer", regularizer)):
        if function is not None and (isinstance(function, Reference) or not callable(function)):
            raise ConfigError(
                subject,
                f"{argument} must be the JAX function (a purenet Loss or penalty, or your own callable), got "
                f"{describe_tree(function)}; pass a loss's reference as reference_loss=",
            )
    if reference_loss is not None and not isinstance(reference_loss, Reference):
        raise ConfigError(
            subject, f"reference_loss must be a purenet.Reference, got {describe_tree(reference_loss)}"
        )
    return loss if reference_loss is None else reference_loss


def _kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ConfigError("check_hvp", f"kind must be 'hessian' or 'ggn', got {kind!r}")
    return kind


def _direction(subject: str, params: Any, v: Any, seed: int) -> Any:
    """``v`` checked like the params and finite, or a standard normal one drawn from ``seed``."""
    if v is None:
        rng = np.random.default_rng(seed)
        return jax.tree_util.tree_map(lambda leaf: rng.standard_normal(np.shape(leaf)), params)
    check_like(v, params, layer=subject, what="v")
    require_finite(subject, "v", v)
    return as_float64(v)


# --------------------------------------------------------------------------
# The three sides
# --------------------------------------------------------------------------


@cached
def _jax_products(model: Layer, loss: Callable, regularizer: Any) -> Callable:
    """``(params, x, targets, v) -> (J, outputs, dJ/dparams, {"hessian": H v, "ggn": G v})`` by JAX.

    Both products in one program, compiled once per model, loss and
    regularizer: a check of the other kind then compiles nothing, and for the
    small models checks run on, compiling is nearly all the cost.
    """

    def penalty(p):
        return 0.0 if regularizer is None else regularizer(p)

    def products(params, x, targets, v):
        def cost(p):
            return loss(model.apply(p, x), targets) + penalty(p)

        outputs, jvp_fn = jax.linearize(lambda p: model.apply(p, x), params)
        loss_hessian_jv = jax.jvp(jax.grad(lambda o: loss(o, targets)), (outputs,), (jvp_fn(v),))[1]
        gauss_newton = jax.linear_transpose(jvp_fn, params)(loss_hessian_jv)[0]
        if regularizer is not None:
            penalty_hv = jax.jvp(jax.grad(penalty), (params,), (v,))[1]
            gauss_newton = jax.tree_util.tree_map(lambda a, b: a + b, gauss_newton, penalty_hv)
        # forward over reverse; its primal is the cost and its gradient, so the model is traced twice in all
        (value, gradient), (_, hessian_v) = jax.jvp(jax.value_and_grad(cost), (params,), (v,))
        return value, outputs, gradient, {"hessian": hessian_v, "ggn": gauss_newton}

    return jit_for_checks(products)


def stencil(at: Callable[[float], Any], h: float) -> Any:
    """d/dt at(t) at t = 0 by the 4-point central stencil: sum_k w_k at(s_k h) / (12 h)."""
    points = [jax.tree_util.tree_map(lambda a, w=w: w * np.asarray(a), at(s * h)) for s, w in STENCIL]
    return jax.tree_util.tree_map(lambda *terms: sum(terms) / (12.0 * h), *points)


def _fd_product(point: tuple, loss: Any, regularizer: Any, v: Any, kind: str, h: float) -> Any:
    """H v or G v by central differences of the reference's first-order passes (module docstring)."""
    model, params, x, targets = point
    length = norm(v)
    if length == 0.0:
        return jax.tree_util.tree_map(np.zeros_like, params)
    unit = jax.tree_util.tree_map(lambda a: a / length, v)

    def moved(t):
        return jax.tree_util.tree_map(lambda p, u: p + t * u, params, unit)

    def scaled(tree, factor):
        return jax.tree_util.tree_map(lambda a: factor * a, tree)

    if kind == "hessian":
        gradient = lambda t: reference_pass(model, moved(t), x, targets, loss, regularizer)[0].g_params  # noqa: E731
        return scaled(stencil(gradient, h), length)
    outputs, pullback = model.reference.run(params, x, owner=model.name)
    j_u = stencil(lambda t: model.reference.value(moved(t), x), h)
    j_norm = norm(j_u)
    loss_ref = loss_reference(loss)
    if j_norm > 0.0:
        along = lambda t: loss_ref.value_and_grad(outputs + t * j_u / j_norm, targets)[1]  # noqa: E731
        product = pullback(scaled(stencil(along, h), j_norm * length))[0]
    else:
        product = jax.tree_util.tree_map(np.zeros_like, params)
    if regularizer is not None:
        penalty = penalty_reference(regularizer)
        penalty_hv = stencil(lambda t: penalty.value_and_grad(moved(t))[1], h)
        product = jax.tree_util.tree_map(lambda a, b: a + length * b, product, penalty_hv)
    return product


# --------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------


def leaf_checks(
    names: list[str], jax_side, reference, fd, scales: tuple[float, float], tol
) -> tuple[LeafCheck, ...]:
    """Every entry of every leaf, the three pairs.

    ``scales``: the largest entry of JAX's side overall, and the stencil's
    rounding scale (|grad| |v|); the floors are ``atol`` times the larger
    for finite differences, and 1e-4 ``atol`` times the first for the
    reference (a floor that grew with |grad| |v| hid a 13% slip in a leaf
    2e-12 the size of the largest).
    """
    product_scale, rounding_scale = scales
    fd_floor = tol.atol * max(product_scale, rounding_scale)
    reference_floor = 1e-4 * tol.atol * product_scale  # the reference and JAX differ by rounding alone
    checks = []
    for name, a_jax, a_ref, a_fd in zip(
        names,
        jax.tree_util.tree_leaves(jax_side),
        jax.tree_util.tree_leaves(reference),
        jax.tree_util.tree_leaves(fd),
    ):
        a_jax = np.asarray(a_jax, np.float64)
        scale, label = float(np.max(np.abs(a_jax), initial=0.0)), _index_label(a_jax.shape)
        checks.append(
            LeafCheck(
                name,
                tuple(a_jax.shape),
                scale,
                "stencil along v",
                _compare(a_ref, a_jax, scale, tol.reference_rtol, reference_floor, label),
                _compare(a_fd, a_jax, scale, tol.fd_rtol, fd_floor, label),
                _compare(a_fd, a_ref, scale, tol.fd_rtol, fd_floor, label),
            )
        )
    return tuple(checks)


def largest(tree: Any) -> float:
    return max(
        (float(np.max(np.abs(np.asarray(a)), initial=0.0)) for a in jax.tree_util.tree_leaves(tree)),
        default=0.0,
    )


def norm(tree: Any) -> float:
    """The 2-norm over every leaf, scaled by the largest entry first (1e155 and 1e-200 survive squaring)."""
    scale = largest(tree)
    if scale == 0.0 or not math.isfinite(scale):
        return scale
    return scale * math.sqrt(
        sum(float(np.sum(np.square(np.asarray(a) / scale))) for a in jax.tree_util.tree_leaves(tree))
    )


__all__ = ["KINDS", "check_hvp", "largest", "leaf_checks", "norm", "stencil"]
