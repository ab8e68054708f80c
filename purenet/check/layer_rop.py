"""``check_layer(..., second_order=True)``: one layer's hand-derived R-passes, three ways.

At a random point (params, x), direction (v, R{x}) and cotangents
(g, R{g}), a layer's ``rop`` (Pearlmutter 1994; ``purenet.Reference``) gives

    R{y}                      the R-forward
    R{g_params}, R{g_x}       the R-backward's second lane

and each is compared, entry by entry, with

* **JAX**: ``jax.jvp`` of ``apply`` along (v, R{x}); ``jax.jvp`` of
  ``jax.vjp`` of ``apply`` along (v, R{x}, R{g});
* **finite differences**: the 4-point central stencil along the unit
  direction (v, R{x}) / |(v, R{x})| of the reference's own forward (for
  R{y}) and of its first lane fed g, plus that first lane fed R{g} (the
  pullback is linear in its cotangent).

The first lane itself, (g_params, g_x), and y are compared with JAX as the
forward is (``forward_error``).  A wrong R-pass inside a combinator is
located at its node (``purenet.check.locate_rop``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.check.checks import (
    _conclude,
    _layer_kink_margin,
    _layer_point,
    _projection_scalar,
    _require_finite_point,
    _require_layer,
)
from purenet.check.engine import _relative_difference, finish, jit_for_checks, leaf_names, tolerances
from purenet.check.locate_rop import locate_in_layer_rop
from purenet.check.report import GradientReport
from purenet.check.second_order import largest, leaf_checks, norm, stencil
from purenet.compiled import cached
from purenet.core import ConfigError, Layer, MissingReferenceError, Reference
from purenet.reference import checked_r_pullback


def check_layer_rop(
    layer: Layer,
    input_shape: Any,
    rop: Callable | None,
    params: Any,
    x: Any,
    tolerance: tuple[float, float, float, float],
    seed: int,
    raise_on_failure: bool,
) -> GradientReport:
    """Check ``rop`` (the layer's own when None) at a seeded random point (module docstring).

    ``tolerance`` is ``(reference_rtol, rtol, atol, eps)`` as ``check_hvp`` takes them.
    """
    subject = _require_layer("check_layer", layer).replace("check_layer", "check_layer[second order]", 1)
    reference = _second_order_reference(layer, rop)
    tol = tolerances(subject, *tolerance, 0, 1, seed)
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        params64, x64, g = _layer_point(layer, input_shape, params, x, seed, rng)
        _require_finite_point(subject, params64, x64)
        if not any(np.size(leaf) for leaf in jax.tree_util.tree_leaves(x64)):
            raise ConfigError(subject, "x holds no entries: a check of nothing cannot pass")
        v, r_x, r_g = (
            jax.tree_util.tree_map(lambda a: rng.standard_normal(np.shape(a)), t) for t in (params64, x64, g)
        )
        point = (params64, x64, v, r_x, g, r_g)
        ours = _reference_side(layer, reference, point)
        theirs = _jax_side(layer)(*point)
        fd = _fd_side(layer, reference, point, tol.eps)
        names = (
            leaf_names(theirs[1], "R{y}") + leaf_names(params64, "R{g_params}") + leaf_names(x64, "R{g_x}")
        )
        ours_r, theirs_r = (ours[1], *ours[3]), (theirs[1], *theirs[3])
        scales = (largest(theirs_r), largest(theirs[2]) * norm((v, r_x)))
        flat = lambda tree: jax.tree_util.tree_leaves(tree)  # noqa: E731
        checks = leaf_checks(names, flat(theirs_r), flat(ours_r), flat(fd), scales, tol)
        report = GradientReport(
            subject,
            0.0,
            _relative_difference((ours[0], ours[2]), (theirs[0], theirs[2])),
            _layer_kink_margin(layer, params64, x64),
            checks,
            tol.reference_rtol,
            tol.fd_rtol,
            tol.atol,
            tol.eps,
            quantity="R-pass",
        )
        locate = (lambda: locate_in_layer_rop(layer, *point)) if rop is None else (lambda: [])
        report = _conclude(report, locate, _projection_scalar(layer), (params64, x64), g)
    return finish(report, raise_on_failure)


def _second_order_reference(layer: Layer, rop: Callable | None) -> Reference:
    """A Reference whose ``rop`` is the one to check: the given one, or the layer's own."""
    if rop is not None:
        return Reference(_no_first_order, rop=rop)
    if layer.reference is None or layer.reference.rop is None:
        raise MissingReferenceError(
            layer.name,
            "has no R-pass to check; pass check_layer(layer, second_order=True, rop=...), or build the "
            "layer with reference=Reference(forward, rop=rop)",
        )
    return layer.reference


def _no_first_order(*args):
    raise MissingReferenceError("check_layer", "a check of a given rop runs its R-pass only")


def _reference_side(layer: Layer, reference: Reference, point: tuple) -> tuple:
    """(y, R{y}, (g_params, g_x), (R{g_params}, R{g_x})) by the hand-derived R-pass."""
    params, x, v, r_x, g, r_g = point
    y, r_y, pullback = reference.run_rop(params, x, v, r_x, owner=layer.name)
    grads, r_grads = checked_r_pullback(layer.name, params, x, pullback)(g, r_g)
    return y, r_y, grads, r_grads


@cached
def _jax_side(layer: Layer) -> Callable:
    """``point -> (y, R{y}, (g_params, g_x), (R{g_params}, R{g_x}))`` by JAX, compiled once per layer."""

    def apply(params, x):
        return layer.apply(params, x)

    def sides(params, x, v, r_x, g, r_g):
        y, r_y = jax.jvp(apply, (params, x), (v, r_x))

        def pullback(p, inputs, cotangent):
            return jax.vjp(apply, p, inputs)[1](cotangent)

        grads, r_grads = jax.jvp(pullback, (params, x, g), (v, r_x, r_g))
        return y, r_y, grads, r_grads

    return jit_for_checks(sides)


def _fd_side(layer: Layer, reference: Reference, point: tuple, h: float) -> tuple:
    """(R{y}, R{g_params}, R{g_x}) by central differences of the reference's first lane (module docstring)."""
    params, x, v, r_x, g, r_g = point
    length = norm((v, r_x))
    unit_v, unit_x = (jax.tree_util.tree_map(lambda a: a / max(length, 1e-300), t) for t in (v, r_x))

    def at(t):
        moved_p = jax.tree_util.tree_map(lambda a, d: a + t * d, params, unit_v)
        moved_x = jax.tree_util.tree_map(lambda a, d: a + t * d, x, unit_x)
        y, _, pullback = reference.run_rop(moved_p, moved_x, v, r_x, owner=layer.name)
        return y, pullback(g, r_g)[0]

    y_rate, grads_rate = stencil(at, h)
    _, _, pullback = reference.run_rop(params, x, v, r_x, owner=layer.name)
    along_r_g = pullback(r_g, r_g)[0]  # the first lane fed R{g}: the pullback is linear in its cotangent
    r_grads = jax.tree_util.tree_map(lambda a, b: length * a + b, grads_rate, along_r_g)
    return jax.tree_util.tree_map(lambda a: length * a, y_rate), *r_grads


__all__ = ["check_layer_rop"]
