"""Training: a jit-compiled optax step, and fit() with K steps fused into one dispatch.

``make_train_step`` builds one step: the loss, its gradients by ``jax.grad``,
an optax update.  ``fit`` runs epochs of reshuffled minibatches.  Where the
data fits on the device it stays there, and ``steps_per_dispatch`` steps run
in one compiled ``lax.scan`` that gathers each minibatch on the device: at
small models the per-step dispatch of a Python loop is what costs, and fusing
K steps removes K-1 of them.  The fused and the step-by-step loop draw the
same shuffles and the same per-step keys, so they train the same params.

Donation: the state passed to a step is donated to it (``jax.jit``'s
``donate_argnums``), so XLA writes the new params and optimizer state into
the old buffers.  That halves the state's device memory and, on a GPU,
saves allocating fresh outputs every step (the small MLP's step on an H200:
0.27 against 0.44 ms; ``benchmarks/RESULTS.md``).  ``fit`` copies the
params it is given first, so the caller's arrays are never consumed.

Non-finite losses and gradients: the step computes a ``finite`` flag.  With
``on_nonfinite="stop"`` (default) the first such step is not applied, the
state freezes (every later step leaves it alone, so ``fit`` needs only one
host sync per epoch to notice), and ``fit`` raises ``NonFiniteLossError``
naming the step and holding the last good params and optimizer state.
With ``"skip"`` such a step is skipped and training goes on;
``history["skipped"]`` counts them per epoch.

Multi-device: ``fit(..., mesh=mesh)`` trains data-parallel, each minibatch
sharded over the mesh axis ``data_axis`` and the params and optimizer state
replicated; XLA inserts the all-reduce of the gradients (GSPMD).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purenet import checkpoint
from purenet.core import ConfigError, Layer, PurenetError
from purenet.data import check_arrays, check_labels
from purenet.losses import multiclass_hinge, softmax_cross_entropy
from purenet.precision import Policy, check_policy, mixed_precision
from purenet.shapes import require_positive_int
from purenet.trees import all_finite

Loss = Callable[[jax.Array, jax.Array], jax.Array]
Metric = Callable[[jax.Array, jax.Array], jax.Array]
ON_NONFINITE = ("stop", "skip")
DEVICE_DATA_BYTES = 2**30  # where the device does not report its memory: above this, data stays on the host
DEVICE_DATA_FRACTION = 0.25  # otherwise: the share of the device's memory the training data may take


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
    ``"skipped"`` (non-finite steps skipped per epoch) and ``"seconds"``
    (wall time per epoch) to one value per epoch.
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


# --------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The fraction of examples whose largest logit is the label (softmax outputs, integer labels)."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == jnp.reshape(labels, logits.shape[:-1]))


def binary_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The fraction of examples on the right side of logit 0 (a sigmoid unit, targets in {0, 1})."""
    return jnp.mean((logits > 0) == (jnp.reshape(targets, logits.shape) > 0.5))


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
    """
    x, y = check_arrays("evaluate", x, y)
    batch_size = require_positive_int("evaluate", "batch_size", batch_size)
    compute = _evaluator(model if policy is None else mixed_precision(model, policy), loss, metrics or {})
    return _evaluate_batches(compute, params, x, y, batch_size)


def _evaluator(model: Layer, loss: Loss, metrics: Mapping[str, Metric]) -> Callable:
    @jax.jit
    def compute(params, x, y):
        outputs = model.apply(params, x, train=False)
        return {"loss": loss(outputs, y)} | {name: fn(outputs, y) for name, fn in metrics.items()}

    return compute


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------


def fit(
    model: Layer,
    params: Any,
    x: Any,
    y: Any,
    *,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    regularizer: Callable[[Any], jax.Array] | None = None,
    validation: tuple[Any, Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    steps_per_dispatch: int | None = None,
    policy: Policy | None = None,
    on_nonfinite: str = "stop",
    mesh: Mesh | None = None,
    data_axis: str = "data",
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train for ``epochs`` passes over (x, y) in minibatches reshuffled from ``key`` each epoch.

    A trailing partial minibatch is dropped each epoch (it changes with the
    shuffle), so every step compiles to one shape.

    Args:
      model, params: the network and its initial params.
      x, y: the training inputs and targets, first axis the examples.
      loss, optimizer, regularizer, policy, on_nonfinite: as for ``make_train_step``.
      epochs: the number of passes over the data to reach, >= 1 (counting
        those already in a checkpoint being resumed).
      batch_size: examples per step, >= 1 (capped at the dataset size).
      key: PRNG key for the shuffles and for stochastic layers (dropout).
      validation: ``(x_val, y_val)`` evaluated after every epoch.
      metrics: ``{name: fn(outputs, targets) -> scalar}`` evaluated on the
        validation data beside the loss, e.g. ``{"accuracy": pn.accuracy}``.
      steps_per_dispatch: steps fused into one compiled ``lax.scan`` (default:
        a whole epoch, up to 256 steps); 1 runs one dispatch per step.  Data
        larger than 1 GiB is fed from the host one step at a time.
      mesh, data_axis: train data-parallel over ``mesh``'s axis ``data_axis``;
        ``batch_size`` must be a multiple of that axis' size.
      checkpoint_path: save params, optimizer state, PRNG key and history
        there (atomically) after every epoch; if a checkpoint is already
        there, resume from it.  Resuming gives bit-identical params to an
        uninterrupted run on the same device.
      progress: a tqdm progress bar with the loss and examples per second;
        default: shown when stderr is a terminal and ``CI`` is not set.

    Returns:
      ``FitResult(params, opt_state, history)``.

    Raises:
      NonFiniteLossError: with ``on_nonfinite="stop"``: names the step and
        holds the last good params and optimizer state.
    """
    epochs = require_positive_int("fit", "epochs", epochs)
    batch_size = require_positive_int("fit", "batch_size", batch_size)
    x, y = check_arrays("fit", x, y)
    if x.shape[0] == 0:
        raise ConfigError("fit", "the training set is empty")
    classes = _label_classes(model, params, x, y, loss)
    if classes is not None:
        check_labels("fit", y, classes)
    batch_size = min(batch_size, x.shape[0])
    steps_per_epoch = x.shape[0] // batch_size
    if steps_per_dispatch is None:
        steps_per_dispatch = min(steps_per_epoch, 256)
    steps_per_dispatch = min(
        require_positive_int("fit", "steps_per_dispatch", steps_per_dispatch), steps_per_epoch
    )
    if validation is not None:
        validation = check_arrays("fit", *validation, num_classes=classes)
    policy = None if policy is None else check_policy(policy)

    replicated = batch_sharding = None
    if mesh is not None:
        replicated, batch_sharding = _mesh_shardings(mesh, data_axis, batch_size)
    on_device = x.nbytes + y.nbytes <= _device_data_budget()
    if on_device:
        x, y = jax.device_put(x, replicated), jax.device_put(y, replicated)
    run = _runner(model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device)

    params = jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, copy=True), params)  # the runner donates it
    state = TrainState(params, optimizer.init(params), jnp.array(True))
    history: dict[str, list[float]] = {"loss": [], "skipped": [], "seconds": []}
    start_epoch = 0
    if checkpoint_path is not None and checkpoint.exists(checkpoint_path):
        state, key, history, start_epoch = _resume(checkpoint_path, state, key)
    if replicated is not None:
        state = jax.device_put(state, replicated)
    evaluate_on = _evaluator(model if policy is None else mixed_precision(model, policy), loss, metrics or {})
    bar = _progress_bar(progress, total=(epochs - start_epoch) * steps_per_epoch * batch_size)

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        key, shuffle_key, steps_key = jax.random.split(key, 3)
        # the epoch's batches and keys come to the host once; slicing them per dispatch is then free
        order = np.asarray(jax.random.permutation(shuffle_key, x.shape[0]))[: steps_per_epoch * batch_size]
        indices = order.reshape(steps_per_epoch, batch_size)
        step_keys = jax.random.split(steps_key, steps_per_epoch)
        if not jnp.issubdtype(step_keys.dtype, jax.dtypes.prng_key):  # typed keys stay on the device
            step_keys = np.asarray(step_keys)
        outputs = []
        for first in range(0, steps_per_epoch, steps_per_dispatch):
            chunk = slice(first, first + steps_per_dispatch)
            state, out = run(state, x, y, indices[chunk], step_keys[chunk])
            outputs.append(out)  # no host sync here: dispatches queue up behind one another
            if bar is not None:
                bar.update(len(indices[chunk]) * batch_size)
        # one sync per epoch; with "stop" the state froze at the first bad step, so it is the last good one
        fetched = jax.device_get(outputs)
        finite = np.concatenate([np.asarray(out.finite) for out in fetched])
        if on_nonfinite == "stop" and not finite.all():
            _close(bar)
            bad_step = epoch * steps_per_epoch + int(np.argmin(finite))
            raise NonFiniteLossError(bad_step, state.params, state.opt_state, history) from None
        skipped = int((~finite).sum())
        losses = np.concatenate([np.asarray(out.loss) for out in fetched])[finite]
        history["loss"].append(float(np.mean(losses)) if losses.size else float("nan"))
        history["skipped"].append(skipped)
        if validation is not None:
            figures = _evaluate_batches(
                evaluate_on, state.params, *validation, batch_size=max(batch_size, 1024)
            )
            for name, value in figures.items():
                history.setdefault(f"val_{name}", []).append(value)
        history["seconds"].append(time.perf_counter() - started)
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{history['loss'][-1]:.4f}")
        if checkpoint_path is not None:
            checkpoint.save(
                checkpoint_path,
                {"params": state.params, "opt_state": state.opt_state, "key": key},
                epoch=epoch + 1,
                step=(epoch + 1) * steps_per_epoch,
                history=history,
            )
    _close(bar)
    return FitResult(state.params, state.opt_state, history)


def _label_classes(model: Layer, params: Any, x: np.ndarray, y: np.ndarray, loss: Loss) -> int | None:
    """For integer labels fed to a loss over class scores: the number of classes the model outputs."""
    if loss not in (softmax_cross_entropy, multiclass_hinge) or y.dtype.kind not in "iu":
        return None
    return jax.eval_shape(lambda p, xb: model.apply(p, xb), params, x[:1]).shape[-1]  # shapes only


def _runner(model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device) -> Callable:
    """The compiled loop, cached so that fit called again with the same functions does not compile again."""
    args = (model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device)
    try:
        return _cached_runner(*args)
    except TypeError:  # an unhashable argument (a regularizer object with arrays, say): build afresh
        return _build_runner(*args)


def _build_runner(model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device):
    step = _step_function(model, loss, optimizer, regularizer, policy, on_nonfinite)
    if on_device:
        return _scan_steps(step, batch_sharding)
    return _host_fed_steps(jax.jit(step, donate_argnums=(0,)), batch_sharding)


_cached_runner = functools.lru_cache(maxsize=16)(_build_runner)


def _device_data_budget() -> int:
    """Bytes of training data fit keeps on the device: a share of its memory where it reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit * DEVICE_DATA_FRACTION) if limit else DEVICE_DATA_BYTES


def _evaluate_batches(compute: Callable, params: Any, x, y, batch_size: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        for name, value in compute(params, xb, yb).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(xb)
    return {name: total / len(x) for name, total in totals.items()}


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


def _mesh_shardings(mesh: Mesh, axis: str, batch_size: int) -> tuple[NamedSharding, NamedSharding]:
    if not isinstance(mesh, Mesh):
        raise ConfigError("fit", f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ConfigError(
            "fit", f"data_axis {axis!r} is not an axis of the mesh, whose axes are {mesh.axis_names}"
        )
    if batch_size % mesh.shape[axis]:
        raise ConfigError(
            "fit",
            f"batch_size must be a multiple of the {mesh.shape[axis]} devices on mesh axis {axis!r}, "
            f"got {batch_size}",
        )
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis))


def _resume(path, state: TrainState, key: jax.Array) -> tuple[TrainState, jax.Array, dict, int]:
    """Load params, optimizer state, key and history saved by ``fit``; the tree must fit the model's."""
    template = {"params": state.params, "opt_state": state.opt_state, "key": key}
    saved, meta = checkpoint.load(path, like=template)
    restored = TrainState(saved["params"], saved["opt_state"], jnp.array(True))
    return restored, saved["key"], meta["history"], int(meta["epoch"])


def _progress_bar(progress: bool | None, total: int):
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="example", unit_scale=True)  # the rate: examples/s


def _close(bar) -> None:
    if bar is not None:
        bar.close()


__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "StepOutput",
    "TrainState",
    "accuracy",
    "binary_accuracy",
    "evaluate",
    "fit",
    "make_train_step",
]
