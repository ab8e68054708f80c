"""What a loss accepts: its outputs and targets, checked by name (issue "no silent wrong answers").

A loss must never answer NaN for an empty batch, wrap a label of -1 round to
the last class, read a target of 5 as a probability, or drop the imaginary
part of complex targets.  The JAX losses check shapes and dtypes at trace
time and values through ``purenet.validate`` (eagerly, or compiled in by
``pn.checked``); the NumPy references, which always hold concrete values,
refuse the same values the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import InputTypeError, ShapeError, describe_tree, dtype_kind
from purenet.shapes import check_input
from purenet.validate import (
    require_class_labels,
    require_distributions,
    require_finite,
    require_in_interval,
    require_nonempty,
)


def loss_outputs(loss: str, outputs: Any) -> jax.Array:
    """A loss's outputs: a floating array (not complex) with at least one entry.

    An empty batch has no mean: refused at trace time rather than answered NaN.
    """
    outputs = check_input(loss, outputs)
    require_nonempty(loss, "outputs", outputs)
    return outputs


def as_targets(loss: str, targets: Any) -> jax.Array:
    """Targets as a real numeric array: complex values (whose imaginary part a loss would drop) refused."""
    refused = InputTypeError(loss, f"expected real numeric targets, got {describe_tree(targets)}")
    if targets is None or isinstance(targets, (str, bytes, dict)):
        raise refused
    try:
        targets = jnp.asarray(targets)
    except (TypeError, ValueError):
        raise refused from None
    if dtype_kind(targets.dtype) not in ("floating", "integer", "bool"):
        raise InputTypeError(loss, f"expected real targets, got dtype {targets.dtype}")
    return targets


def targets_like(loss: str, outputs: jax.Array, targets, float_targets: bool) -> jax.Array:
    """Check finite real targets of the same shape as the outputs."""
    targets = as_targets(loss, targets)
    if targets.shape != outputs.shape:
        raise ShapeError(
            loss, f"expected targets of shape {outputs.shape} like the outputs, got {targets.shape}"
        )
    require_finite(loss, "targets", targets)
    return targets.astype(outputs.dtype) if float_targets else targets


def integer_labels(loss: str, logits: jax.Array, labels) -> jax.Array:
    """Integer labels of the logits' leading shape, each a class index in [0, classes)."""
    labels = as_targets(loss, labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InputTypeError(loss, f"expected integer class labels, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ShapeError(
            loss,
            f"expected labels of shape {logits.shape[:-1]} for logits of shape {logits.shape}, "
            f"got {labels.shape}",
        )
    require_class_labels(loss, labels, logits.shape[-1])
    return labels


def reference_targets(
    loss: str, outputs: np.ndarray, targets: Any, *, classes: bool = False, interval: tuple | None = None
) -> None:
    """The reference refuses what the JAX loss refuses, on the concrete values it always has."""
    owner = f"{loss} (reference)"
    targets = np.asarray(targets)
    if classes and np.issubdtype(targets.dtype, np.integer):
        if targets.shape != outputs.shape[:-1]:
            raise ShapeError(
                owner,
                f"expected labels of shape {outputs.shape[:-1]} for outputs {outputs.shape}, "
                f"got {targets.shape}",
            )
        require_class_labels(owner, targets, outputs.shape[-1])
        return
    if targets.shape != outputs.shape:
        raise ShapeError(
            owner, f"expected targets of shape {outputs.shape} like the outputs, got {targets.shape}"
        )
    require_finite(owner, "targets", targets)
    if interval is not None:
        require_in_interval(owner, "targets", targets, *interval)
    if classes:
        require_distributions(owner, "labels", targets)
