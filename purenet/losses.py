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

Each loss also has a hand-derived reference in NumPy float64 right below it,
``value_and_grad(outputs, targets) -> (L, dL/doutputs)``, found with
``loss_reference(loss)``.  Over N averaged entries (or rows):

    mean_squared_error      2 (z - y) / N
    binary_cross_entropy    (sigma(z) - y) / N
    softmax_cross_entropy   (q sum_j p_j - p) / N, q = softmax(z): q - p for a distribution p
    gaussian_nll            d/dmu = beta (mu - y) / N,
                            d/drho = (-1 / (2 beta) + (y - mu)^2 / 2) sigma(rho) / N
    multiclass_hinge        (t - onehot(y)) / N, t spreading 1 evenly over the
                            classes tied for max_j (z_j + [j != y]), as jnp.max does

The penalties ``L2Penalty`` and ``L1Penalty`` carry lambda grad Omega the
same way: lambda w, and lambda sign(w) with sign(0) = 0 (the smallest
subgradient; ``l1_penalty`` is written w sign(w) so that JAX agrees).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purenet.core import InputTypeError, MissingReferenceError, ShapeError, check_input
from purenet.layers.activations import np_sigmoid, np_softplus


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


def _mse_reference(z: np.ndarray, y: np.ndarray):
    residual = z - y
    return np.mean(residual**2), 2.0 * residual / residual.size


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """A sigmoid unit's NLL from its logit z: mean of zeta((1 - 2y) z) for y in {0, 1}.

    Computed by optax through log-sigmoids, which is the softplus form
    (eq. 6.23): finite and exact for logits of any magnitude.  Targets may
    also be probabilities in [0, 1].
    """
    logits = check_input("binary_cross_entropy", logits)
    targets = _targets_like("binary_cross_entropy", logits, targets, float_targets=True)
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, targets))


def _bce_reference(z: np.ndarray, y: np.ndarray):
    # -y log sigma(z) - (1 - y) log(1 - sigma(z)) = zeta(z) - y z
    return np.mean(np_softplus(z) - y * z), (np_sigmoid(z) - y) / z.size


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


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return (np.arange(classes) == labels[..., None]).astype(np.float64)


def _softmax_ce_reference(z: np.ndarray, labels: np.ndarray):
    shifted = z - z.max(axis=-1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    p = labels if np.issubdtype(labels.dtype, np.floating) else _one_hot(labels, z.shape[-1])
    rows = z.size // z.shape[-1]
    value = -np.sum(p * log_q) / rows
    return value, (np.exp(log_q) * p.sum(axis=-1, keepdims=True) - p) / rows


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


def _gaussian_nll_reference(outputs: np.ndarray, y: np.ndarray):
    width = outputs.shape[-1] // 2
    mean, rho = outputs[..., :width], outputs[..., width:]
    beta = np_softplus(rho)
    # As the JAX path: below rho = -30, softplus(rho) = e^rho to 1e-13, so log beta = rho
    # (the maximum only silences log(0) on the branch np.where discards).
    log_beta = np.where(rho > -30.0, np.log(np.maximum(beta, 1e-300)), rho)
    count = mean.size
    value = np.mean(-0.5 * log_beta + 0.5 * beta * (y - mean) ** 2)
    g_mean = beta * (mean - y) / count
    g_rho = (-0.5 / beta + 0.5 * (y - mean) ** 2) * np_sigmoid(rho) / count
    return value, np.concatenate([g_mean, g_rho], axis=-1)


def multiclass_hinge(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """The multiclass hinge loss (Crammer and Singer 2001): mean of max_j (z_j + [j != y]) - z_y."""
    name = "multiclass_hinge"
    scores = check_input(name, scores)
    labels = _integer_labels(name, scores, labels)
    return jnp.mean(optax.losses.multiclass_hinge_loss(scores, labels))


def _hinge_margins(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return z + 1.0 - _one_hot(labels, z.shape[-1])


def _hinge_reference(z: np.ndarray, labels: np.ndarray):
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


# Integer targets are class indices into the outputs' last axis, so the output width is the number
# of classes (fit checks labels against it).  On main losses are Loss records with this field.
softmax_cross_entropy.class_labels = True  # type: ignore[attr-defined]
multiclass_hinge.class_labels = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# The losses' references, for purenet.reference and purenet.check
# --------------------------------------------------------------------------


class LossReference(NamedTuple):
    """A loss's hand-derived reference in NumPy float64.

    Attributes:
      value_and_grad: ``(outputs, targets) -> (L, dL/doutputs)``.
      kinks: for a loss with kinks, ``(outputs, targets) -> distance`` to the
        nearest one; ``None`` for a smooth loss.
    """

    value_and_grad: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]
    kinks: Callable[[np.ndarray, np.ndarray], float] | None = None


_LOSS_REFERENCES: dict[Callable, LossReference] = {
    mean_squared_error: LossReference(_mse_reference),
    binary_cross_entropy: LossReference(_bce_reference),
    softmax_cross_entropy: LossReference(_softmax_ce_reference),
    gaussian_nll: LossReference(_gaussian_nll_reference),
    multiclass_hinge: LossReference(_hinge_reference, _hinge_kinks),
}


def loss_reference(loss: Callable | LossReference) -> LossReference:
    """The hand-derived reference of a purenet loss (a ``LossReference`` is returned as is)."""
    if isinstance(loss, LossReference):
        return loss
    try:
        return _LOSS_REFERENCES[loss]
    except (KeyError, TypeError):
        name = getattr(loss, "__name__", repr(loss))
        raise MissingReferenceError(
            name,
            "is not one of purenet's losses, so it has no reference; pass "
            "loss_reference=LossReference(value_and_grad) with your hand-derived gradient",
        ) from None


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
    """lambda * Omega with Omega = ||w||_1 summed over the penalized leaves (eq. 7.18).

    |w| is written w sign(w) so that its derivative at w = 0 is sign(0) = 0,
    the smallest subgradient (``jnp.abs`` would give 1 there).
    """
    return scale * sum(jnp.sum(w * jnp.sign(w)) for w in _penalized_leaves(params, skip))


def _penalty_grad(params, skip: Sequence[str], grad: Callable[[np.ndarray], np.ndarray]):
    """grad applied to the penalized leaves, zeros on the skipped ones (NumPy)."""

    def leaf_grad(path, leaf):
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.DictKey) and last.key in skip:
            return np.zeros_like(leaf)
        return grad(leaf)

    return jax.tree_util.tree_map_with_path(leaf_grad, params)


@dataclasses.dataclass(frozen=True)
class L2Penalty:
    """The regularizer lambda/2 ||w||^2 as a callable, with its reference gradient lambda w.

    ``fit(..., regularizer=L2Penalty(1e-4))`` trains with it;
    ``check_gradients(..., regularizer=L2Penalty(1e-4))`` checks it.
    """

    scale: float
    skip: tuple[str, ...] = ("b",)

    def __call__(self, params) -> jax.Array:
        return l2_penalty(params, self.scale, self.skip)

    def reference(self, params) -> float:
        return self.scale * 0.5 * sum(np.sum(w**2) for w in _penalized_leaves(params, self.skip))

    def reference_grad(self, params):
        return _penalty_grad(params, self.skip, lambda w: self.scale * w)


@dataclasses.dataclass(frozen=True)
class L1Penalty:
    """The regularizer lambda ||w||_1 as a callable, with its reference gradient lambda sign(w)."""

    scale: float
    skip: tuple[str, ...] = ("b",)

    def __call__(self, params) -> jax.Array:
        return l1_penalty(params, self.scale, self.skip)

    def reference(self, params) -> float:
        return self.scale * sum(np.sum(np.abs(w)) for w in _penalized_leaves(params, self.skip))

    def reference_grad(self, params):
        return _penalty_grad(params, self.skip, lambda w: self.scale * np.sign(w))

    def kinks(self, params) -> float:
        """|w| has its kink at w = 0: the smallest |w| over the penalized leaves."""
        return min(
            (float(np.min(np.abs(w), initial=np.inf)) for w in _penalized_leaves(params, self.skip)),
            default=np.inf,
        )


def penalty_reference(regularizer: Any) -> tuple[Callable, Callable]:
    """``(penalty, penalty_grad)`` in NumPy for a regularizer with a reference."""
    if not (hasattr(regularizer, "reference") and hasattr(regularizer, "reference_grad")):
        raise MissingReferenceError(
            getattr(regularizer, "__name__", type(regularizer).__name__),
            "has no reference; use L2Penalty(scale) or L1Penalty(scale), or give an object "
            "with reference(params) and reference_grad(params) methods",
        )
    return regularizer.reference, regularizer.reference_grad


__all__ = [
    "OUTPUT_UNITS",
    "L1Penalty",
    "L2Penalty",
    "LossReference",
    "OutputUnit",
    "binary_cross_entropy",
    "gaussian_nll",
    "l1_penalty",
    "l2_penalty",
    "loss_reference",
    "mean_squared_error",
    "multiclass_hinge",
    "penalty_reference",
    "softmax_cross_entropy",
    "split_gaussian",
]
