"""The names every part of training shares: signatures, options, the state and the results.

``step``, ``evaluation`` and ``loop`` all import from here and never from one
another's shared names, so splitting training into modules closes no import
circle (DESIGN.md, "Layout").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from purenet.core import PurenetError

Loss = Callable[[jax.Array, jax.Array], jax.Array]
Metric = Callable[[jax.Array, jax.Array], jax.Array]
ON_NONFINITE = ("stop", "skip")
DEVICE_DATA_BYTES = 2**30  # where the device does not report its memory: above this, data stays on the host
DEVICE_DATA_FRACTION = 0.25  # otherwise: the share of the device's memory the training data may take
STEP_LOSS = "step_loss"  # the one history key fit records as a list per epoch, not a number
LEARNING_RATE = "learning_rate"  # the injected hyperparameter fit records per epoch


class TrainState(NamedTuple):
    """What a step carries: the params, the optimizer state and whether every step so far was finite."""

    params: Any
    opt_state: Any
    healthy: jax.Array


class StepOutput(NamedTuple):
    """What a step reports: its loss (before the update) and whether loss and gradients were finite."""

    loss: jax.Array
    finite: jax.Array


class FitResult(NamedTuple):
    """``fit``'s result; unpacks as ``params, opt_state, history = fit(...)``.

    ``history`` maps ``"loss"`` (the mean training loss of each epoch),
    ``"val_loss"`` and ``"val_<metric>"`` (on the held-out data, when given),
    ``"skipped"`` (non-finite steps skipped per epoch), ``"seconds"`` (wall
    time per epoch), ``"learning_rate"`` (where ``optax.inject_hyperparams``
    keeps one: its value at the epoch's last step; where several injected states
    keep one, ``"learning_rate/<group>"`` for each, e.g. the labels of an
    ``optax.multi_transform``) and, with
    ``fit(step_losses=True)``, ``"step_loss"`` (a list of every step's loss)
    to one entry per epoch.
    """

    params: Any
    opt_state: Any
    history: dict[str, list[float]]


class NonFiniteLossError(PurenetError, ArithmeticError):
    """Training met a non-finite loss or gradient; the last good state is kept on the error."""

    def __init__(self, step: int, params: Any, opt_state: Any, history: dict | None = None):
        super().__init__(
            "fit",
            f"the loss or a gradient was not finite at step {step}; training stopped, "
            "and error.params / error.opt_state hold the state from before that step",
        )
        self.step = step
        self.params = params
        self.opt_state = opt_state
        self.history = history or {}


class ResumeError(PurenetError, ValueError):
    """``fit`` refused to resume a checkpoint (another run's, impossible metadata), or found none."""


__all__ = [
    "DEVICE_DATA_BYTES",
    "DEVICE_DATA_FRACTION",
    "LEARNING_RATE",
    "ON_NONFINITE",
    "STEP_LOSS",
    "FitResult",
    "Loss",
    "Metric",
    "NonFiniteLossError",
    "ResumeError",
    "StepOutput",
    "TrainState",
]
