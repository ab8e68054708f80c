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

Every loss is a ``Loss`` record: callable like a function, carrying its
hand-derived reference in NumPy float64 (written right below the JAX loss,
``value_and_grad(outputs, targets) -> (L, dL/doutputs)``, as ``loss.reference``)
and the facts a trainer needs (``loss.class_labels``).  Over N averaged
entries (or rows):

    mean_squared_error      2 (z - y) / N
    binary_cross_entropy    (sigma(z) - y) / N
    softmax_cross_entropy   (q sum_j p_j - p) / N, q = softmax(z): q - p for a distribution p
    gaussian_nll            d/dmu = beta (mu - y) / N,
                            d/drho = (-1 / (2 beta) + (y - mu)^2 / 2) sigma(rho) / N
    multiclass_hinge        (t - onehot(y)) / N, t spreading 1 evenly over the
                            classes tied for max_j (z_j + [j != y]), as jnp.max does

and for the second order (``LossReference``'s ``hessian_vp``, the loss's
Hessian H_L in its outputs times a direction r; each row or entry apart):

    mean_squared_error      2 r / N
    binary_cross_entropy    sigma(z) sigma(-z) r / N               (independent of y)
    softmax_cross_entropy   (sum_j p_j) (q r - q <q, r>) / N       (diag(q) - q q^T per row)
    gaussian_nll            mu:  (beta r_mu + sigma(rho) (mu - y) r_rho) / N
                            rho: (sigma(rho) (mu - y) r_mu
                                  + (-1/2 (log zeta)''(rho) + (y - mu)^2 sigma'(rho) / 2) r_rho) / N
    multiclass_hinge        0: piecewise linear in z (the ties keep the first order's split)

The norm penalties, which carry their references the same way, are in
``purenet.penalties``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purenet.core import ShapeError
from purenet.layers.activations import np_sigmoid, np_softplus
from purenet.loss_record import Loss, LossReference, loss_reference
from purenet.loss_targets import as_targets, integer_labels, loss_outputs, reference_targets, targets_like
from purenet.validate import (
    require_distributions,
    require_in_interval,
)


def _mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean of (outputs - targets)^2: a linear unit's loss (a unit-variance Gaussian NLL up to constants)."""
    outputs = loss_outputs("mean_squared_error", outputs)
    targets = targets_like("mean_squared_error", outputs, targets, float_targets=True)
    return jnp.mean(optax.losses.squared_error(outputs, targets))


def _mse_reference(z: np.ndarray, y: np.ndarray):
    reference_targets("mean_squared_error", z, y)
    residual = z - y
    return np.mean(residual**2), 2.0 * residual / residual.size


def _mse_hessian_vp(z: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return 2.0 * r / r.size


def _binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """A sigmoid unit's NLL from its logit z: mean of zeta((1 - 2y) z) for y in {0, 1}.

    Written in the softplus form (eq. 6.23), per entry

        y zeta(-z) + (1 - y) zeta(z),

    with a term whose weight is 0 dropped rather than computed as 0 * inf:
    finite and exact for logits of any magnitude, 0 at z = +inf with y = 1
    (and at -inf with y = 0).  Targets may also be probabilities in [0, 1].
    """
    name = "binary_cross_entropy"
    logits = loss_outputs(name, logits)
    targets = targets_like(name, logits, targets, float_targets=True)
    require_in_interval(name, "targets", targets, 0.0, 1.0)
    positive = jnp.where(targets > 0, targets * jax.nn.softplus(-logits), 0.0)
    negative = jnp.where(targets < 1, (1 - targets) * jax.nn.softplus(logits), 0.0)
    return jnp.mean(positive + negative)


def _bce_reference(z: np.ndarray, y: np.ndarray):
    """y zeta(-z) + (1 - y) zeta(z) (eq. 6.23), zero-weight terms dropped, and its gradient.

    sigma(z) - y is taken as (1 - y) sigma(z) - y sigma(-z) (1 - sigma(z) = sigma(-z),
    section 3.10), which keeps relative precision where sigma(z) rounds to y:
    at z = 40, y = 1 it is -sigma(-40) ~ -4.2e-18, not 1 - 1 = 0.
    """
    reference_targets("binary_cross_entropy", z, y, interval=(0.0, 1.0))
    with np.errstate(invalid="ignore"):  # 0 * inf in the discarded branch of np.where
        terms = np.where(y > 0, y * np_softplus(-z), 0.0) + np.where(y < 1, (1 - y) * np_softplus(z), 0.0)
    return np.mean(terms), ((1 - y) * np_sigmoid(z) - y * np_sigmoid(-z)) / z.size


def _bce_hessian_vp(z: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sigma'(z) r / N with sigma' = sigma(z) sigma(-z), precise in both tails."""
    return np_sigmoid(z) * np_sigmoid(-z) * r / z.size


def _softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """A softmax unit's NLL from its logits: mean of logsumexp(z) - z_y (eq. 6.30).

    Args:
      logits: (..., classes) raw outputs.
      labels: integer class indices of shape (...), or class probabilities
        (one-hot, say) of the logits' shape.

    Examples:
      Equal logits give log(classes), whatever the label:

      >>> import jax.numpy as jnp
      >>> import purenet as pn
      >>> round(float(pn.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 2]))), 4)  # log 3
      1.0986
      >>> round(float(pn.softmax_cross_entropy(jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 0.0]]))), 4)
      0.1269
    """
    name = "softmax_cross_entropy"
    logits = loss_outputs(name, logits)
    labels = as_targets(name, labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        labels = targets_like(name, logits, labels, float_targets=True)
        require_distributions(name, "labels", labels)
        return jnp.mean(optax.losses.softmax_cross_entropy(logits, labels))
    labels = integer_labels(name, logits, labels)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return (np.arange(classes) == labels[..., None]).astype(np.float64)


def _log_softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log q = s - log1p(r) (eq. 6.30), s = z - max z, r the sum of e^s off the first max; and 1 - q.

    At the max, 1 - q = r / (1 + r) and log q = -log1p(r) keep relative precision
    where q rounds to 1 (s there is exactly 0); elsewhere q <= 1/2, so 1 - q is exact.
    """
    shifted = z - z.max(axis=-1, keepdims=True)
    first = np.arange(z.shape[-1]) == shifted.argmax(axis=-1)[..., None]
    rest = np.where(first, 0.0, np.exp(shifted)).sum(axis=-1, keepdims=True)
    log_q = shifted - np.log1p(rest)
    return log_q, np.where(first, rest / (1.0 + rest), 1.0 - np.exp(log_q))


def _softmax_ce_reference(z: np.ndarray, labels: np.ndarray):
    """-sum_j p_j log q_j per row (eq. 6.30), and its gradient q sum_j p_j - p.

    The gradient is taken as q (sum_j p_j - p) - p (1 - q): for a confident
    right row it is -(1 - q_y) ~ -e^(z_j - z_y), where q - p would give 1 - 1 = 0.
    """
    reference_targets("softmax_cross_entropy", z, labels, classes=True)
    log_q, complement = _log_softmax(z)
    p = labels if np.issubdtype(labels.dtype, np.floating) else _one_hot(labels, z.shape[-1])
    rows = z.size // z.shape[-1]
    value = -np.sum(p * log_q) / rows
    others = p.sum(axis=-1, keepdims=True) - p
    return value, (np.exp(log_q) * others - p * complement) / rows


def _softmax_ce_hessian_vp(z: np.ndarray, labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per row, (sum_j p_j) (diag(q) - q q^T) r = (sum_j p_j) q (r - <q, r>): logsumexp's Hessian."""
    q = np.exp(_log_softmax(z)[0])
    mass = 1.0 if not np.issubdtype(labels.dtype, np.floating) else labels.sum(axis=-1, keepdims=True)
    return mass * q * (r - np.sum(q * r, axis=-1, keepdims=True)) / (z.size // z.shape[-1])


def split_gaussian(outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a Gaussian unit's outputs (..., 2d) into the mean and the precision pre-activation rho."""
    width = outputs.shape[-1]
    if width % 2 or width == 0:
        raise ShapeError(
            "gaussian_nll",
            "expected outputs of even width 2d >= 2 (d means, then d precision pre-activations), "
            f"got {width}",
        )
    return outputs[..., : width // 2], outputs[..., width // 2 :]


def _log_softplus(rho: jax.Array) -> jax.Array:
    """log(softplus(rho)) without underflow: for rho < -30, softplus(rho) = exp(rho) to 1e-13."""
    safe = jnp.maximum(rho, -30.0)  # keeps the untaken branch's gradient finite
    return jnp.where(rho > -30.0, jnp.log(jax.nn.softplus(safe)), rho)


def _gaussian_nll(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The NLL of a Gaussian with learned precision (the book's 6.2.2.4), per entry, averaged.

        beta = softplus(rho),   NLL = -1/2 log beta + 1/2 beta (y - mu)^2

    dropping the constant 1/2 log(2 pi).  softplus keeps beta positive
    without the overflow exp(rho) would bring; the log is taken stably.

    Args:
      outputs: (..., 2d): d means, then d precision pre-activations rho.
      targets: (..., d).
    """
    name = "gaussian_nll"
    outputs = loss_outputs(name, outputs)
    mean, rho = split_gaussian(outputs)
    targets = targets_like(name, mean, targets, float_targets=True)
    precision = jax.nn.softplus(rho)
    return jnp.mean(-0.5 * _log_softplus(rho) + 0.5 * precision * jnp.square(targets - mean))


def _gaussian_nll_reference(outputs: np.ndarray, y: np.ndarray):
    width = outputs.shape[-1] // 2
    reference_targets("gaussian_nll", outputs[..., :width], y)
    mean, rho = outputs[..., :width], outputs[..., width:]
    beta = np_softplus(rho)
    # As the JAX path: below rho = -30, softplus(rho) = e^rho to 1e-13, so log beta = rho
    # (the maximum only silences log(0) on the branch np.where discards).
    log_beta = np.where(rho > -30.0, np.log(np.maximum(beta, 1e-300)), rho)
    count = mean.size
    value = np.mean(-0.5 * log_beta + 0.5 * beta * (y - mean) ** 2)
    g_mean = beta * (mean - y) / count
    g_rho = (-0.5 * _sigmoid_over_softplus(rho) + 0.5 * (y - mean) ** 2 * np_sigmoid(rho)) / count
    return value, np.concatenate([g_mean, g_rho], axis=-1)


def _sigmoid_over_softplus(rho: np.ndarray) -> np.ndarray:
    """sigma(rho) / zeta(rho) = d log zeta(rho) / d rho (d zeta = sigma, section 3.10), finite for every rho.

    Below rho = -30 both underflow together (to 0 below -745) while the ratio
    tends to 1: there it is 1 / ((1 + e^rho)(1 - e^rho / 2 + ...)) = 1 - e^rho / 2
    to O(e^(2 rho)) < 1e-26.
    """
    safe = np.maximum(rho, -30.0)  # the discarded branch of np.where never divides by 0
    tail = 1.0 - 0.5 * np.exp(np.minimum(rho, -30.0))
    return np.where(rho > -30.0, np_sigmoid(safe) / np_softplus(safe), tail)


def _gaussian_nll_hessian_vp(outputs: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """H_L r per entry, from the 2 x 2 Hessian in (mu, rho) (module docstring)."""
    width = outputs.shape[-1] // 2
    mean, rho, r_mean, r_rho = outputs[..., :width], outputs[..., width:], r[..., :width], r[..., width:]
    cross = np_sigmoid(rho) * (mean - y)  # d^2 / dmu drho
    curvature = -0.5 * _sigmoid_over_softplus_slope(rho) + 0.5 * (y - mean) ** 2 * np_sigmoid(
        rho
    ) * np_sigmoid(-rho)
    h_mean = np_softplus(rho) * r_mean + cross * r_rho
    return np.concatenate([h_mean, cross * r_mean + curvature * r_rho], axis=-1) / mean.size


def _sigmoid_over_softplus_slope(rho: np.ndarray) -> np.ndarray:
    """(sigma / zeta)'(rho) = (sigma / zeta) (sigma(-rho) - sigma / zeta), the slope of d log zeta / d rho.

    Below rho = -12 the two terms cancel to e^rho / 2: there the series
    -t / 2 + 5 t^2 / 6 in t = e^rho (relative error < 1e-10, against 1e-11
    lost to cancellation at -12 and 1e-7 at -20) replaces it.
    """
    ratio = _sigmoid_over_softplus(np.maximum(rho, -12.0))
    t = np.exp(np.minimum(rho, -12.0))
    return np.where(rho > -12.0, ratio * (np_sigmoid(-np.maximum(rho, -12.0)) - ratio), -t / 2 + 5 * t**2 / 6)


def _multiclass_hinge(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """The multiclass hinge loss (Crammer and Singer 2001): mean of max_j (z_j + [j != y]) - z_y."""
    name = "multiclass_hinge"
    scores = loss_outputs(name, scores)
    labels = integer_labels(name, scores, labels)
    return jnp.mean(optax.losses.multiclass_hinge_loss(scores, labels))


def _hinge_margins(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return z + 1.0 - _one_hot(labels, z.shape[-1])


def _hinge_reference(z: np.ndarray, labels: np.ndarray):
    reference_targets("multiclass_hinge", z, labels, classes=True)
    one_hot = _one_hot(labels, z.shape[-1])
    margins = _hinge_margins(z, labels)
    top = margins.max(axis=-1, keepdims=True)
    tied = (margins == top).astype(np.float64)
    rows = z.size // z.shape[-1]
    value = np.sum(top[..., 0] - np.sum(z * one_hot, axis=-1)) / rows
    return value, (tied / tied.sum(axis=-1, keepdims=True) - one_hot) / rows


def _hinge_kinks(z: np.ndarray, labels: np.ndarray) -> float:
    """The smallest gap between the top two of z_j + [j != y] (a tie is the kink)."""
    if z.shape[-1] < 2:
        return np.inf
    top_two = np.sort(_hinge_margins(z, labels), axis=-1)[..., -2:]
    return float(np.min(top_two[..., 1] - top_two[..., 0], initial=np.inf))


def _hinge_hessian_vp(z: np.ndarray, labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.zeros_like(r)  # piecewise linear in z


mean_squared_error = Loss(
    _mean_squared_error, "mean_squared_error", LossReference(_mse_reference, hessian_vp=_mse_hessian_vp)
)
binary_cross_entropy = Loss(
    _binary_cross_entropy, "binary_cross_entropy", LossReference(_bce_reference, hessian_vp=_bce_hessian_vp)
)
softmax_cross_entropy = Loss(
    _softmax_cross_entropy,
    "softmax_cross_entropy",
    LossReference(_softmax_ce_reference, hessian_vp=_softmax_ce_hessian_vp),
    class_labels=True,
)
gaussian_nll = Loss(
    _gaussian_nll, "gaussian_nll", LossReference(_gaussian_nll_reference, hessian_vp=_gaussian_nll_hessian_vp)
)
multiclass_hinge = Loss(
    _multiclass_hinge,
    "multiclass_hinge",
    LossReference(_hinge_reference, _hinge_kinks, _hinge_hessian_vp),
    class_labels=True,
)


# --------------------------------------------------------------------------
# Output units: a loss and the prediction of the same unit, never mixed
# --------------------------------------------------------------------------


class OutputUnit(NamedTuple):
    """An output unit: its loss from raw outputs and its prediction from raw outputs."""

    name: str
    loss: Loss
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


__all__ = [
    "OUTPUT_UNITS",
    "Loss",
    "LossReference",
    "OutputUnit",
    "binary_cross_entropy",
    "gaussian_nll",
    "loss_reference",
    "mean_squared_error",
    "multiclass_hinge",
    "softmax_cross_entropy",
    "split_gaussian",
]
