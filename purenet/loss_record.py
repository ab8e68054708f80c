"""The Loss record and the loss's hand-derived reference (first and second order).

A loss is a ``Loss``: callable like a function of ``(outputs, targets)``,
carrying its ``Reference`` built by ``LossReference`` from NumPy float64
formulas, ``value_and_grad`` and, for second order, ``hessian_vp``:

    forward(outputs, targets)          -> (L, pullback),  pullback(g) = g dL/dz
    rop(outputs, targets, R{z})        -> (L, <dL/dz, R{z}>, pullback)
        pullback(g, R{g}) = (g dL/dz,  R{g} dL/dz + g H_L R{z})

the second by the product rule on g dL/dz (Pearlmutter 1994), H_L being the
loss's Hessian in its outputs; the targets are constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.core import ConfigError, MissingReferenceError, Reference, check_like, describe_tree

# --------------------------------------------------------------------------
# The Loss record: the JAX loss, its reference, and what the trainer needs to know
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss of a network's raw outputs, carrying its hand-derived reference.

    Call it as a function, ``loss(outputs, targets) -> scalar``; it is
    hashable (by identity), so jit caches and ``fit`` key on it.

    Attributes:
      fn: the loss in ``jax.numpy``, the mean over entries.
      name: how errors and reports name it.
      reference: its ``Reference``: ``forward(outputs, targets) -> (L, pullback)``
        with ``pullback(g) = g dL/doutputs``; ``None`` for none.
      class_labels: integer targets are class indices into the outputs' last
        axis, so the output width is the number of classes (``fit`` checks
        labels against it); ``False`` for losses of real-valued targets.
    """

    fn: Callable[[jax.Array, jax.Array], jax.Array]
    name: str
    reference: Reference | None = None
    class_labels: bool = False

    def __call__(self, outputs: Any, targets: Any) -> jax.Array:
        return self.fn(outputs, targets)

    @property
    def __name__(self) -> str:
        return self.name

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.fn.__doc__

    def __repr__(self) -> str:
        return f"Loss({self.name})"


def LossReference(
    value_and_grad: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]],
    kinks: Callable[[np.ndarray, np.ndarray], float] | None = None,
    hessian_vp: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Reference:
    """A loss's ``Reference`` from NumPy formulas.

    For a loss of your own: ``Loss(my_loss, "my_loss", reference=LossReference(my_value_and_grad))``,
    or ``check_gradients(..., reference_loss=LossReference(my_value_and_grad))``.

    Args:
      value_and_grad: ``(outputs, targets) -> (L, dL/doutputs)``.
      kinks: ``(outputs, targets) -> distance`` to the nearest kink, or
        ``None`` for a smooth loss.
      hessian_vp: ``(outputs, targets, r) -> H_L r``, the loss's Hessian in
        its outputs times ``r``; given it, the reference has its R-pass
        (module docstring), for ``reference_hvp``, ``reference_ggn_vp``
        and ``check_hvp``.
    """

    for argument, function in (
        ("value_and_grad", value_and_grad),
        ("kinks", kinks),
        ("hessian_vp", hessian_vp),
    ):
        if (argument == "value_and_grad" or function is not None) and not callable(function):
            raise ConfigError(
                "LossReference", f"{argument} must be a function, got {describe_tree(function)}"
            )

    def value_and_checked_grad(outputs, targets):
        value, grad = value_and_grad(outputs, targets)
        check_like(grad, outputs, layer="LossReference", what="value_and_grad's gradient")
        return value, grad

    def forward(outputs, targets):
        value, grad = value_and_checked_grad(outputs, targets)
        return value, lambda g: g * grad

    def rop(outputs, targets, r_outputs):
        value, grad = value_and_checked_grad(outputs, targets)

        def pullback(g, r_g):
            curvature = hessian_vp(outputs, targets, r_outputs)
            check_like(curvature, outputs, layer="LossReference", what="hessian_vp's result")
            return g * grad, r_g * grad + g * curvature

        return value, np.sum(grad * r_outputs), pullback

    return Reference(forward, kinks, None if hessian_vp is None else rop)


def loss_reference(loss: Any) -> Reference:
    """The hand-derived reference a loss carries (a ``Reference`` is returned as it is)."""
    if isinstance(loss, Reference):
        return loss
    reference = getattr(loss, "reference", None)
    if isinstance(loss, Loss) and isinstance(reference, Reference):
        return reference
    name = getattr(loss, "__name__", repr(loss))
    raise MissingReferenceError(
        name,
        "has no hand-derived reference; build it as Loss(fn, name, reference=LossReference(value_and_grad)), "
        "or pass reference_loss=LossReference(value_and_grad) to the check",
    )


__all__ = ["Loss", "LossReference", "loss_reference"]
