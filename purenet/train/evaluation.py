"""Evaluation: the loss and metrics of a trained model over a dataset, in batches.

``accuracy`` and ``binary_accuracy`` are metrics with the loss signature
``metric(outputs, targets) -> scalar``; ``evaluate`` reports the mean of the
loss and of each metric over the examples, in evaluation mode (dropout off).
``fit`` uses the same compiled evaluator for its validation data, both
fetched from purenet's one bounded compile cache, so evaluating again with
the same model, loss and metrics compiles nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.compiled import cached
from purenet.core import ConfigError, Layer, PurenetError, ShapeError, describe_tree
from purenet.data import check_arrays, check_labels
from purenet.loss_targets import as_targets, integer_labels, loss_outputs
from purenet.precision import Policy, mixed_precision
from purenet.shapes import require_positive_int
from purenet.train.base import Loss, Metric
from purenet.validate import require_in_interval


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of examples whose largest logit is the label (softmax outputs, integer labels).

    Needs at least 2 logits per example (for one sigmoid logit, ``binary_accuracy``)
    and labels of the logits' leading shape, each in [0, classes).

    Examples:
      >>> import jax.numpy as jnp
      >>> import purenet as pn
      >>> round(float(pn.accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), jnp.array([0, 1, 1]))), 4)
      0.6667
    """
    logits = loss_outputs("accuracy", logits)
    if logits.shape[-1] < 2:
        raise ShapeError(
            "accuracy",
            f"expected at least 2 logits per example (one per class), got outputs of shape {logits.shape}; "
            "for a single sigmoid logit use binary_accuracy",
        )
    labels = integer_labels("accuracy", logits, labels)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def binary_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The fraction of examples on the right side of logit 0 (a sigmoid unit, targets in {0, 1}).

    Targets have the logits' shape (or, for one logit per example, its
    leading shape); never reshaped from another shape of the same size.
    """
    logits = loss_outputs("binary_accuracy", logits)
    targets = as_targets("binary_accuracy", targets)
    if targets.shape != logits.shape and not (logits.shape[-1] == 1 and targets.shape == logits.shape[:-1]):
        raise ShapeError(
            "binary_accuracy",
            f"expected targets of shape {logits.shape} like the logits, got {targets.shape}",
        )
    require_in_interval("binary_accuracy", "targets", targets, 0.0, 1.0)
    return jnp.mean((logits > 0) == (jnp.reshape(targets, logits.shape) > 0.5))


def label_classes(model: Layer, params: Any, x: np.ndarray, y: np.ndarray, loss: Loss) -> int | None:
    """For integer labels fed to a loss over class scores: the number of classes the model outputs.

    The loss says so itself: ``loss.class_labels`` is true where integer
    targets are class indices into the outputs' last axis (softmax cross
    entropy, multiclass hinge, or a user's loss carrying the attribute).
    """
    if not getattr(loss, "class_labels", False) or y.dtype.kind not in "iu":
        return None
    return jax.eval_shape(lambda p, xb: model.apply(p, xb), params, x[:1]).shape[-1]  # shapes only


def evaluate(
    model: Layer,
    params: Any,
    x: Any,
    y: Any,
    *,
    loss: Loss,
    metrics: Mapping[str, Metric] | None = None,
    batch_size: int = 1024,
    policy: Policy | None = None,
) -> dict[str, float]:
    """The loss and each metric over (x, y), in evaluation mode, in batches of ``batch_size``.

    Each figure is the mean over examples (batch means weighted by batch size).
    Called again with the same model, loss, metric functions and policy, it
    reuses the compiled evaluator: only batch shapes not seen before compile.
    """
    x, y = check_arrays("evaluate", x, y)
    if len(x) == 0:
        raise ShapeError("evaluate", f"x holds no examples (shape {x.shape}); a mean over none is undefined")
    classes = label_classes(model, params, x, y, loss)
    if classes is not None:
        check_labels("evaluate", y, classes)
    batch_size = require_positive_int("evaluate", "batch_size", batch_size)
    metrics = check_metrics("evaluate", metrics)
    compute = _evaluator(model, loss, metrics, policy)
    try:
        return _evaluate_batches(compute, params, x, y, batch_size)
    except PurenetError:
        raise
    except Exception:
        # Name the metric at fault, if one is; traced only on failure, so a repeated call costs nothing.
        trace_metrics("evaluate", model, params, metrics, x[:batch_size], y[:batch_size])
        raise


def check_metrics(who: str, metrics: Any) -> tuple[tuple[str, Metric], ...]:
    """``metrics`` as ``(name, fn)`` pairs, refused unless every name is a fresh string and every fn callable.

    Args:
      who: the function checking, named in errors (``"fit"``, ``"evaluate"``).
      metrics: None, or a mapping ``{name: fn(outputs, targets) -> scalar}``.

    A metric named ``"loss"`` would overwrite the loss in the figures (and
    fit's ``val_loss``), so it is refused rather than silently replacing it.
    """
    if metrics is None:
        return ()
    if not isinstance(metrics, Mapping):
        raise ConfigError(who, f"metrics must be a mapping {{name: fn}}, got {type(metrics).__name__}")
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(who, f"metrics' names must be non-empty strings, e.g. 'accuracy', got {name!r}")
        if name == "loss":
            raise ConfigError(
                who, "metrics may not be named 'loss': that name is the loss's own figure (val_loss in fit's "
                "history), which the metric would overwrite; rename it, e.g. 'my_loss'",
            )  # fmt: skip
        if not callable(fn):
            got = type(fn).__name__
            raise ConfigError(
                who, f"metrics[{name!r}] must be a function (outputs, targets) -> scalar, got {got}"
            )
    return tuple(metrics.items())


def trace_metrics(who: str, model: Layer, params: Any, metrics: tuple, x: Any, y: Any) -> None:
    """Trace each metric on a batch (shapes only): refused now, naming it, unless it returns a scalar.

    A metric of the wrong arity, one that cannot be traced (``float()`` of a
    tracer) or one returning a vector would otherwise fail inside JAX, and
    in ``fit`` only after an epoch has trained.

    Args:
      who: the function checking (``"fit"``, ``"evaluate"``).
      model: the network.
      params: its params.
      metrics: ``check_metrics``' pairs.
      x: a batch of the inputs the metrics are computed on (its shape is traced).
      y: their targets.
    """
    for name, fn in metrics:
        try:
            value = jax.eval_shape(lambda p, xb, yb, fn=fn: fn(model.apply(p, xb), yb), params, x, y)
        except PurenetError:
            raise
        except Exception as error:  # any failure of the user's function is named, never bare
            raise ConfigError(
                who, f"metrics[{name!r}] cannot be computed as fn(outputs, targets) under jax.jit: "
                f"{type(error).__name__}: {error}",
            ) from error  # fmt: skip
        if not (hasattr(value, "shape") and value.shape == ()):
            raise ConfigError(who, f"metrics[{name!r}] must return a scalar, got {describe_tree(value)}")


@cached
def _evaluator(
    model: Layer, loss: Loss, metrics: tuple[tuple[str, Metric], ...], policy: Policy | None
) -> Callable:
    """The jitted ``(params, x, y) -> {"loss": ..., name: ...}`` in evaluation mode, under ``policy``.

    Built in purenet's one bounded compile cache (``purenet.compiled``): a
    second ``evaluate`` (or ``fit``'s validation) with the same model, loss,
    metrics and policy reaches the same jitted function and compiles nothing
    for shapes it has seen.  ``metrics`` comes as a tuple of ``(name, fn)``
    pairs so that equal mappings share one entry.
    """
    if policy is not None:
        model = mixed_precision(model, policy)

    @jax.jit
    def compute(params, x, y):
        outputs = model.apply(params, x, train=False)
        return {"loss": loss(outputs, y)} | {name: fn(outputs, y) for name, fn in metrics}

    return compute


def _evaluate_batches(compute: Callable, params: Any, x, y, batch_size: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        for name, value in compute(params, xb, yb).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(xb)
    return {name: total / len(x) for name, total in totals.items()}


__all__ = ["accuracy", "binary_accuracy", "check_metrics", "evaluate", "trace_metrics"]
