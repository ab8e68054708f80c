"""A jit-compiled train step on optax and a plain epoch loop.

The step guards against a non-finite loss or gradient: such an update is not
applied, the step reports itself unhealthy, and every later step leaves the
params alone, so ``fit`` can stop and hand back the last good params and
optimizer state without a host sync after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from purenet.core import ConfigError, Layer, PurenetError, ShapeError, require_positive_int
from purenet.trees import all_finite

Loss = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(NamedTuple):
    """What a step carries: the params, the optimizer state and whether every step so far was finite."""

    params: Any
    opt_state: Any
    healthy: jax.Array


class NonFiniteLossError(PurenetError, ArithmeticError):
    """Training met a non-finite loss or gradient; the last good state is kept on the error."""

    def __init__(self, step: int, params: Any, opt_state: Any):
        super().__init__(
            "fit",
            f"the loss or a gradient was not finite at step {step}; training stopped, "
            "and error.params / error.opt_state hold the state from before that step",
        )
        self.step = step
        self.params = params
        self.opt_state = opt_state


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    regularizer: Callable[[Any], jax.Array] | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """Build a jit-compiled step: loss, gradients by ``jax.grad``, an optax update.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``, e.g. ``softmax_cross_entropy``.
      optimizer: an optax gradient transformation.
      regularizer: optional ``params -> lambda * Omega(params)`` added to the cost.

    Returns:
      ``step(state, x, y, key) -> (state, loss_value)``; the update is skipped
      (and ``state.healthy`` becomes False) when the loss or any gradient is
      not finite, or when an earlier step already was not.
    """

    def cost(params, x, y, key):
        outputs = model.apply(params, x, key=key, train=True)
        value = loss(outputs, y)
        return value if regularizer is None else value + regularizer(params)

    @jax.jit
    def step(state: TrainState, x, y, key):
        value, grads = jax.value_and_grad(cost)(state.params, x, y, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(value) & all_finite(grads)
        healthy = state.healthy & finite
        keep_new = lambda new, old: jnp.where(healthy, new, old)  # noqa: E731
        return TrainState(
            jax.tree_util.tree_map(keep_new, params, state.params),
            jax.tree_util.tree_map(keep_new, opt_state, state.opt_state),
            healthy,
        ), value

    return step


def fit(
    model: Layer,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    regularizer: Callable[[Any], jax.Array] | None = None,
    progress: bool = False,
) -> tuple[Any, Any, list[float]]:
    """Train for ``epochs`` passes over (x, y) in minibatches reshuffled from ``key`` each epoch.

    A trailing partial minibatch is dropped each epoch (it changes with the
    shuffle), so every step compiles to one shape.

    Args:
      model, params: the network and its initial params.
      x, y: the training inputs and targets, first axis the examples.
      loss, optimizer, regularizer: as for ``make_train_step``.
      epochs: passes over the data, >= 1.
      batch_size: examples per step, >= 1 (capped at the dataset size).
      key: PRNG key for shuffling and for stochastic layers (dropout).
      progress: show a progress bar (tqdm, from the ``examples`` extra).

    Returns:
      ``(params, opt_state, history)`` with the mean training loss of each epoch.

    Raises:
      NonFiniteLossError: with the last good params and optimizer state.
    """
    epochs = require_positive_int("fit", "epochs", epochs)
    batch_size = require_positive_int("fit", "batch_size", batch_size)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            "fit", f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ConfigError("fit", "the training set is empty")
    batch_size = min(batch_size, x.shape[0])
    steps_per_epoch = x.shape[0] // batch_size
    step = make_train_step(model, loss, optimizer, regularizer)
    state = TrainState(params, optimizer.init(params), jnp.array(True))
    history: list[float] = []
    bar = _ProgressBar(epochs) if progress else None
    for epoch in range(epochs):
        key, shuffle_key = jax.random.split(key)
        order = jax.random.permutation(shuffle_key, x.shape[0])
        losses, healthy = [], []
        for i in range(steps_per_epoch):
            batch = order[i * batch_size : (i + 1) * batch_size]
            key, step_key = jax.random.split(key)
            state, value = step(state, x[batch], y[batch], step_key)
            losses.append(value)
            healthy.append(state.healthy)
        if not bool(state.healthy):  # one host sync per epoch, not per step
            first_bad = [bool(h) for h in healthy].index(False)
            raise NonFiniteLossError(epoch * steps_per_epoch + first_bad, state.params, state.opt_state)
        history.append(float(jnp.mean(jnp.stack(losses))))
        if bar is not None:
            bar.update(epoch, history[-1])
    if bar is not None:
        bar.close()
    return state.params, state.opt_state, history


class _ProgressBar:
    """A tqdm bar over epochs showing the loss, or plain lines where tqdm is not installed."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the examples extra
            self.bar = None
        else:
            self.bar = tqdm(total=epochs, desc="training", unit="epoch")

    def update(self, epoch: int, loss_value: float) -> None:
        if self.bar is None:
            print(f"epoch {epoch + 1}/{self.epochs}: loss {loss_value:.4f}")
        else:
            self.bar.set_postfix(loss=f"{loss_value:.4f}")
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["NonFiniteLossError", "TrainState", "fit", "make_train_step"]
