"""Output units paired with their losses, and the norm penalties (the book's 6.2.2, 7.1).

The book's table of output units, each computing its loss from the raw
network output (the logits), never from a squashed probability, so the
loss stays finite and its gradient does not vanish when the unit saturates:

    unit       distribution         loss (from raw outputs z)             here
    linear     Gaussian mean        squared error (y - z)^2               mean_squared_error
    sigmoid    Bernoulli            zeta((1 - 2y) z), softplus form       binary_cross_entropy
    softmax    Multinoulli          logsumexp(z) - z_y                    softmax_cross_entropy
    Gaussian   mean and precision   -1/2 log beta + 1/2 beta (y - mu)^2    gaussian_nll
    (margin)   scores               max_j (z_j + [j != y]) - z_y          multiclass_hinge

Every loss takes ``(outputs, targets)`` and returns the mean over entries as
a float32-or-wider scalar.  ``OUTPUT_UNITS`` pairs each loss with the
prediction its unit makes, so a model's output is never fed to a loss of
another unit ("don't mix and match").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from purenet.core import InputTypeError, ShapeError, check_input


def _targets_like(loss: str, outputs: jax.Array, targets, float_targets: bool) -> jax.Array:
    """Check targets of the same shape as the outputs (a trailing unit axis may be dropped)."""
    targets = jnp.asarray(targets)
    if targets.shape != outputs.shape:
        raise ShapeError(
            loss, f"expected targets of shape {outputs.shape} like the outputs, got {targets.shape}"
        )
    return targets.astype(outputs.dtype) if float_targets else targets


def _integer_labels(loss: str, logits: jax.Array, labels) -> jax.Array:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InputTypeError(loss, f"expected integer class labels, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ShapeError(
            loss,
            f"expected labels of shape {logits.shape[:-1]} for logits of shape {logits.shape}, "
            f"got {labels.shape}",
        )
    return labels


def mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean of (outputs - targets)^2: a linear unit's loss (a unit-variance Gaussian NLL up to constants)."""
    outputs = check_input("mean_squared_error", outputs)
    targets = _targets_like("mean_squared_error", outputs, targets, float_targets=True)
    return jnp.mean(optax.losses.squared_error(outputs, targets))


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """A sigmoid unit's NLL from its logit z: mean of zeta((1 - 2y) z) for y in {0, 1}.

    Computed by optax through log-sigmoids, which is the softplus form
    (eq. 6.23): finite and exact for logits of any magnitude.  Targets may
    also be probabilities in [0, 1].
    """
    logits = check_input("binary_cross_entropy", logits)
    targets = _targets_like("binary_cross_entropy", logits, targets, float_targets=True)
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, targets))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """A softmax unit's NLL from its logits: mean of logsumexp(z) - z_y (eq. 6.30).

    Args:
      logits: (..., classes) raw outputs.
      labels: integer class indices of shape (...), or class probabilities
        (one-hot, say) of the logits' shape.
    """
    name = "softmax_cross_entropy"
    logits = check_input(name, logits)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        labels = _targets_like(name, logits, labels, float_targets=True)
        return jnp.mean(optax.losses.softmax_cross_entropy(logits, labels))
    labels = _integer_labels(name, logits, labels)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def split_gaussian(outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a Gaussian unit's outputs (..., 2d) into the mean and the precision pre-activation rho."""
    width = outputs.shape[-1]
    if width % 2:
        raise ShapeError(
            "gaussian_nll",
            f"expected outputs of even width 2d (d means, then d precision pre-activations), got {width}",
        )
    return outputs[..., : width // 2], outputs[..., width // 2 :]


def _log_softplus(rho: jax.Array) -> jax.Array:
    """log(softplus(rho)) without underflow: for rho < -30, softplus(rho) = exp(rho) to 1e-13."""
    safe = jnp.maximum(rho, -30.0)  # keeps the untaken branch's gradient finite
    return jnp.where(rho > -30.0, jnp.log(jax.nn.softplus(safe)), rho)


def gaussian_nll(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The NLL of a Gaussian with learned precision (the book's 6.2.2.4), per entry, averaged.

        beta = softplus(rho),   NLL = -1/2 log beta + 1/2 beta (y - mu)^2

    dropping the constant 1/2 log(2 pi).  softplus keeps beta positive
    without the overflow exp(rho) would bring; the log is taken stably.

    Args:
      outputs: (..., 2d): d means, then d precision pre-activations rho.
      targets: (..., d).
    """
    name = "gaussian_nll"
    outputs = check_input(name, outputs)
    mean, rho = split_gaussian(outputs)
    targets = _targets_like(name, mean, targets, float_targets=True)
    precision = jax.nn.softplus(rho)
    return jnp.mean(-0.5 * _log_softplus(rho) + 0.5 * precision * jnp.square(targets - mean))


def multiclass_hinge(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """The multiclass hinge loss (Crammer and Singer 2001): mean of max_j (z_j + [j != y]) - z_y."""
    name = "multiclass_hinge"
    scores = check_input(name, scores)
    labels = _integer_labels(name, scores, labels)
    return jnp.mean(optax.losses.multiclass_hinge_loss(scores, labels))


# --------------------------------------------------------------------------
# Output units: a loss and the prediction of the same unit, never mixed
# --------------------------------------------------------------------------


class OutputUnit(NamedTuple):
    """An output unit: its loss from raw outputs and its prediction from raw outputs."""

    name: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    predict: Callable[[jax.Array], jax.Array | tuple[jax.Array, jax.Array]]


def _gaussian_predict(outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The predicted mean and variance 1 / beta."""
    mean, rho = split_gaussian(outputs)
    return mean, 1.0 / jax.nn.softplus(rho)


OUTPUT_UNITS: dict[str, OutputUnit] = {
    "linear": OutputUnit("linear", mean_squared_error, lambda z: z),
    "sigmoid": OutputUnit("sigmoid", binary_cross_entropy, jax.nn.sigmoid),
    "softmax": OutputUnit("softmax", softmax_cross_entropy, jax.nn.softmax),
    "gaussian": OutputUnit("gaussian", gaussian_nll, _gaussian_predict),
    "hinge": OutputUnit("hinge", multiclass_hinge, lambda z: jnp.argmax(z, axis=-1)),
}


# --------------------------------------------------------------------------
# Norm penalties lambda * Omega(theta) (the book's sections 7.1.1 and 7.1.2)
# --------------------------------------------------------------------------


def _penalized_leaves(params, skip: Sequence[str]) -> list[jax.Array]:
    """The leaves whose innermost dict key is not in ``skip`` (biases, by default)."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.DictKey) and last.key in skip:
            continue
        leaves.append(leaf)
    return leaves


def l2_penalty(params, scale: float, skip: Sequence[str] = ("b",)) -> jax.Array:
    """lambda * Omega with Omega = 1/2 ||w||^2 summed over the penalized leaves (eq. 7.1).

    Args:
      params: a params pytree.
      scale: lambda >= 0.
      skip: innermost dict keys left unpenalized; biases (``"b"``) by
        default, since they need little data to fit and penalizing them can
        cause underfitting (section 7.1).
    """
    return scale * 0.5 * sum(jnp.sum(jnp.square(w)) for w in _penalized_leaves(params, skip))


def l1_penalty(params, scale: float, skip: Sequence[str] = ("b",)) -> jax.Array:
    """lambda * Omega with Omega = ||w||_1 summed over the penalized leaves (eq. 7.18)."""
    return scale * sum(jnp.sum(jnp.abs(w)) for w in _penalized_leaves(params, skip))


__all__ = [
    "OUTPUT_UNITS",
    "OutputUnit",
    "binary_cross_entropy",
    "gaussian_nll",
    "l1_penalty",
    "l2_penalty",
    "mean_squared_error",
    "multiclass_hinge",
    "softmax_cross_entropy",
    "split_gaussian",
]
