"""One training step, and K of them in one dispatch.

``make_train_step`` builds one step: the loss, its gradients by ``jax.grad``,
an optax update.  ``_runner`` builds what ``fit`` dispatches: where the data
fits on the device it stays there, and K steps run in one compiled
``lax.scan`` that gathers each minibatch on the device (at small models the
per-step dispatch of a Python loop is what costs, and fusing K steps removes
K-1 of them); otherwise the same step runs once per dispatch on minibatches
gathered on the host.

Donation: the state passed to a step is donated to it (``jax.jit``'s
``donate_argnums``), so XLA writes the new params and optimizer state into
the old buffers.  That halves the state's device memory and, on a GPU,
saves allocating fresh outputs every step (the small MLP's step on an H200:
0.27 against 0.44 ms; ``benchmarks/RESULTS.md``).  ``fit`` copies the
params it is given first, so the caller's arrays are never consumed.

Non-finite losses and gradients: the step computes a ``finite`` flag.  With
``on_nonfinite="stop"`` the first such step is not applied and the state
freezes (every later step leaves it alone, so ``fit`` needs only one host
sync per epoch to notice); with ``"skip"`` such a step is skipped and
training goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from purenet.compiled import cached
from purenet.core import ConfigError, Layer
from purenet.precision import Policy, check_policy, mixed_precision
from purenet.train.base import ON_NONFINITE, Loss, StepOutput, TrainState
from purenet.trees import all_finite


def _step_function(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    regularizer: Callable[[Any], jax.Array] | None,
    policy: Policy | None,
    on_nonfinite: str,
) -> Callable[[TrainState, Any, Any, jax.Array], tuple[TrainState, StepOutput]]:
    """The un-jitted step, for ``jax.jit`` alone or inside ``lax.scan``."""
    if on_nonfinite not in ON_NONFINITE:
        raise ConfigError("fit", f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    scale = 1.0
    if policy is not None:
        model, scale = mixed_precision(model, check_policy(policy)), policy.loss_scale

    def cost(params, x, y, key):
        value = loss(model.apply(params, x, key=key, train=True), y)
        if regularizer is not None:
            value = value + regularizer(params)
        return value * scale, value

    def update(grads, opt_state, params):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def step(state: TrainState, x, y, key):
        (_, value), grads = jax.value_and_grad(cost, has_aux=True)(state.params, x, y, key)
        if scale != 1.0:  # a static loss scale (float16): undo it on the gradients
            grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
        finite = jnp.isfinite(value) & all_finite(grads)
        if on_nonfinite == "stop":  # one bad step freezes the state for good
            healthy = apply = state.healthy & finite
        else:  # "skip": only the bad step itself is not applied
            healthy, apply = state.healthy, finite
        params, opt_state = _guarded(update, apply, grads, state.opt_state, state.params)
        return TrainState(params, opt_state, healthy), StepOutput(value, finite)

    return step


def _guarded(update: Callable, apply: jax.Array, grads, opt_state, params):
    """``update(grads, opt_state, params)`` where ``apply``, else ``(params, opt_state)`` unchanged.

    Two spellings of one thing, chosen per backend from measurements
    (``benchmarks/RESULTS.md``): on a CPU a ``lax.cond`` runs the update only
    when it applies and updates the donated buffers in place, where selecting
    with ``where`` made XLA copy the state (the small MLP's step: 3% over an
    unguarded one, against 11%); on a GPU a conditional costs a round trip
    for its predicate, so the update runs and ``where`` selects, fused into it.
    """

    def select(*operands):
        new_params, new_opt_state = update(*operands)
        keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
        return jax.tree_util.tree_map(keep, new_params, params), jax.tree_util.tree_map(
            keep, new_opt_state, opt_state
        )

    def branch(*operands):
        return jax.lax.cond(apply, update, lambda g, o, p: (p, o), *operands)

    return jax.lax.platform_dependent(grads, opt_state, params, cpu=branch, default=select)


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    regularizer: Callable[[Any], jax.Array] | None = None,
    *,
    policy: Policy | None = None,
    on_nonfinite: str = "stop",
    donate: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, StepOutput]]:
    """Build a jit-compiled step: loss, gradients by ``jax.grad``, an optax update.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``, e.g. ``softmax_cross_entropy``.
      optimizer: an optax gradient transformation.
      regularizer: optional ``params -> lambda * Omega(params)`` added to the cost.
      policy: a mixed-precision ``Policy`` (``purenet.policy("bfloat16")``):
        params stay in its param dtype, the network computes in its compute
        dtype, the loss in its output dtype.
      on_nonfinite: ``"stop"``: a non-finite loss or gradient is not applied
        and ``state.healthy`` becomes False, after which no step changes the
        state; ``"skip"``: such a step is not applied and training goes on.
      donate: donate the state passed in to the step (the default; see the
        module docstring); ``False`` keeps it readable after the call.

    Returns:
      ``step(state, x, y, key) -> (state, StepOutput(loss, finite))``, where
      ``state = TrainState(params, optimizer.init(params), jnp.array(True))``.
    """
    step = _step_function(model, loss, optimizer, regularizer, policy, on_nonfinite)
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def _scan_steps(step: Callable, batch_sharding: NamedSharding | None) -> Callable:
    """K steps in one compiled call: each minibatch gathered on the device from its indices."""

    def run(state, x, y, indices, keys):
        def body(state, inputs):
            index, key = inputs
            xb, yb = jnp.take(x, index, axis=0), jnp.take(y, index, axis=0)
            if batch_sharding is not None:
                xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
                yb = jax.lax.with_sharding_constraint(yb, batch_sharding)
            return step(state, xb, yb, key)

        return jax.lax.scan(body, state, (indices, keys))

    return jax.jit(run, donate_argnums=(0,))


def _host_fed_steps(step: Callable, batch_sharding: NamedSharding | None) -> Callable:
    """For data too large for the device: the same steps, one dispatch each, batches gathered on the host."""

    def run(state, x, y, indices, keys):
        losses, finites = [], []
        for index, key in zip(np.asarray(indices), keys):
            xb, yb = x[index], y[index]
            if batch_sharding is not None:
                xb, yb = jax.device_put(xb, batch_sharding), jax.device_put(yb, batch_sharding)
            state, out = step(state, xb, yb, key)
            losses.append(out.loss)
            finites.append(out.finite)
        return state, StepOutput(jnp.stack(losses), jnp.stack(finites))

    return run


@cached
def _runner(model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device) -> Callable:
    """The compiled loop ``fit`` dispatches: K scanned steps on device data, else host-fed steps.

    Built in purenet's one bounded compile cache (``purenet.compiled``), so
    fit called again with the same model, loss, optimizer and options reaches
    the same jitted function and compiles nothing; with an unhashable
    argument (a regularizer object holding arrays, say) it is built afresh.
    """
    step = _step_function(model, loss, optimizer, regularizer, policy, on_nonfinite)
    if on_device:
        return _scan_steps(step, batch_sharding)
    return _host_fed_steps(jax.jit(step, donate_argnums=(0,)), batch_sharding)


__all__ = ["make_train_step"]
