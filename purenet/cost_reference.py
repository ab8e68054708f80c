"""The reference over a whole cost J = L(f(x; theta), y) + lambda Omega(theta), in NumPy float64.

First order (``reference_gradient``): the network's forward, the loss's
gradient, Algorithm 6.2's backward sweep, and the penalty's gradient.

Second order, by Pearlmutter's (1994) R-operator, R{a} = d/dr a(theta + r v)
at r = 0, run beside the same passes; every layer, loss and penalty derives
its own R-pass by hand (``Reference.rop``), and ``purenet.reference``
composes them over a combinator's graph:

* ``reference_hvp``: H v.  The R-forward carries R{a} beside every
  activation a (R{x} = 0); the loss turns R{f} into R{dJ/df} = H_L R{f};
  the R-backward carries R{dJ/da} beside every gradient, its params lane
  being H v.  A few gradients' cost, exact up to rounding.
* ``reference_ggn_vp``: the generalized Gauss-Newton product
  G v = J^T H_L J v (Schraudolph 2002): the R-forward gives J v = R{f},
  the loss's Hessian H_L J v, and the first-order backward of that is
  J^T H_L J v.

Nothing here calls JAX's autodiff; batches are vectorized in NumPy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import (
    ConfigError,
    InputTypeError,
    Layer,
    Params,
    Reference,
    ShapeError,
    check_like,
    describe_tree,
    dtype_kind,
)
from purenet.loss_record import loss_reference
from purenet.penalties import penalty_reference
from purenet.reference import GraphPullback, checked_pullback, checked_r_pullback, require_reference
from purenet.shapes import as_float64
from purenet.validate import require_finite


class ReferenceResult(NamedTuple):
    """The reference pass over a network and its cost, all NumPy float64.

    Attributes:
      cost: J = L(outputs, targets) (+ lambda Omega(params)).
      outputs: the network's outputs f(x; theta).
      g_params: dJ/dparams, in the params' structure.
      g_x: dJ/dx.
    """

    cost: float
    outputs: Any
    g_params: Params
    g_x: Any


def params_template(model: Layer, x: Any) -> Params:
    """The params ``model.init`` builds for inputs like ``x`` (an array, or a tuple of them), shapes only."""
    return _init_template(model, _input_shapes(model.name, x))


def _input_shapes(owner: str, x: Any) -> Any:
    """``x``'s shapes with the batch axis as -1; anything but an array or a tuple of arrays is refused."""
    if isinstance(x, (tuple, list)):
        return tuple(_input_shapes(owner, part) for part in x)
    if not hasattr(x, "shape") and not isinstance(x, (int, float)):
        raise InputTypeError(owner, f"expected an array input (or a tuple of arrays), got {describe_tree(x)}")
    return (-1, *np.shape(x)[1:])


@functools.lru_cache(maxsize=256)
def _init_template(model: Layer, shapes: Any) -> Params:
    # Cached per model and input shapes: tracing init costs more than a small reference pass.
    return jax.eval_shape(lambda key: model.init(key, shapes)[1], jax.random.PRNGKey(0))


def reference_gradient(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Callable | Reference,
    regularizer: Any = None,
) -> ReferenceResult:
    """The gradient of J = L(model(x), y) + lambda Omega(params) by the hand-derived reference alone.

    Args:
      model: a layer whose every part carries a ``Reference``.
      params: checked against what ``model.init`` builds for ``x`` (tree,
        shapes, dtype kinds), as ``apply`` would; converted to float64.
      x: one batch of inputs; converted to float64.
      targets: that batch's targets; converted to float64.
      loss: a purenet ``Loss`` (it carries its reference), or a loss's
        ``Reference`` itself (``LossReference(value_and_grad)``).
      regularizer: ``None``, or a penalty carrying a ``Reference``
        (``purenet.L2Penalty``, ``purenet.L1Penalty``).

    Returns:
      A ``ReferenceResult``; no JAX autodiff is involved.
    """
    return reference_pass(model, params, x, targets, loss, regularizer)[0]


def reference_pass(
    model: Layer, params: Params, x: Any, targets: Any, loss: Callable | Reference, regularizer: Any = None
) -> tuple[ReferenceResult, Callable[[], float]]:
    """``reference_gradient``'s result and ``margin()``, the network's kink distance, from one forward."""
    reference = _checked_point("reference_gradient", model, params, x)
    params, x, targets = as_float64(params), as_float64(x), as_float64(targets)
    outputs, pullback = reference.run(params, x, owner=model.name)
    value, g_outputs = loss_reference(loss).value_and_grad(outputs, targets)
    check_like(g_outputs, outputs, layer=_loss_name(loss), what="the loss's gradient")
    g_params, g_x = checked_pullback(model.name, params, x, pullback)(g_outputs)
    if regularizer is not None:
        penalty, penalty_grad = penalty_reference(regularizer).value_and_grad(params)
        value = value + penalty
        g_params = jax.tree_util.tree_map(np.add, g_params, penalty_grad)
    result = ReferenceResult(float(value), outputs, g_params, g_x)
    return result, lambda: _margin(reference, pullback, params, x)


def _margin(reference: Reference, pullback: Callable, params: Params, x: Any) -> float:
    if isinstance(pullback, GraphPullback):  # read off the recorded forward: nothing runs again
        return pullback.kink_margin()
    return float(np.inf) if reference.kinks is None else float(reference.kinks(params, x))


def kink_margin(model: Layer, params: Params, x: Any) -> float:
    """How far the model's forward pass at (params, x) is from its nearest kink (inf if smooth)."""
    if model.reference is None or model.reference.kinks is None:
        return float(np.inf)
    return float(model.reference.kinks(as_float64(params), as_float64(x)))


def _checked_point(subject: str, model: Layer, params: Params, x: Any) -> Reference:
    """The model's reference, after checking the params against its init and x (floating, finite, a batch)."""
    if not isinstance(model, Layer):
        raise ConfigError(subject, f"expected a purenet.Layer, got {describe_tree(model)}")
    subject = f"{subject}({model.name})"
    reference = require_reference(model.name, model.reference)
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        if dtype_kind(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype) != "floating":
            raise InputTypeError(
                subject, f"x{jax.tree_util.keystr(path)} must be floating, got {describe_tree(leaf)}"
            )
        if np.ndim(leaf) >= 1 and np.shape(leaf)[0] == 0:
            raise ShapeError(
                subject,
                f"x{jax.tree_util.keystr(path)} is an empty batch {np.shape(leaf)}: nothing to differentiate",
            )
    check_like(params, params_template(model, x), layer=model.name)
    require_finite(subject, "params", params)
    require_finite(subject, "x", x)
    return reference


def checked_result(owner: str, what: str, result: Any, like: Any) -> Any:
    """A loss's or penalty's hand-derived result, refused by name unless shaped like ``like`` and finite."""
    check_like(result, like, layer=owner, what=what)
    require_finite(owner, what, result)
    return result


# --------------------------------------------------------------------------
# Second order: the R-operator over the cost
# --------------------------------------------------------------------------


class SecondOrderResult(NamedTuple):
    """The R-operator pass over a network and its cost, all NumPy float64.

    Attributes:
      cost: J, as ``ReferenceResult.cost``.
      outputs: f(x; theta).
      r_outputs: R{f} = J v, the outputs' derivative along v.
      g_params: dJ/dparams (``None`` for the Gauss-Newton product, which
        does not sweep the gradient itself).
      product: H v, or G v (+ the penalty's H v) for the Gauss-Newton product.
    """

    cost: float
    outputs: Any
    r_outputs: Any
    g_params: Params | None
    product: Params


def reference_hvp(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Callable | Reference,
    v: Params,
    *,
    regularizer: Any = None,
) -> Params:
    """The Hessian-vector product H v of J = L(model(x), y) + lambda Omega by the hand-derived R-operator.

    Pearlmutter's method (1994; module docstring): every layer's R-forward
    and R-backward, each derived by hand, composed as Algorithm 6.2 composes
    the backward; no JAX autodiff is involved.

    Args:
      model: as for ``reference_gradient``; every part needs a
        ``Reference`` with a ``rop`` (the built-in layers all have one).
      params: as for ``reference_gradient``.
      x: as for ``reference_gradient``.
      targets: as for ``reference_gradient``.
      loss: as for ``reference_gradient``, with a ``rop`` (the built-in
        losses all have one).
      v: the direction, a tree like ``params``.
      regularizer: as for ``reference_gradient``, with a ``rop`` (the
        built-in penalties all have one).

    Returns:
      H v in the params' structure, NumPy float64.
    """
    return second_order_pass(model, params, x, targets, loss, v, regularizer, "hessian").product


def reference_ggn_vp(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Callable | Reference,
    v: Params,
    *,
    regularizer: Any = None,
) -> Params:
    """The generalized Gauss-Newton product G v = J^T H_L J v (Schraudolph 2002) by the reference alone.

    J v comes from the hand-derived R-forward, H_L J v from the loss's own
    Hessian (``LossReference``'s ``hessian_vp``), and J^T of that from the
    first-order backward.  With a regularizer its own Hessian-vector product
    is added (lambda v on the penalized leaves for L2), the Gauss-Newton
    matrix of a cost whose penalty needs no linearization.

    Args and Returns: as for ``reference_hvp``, G v in place of H v.
    """
    return second_order_pass(model, params, x, targets, loss, v, regularizer, "ggn").product


def second_order_pass(
    model: Layer, params: Params, x: Any, targets: Any, loss: Any, v: Params, regularizer: Any, kind: str
) -> SecondOrderResult:
    """The R-operator pass behind ``reference_hvp`` (kind "hessian") and ``reference_ggn_vp`` ("ggn")."""
    subject = f"reference_{'hvp' if kind == 'hessian' else 'ggn_vp'}"
    reference = _checked_point(subject, model, params, x)
    subject = f"{subject}({model.name})"
    check_like(v, params, layer=subject, what="v")
    require_finite(subject, "v", v)
    params, x, targets, v = as_float64(params), as_float64(x), as_float64(targets), as_float64(v)
    r_x = jax.tree_util.tree_map(np.zeros_like, x)  # H is over the params: x does not move
    outputs, r_outputs, pullback = reference.run_rop(params, x, v, r_x, owner=model.name)
    pullback = checked_r_pullback(model.name, params, x, pullback)
    loss_ref = loss_reference(loss)
    owner = _loss_name(loss)
    value, _, loss_pullback = loss_ref.run_rop(outputs, targets, r_outputs, owner=owner)
    g_outputs, h_r_outputs = loss_pullback(1.0, 0.0)  # dL/df and H_L R{f}
    checked_result(owner, "the loss's gradient", g_outputs, outputs)
    checked_result(owner, "the loss's Hessian-vector product (hessian_vp)", h_r_outputs, outputs)
    if kind == "hessian":
        (g_params, _), (product, _) = pullback(g_outputs, h_r_outputs)
    else:  # J^T (H_L J v): the first lane of the sweep, fed H_L J v
        g_params, ((product, _), _) = None, pullback(h_r_outputs, np.zeros_like(h_r_outputs))
    if regularizer is not None:
        name = _loss_name(regularizer)
        penalty, _, penalty_pullback = penalty_reference(regularizer).run_rop(params, v, owner=name)
        g_penalty, h_penalty = penalty_pullback(1.0, 0.0)
        checked_result(name, "the penalty's gradient", g_penalty, params)
        checked_result(name, "the penalty's Hessian-vector product", h_penalty, params)
        value, product = value + penalty, jax.tree_util.tree_map(np.add, product, h_penalty)
        g_params = None if g_params is None else jax.tree_util.tree_map(np.add, g_params, g_penalty)
    return SecondOrderResult(float(value), outputs, r_outputs, g_params, product)


def _loss_name(loss: Any) -> str:
    """How errors name a loss or a penalty: its name, its function's, or its type's."""
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


__all__ = [
    "ReferenceResult",
    "SecondOrderResult",
    "kink_margin",
    "params_template",
    "reference_ggn_vp",
    "reference_gradient",
    "reference_hvp",
    "reference_pass",
    "second_order_pass",
]
