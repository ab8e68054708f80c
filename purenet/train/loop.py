"""fit: epochs of reshuffled minibatches, K steps fused into one dispatch.

``fit`` runs epochs of reshuffled minibatches through the compiled loop of
``purenet.train.step``.  Where the data fits on the device it stays there
and ``steps_per_dispatch`` steps run in one compiled ``lax.scan``.  The
fused and the step-by-step loop draw the same shuffles and the same per-step
keys, so they train the same params.

Non-finite losses and gradients: with ``on_nonfinite="stop"`` (default) the
state freezes at the first non-finite step, and ``fit`` raises
``NonFiniteLossError`` naming the step and holding the last good params and
optimizer state.  With ``"skip"`` such a step is skipped and training goes
on; ``history["skipped"]`` counts them per epoch.  fit's guard decides
before the optimizer, so an ``optax.apply_if_finite`` inside it never sees a
non-finite step (its ``max_consecutive_errors`` is never reached): fit warns
that it is there, and ``"skip"`` is its equivalent.

Resuming, starting over and refusing another run's checkpoint:
``purenet.train.resume``.

Multi-device: ``fit(..., mesh=mesh)`` trains data-parallel, each minibatch
sharded over the mesh axis ``data_axis`` and the params and optimizer state
replicated; XLA inserts the all-reduce of the gradients (GSPMD).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from purenet.core import ConfigError, Layer, check_key
from purenet.data import check_arrays, check_labels
from purenet.precision import Policy, check_policy
from purenet.shapes import require_positive_int
from purenet.train import callbacks as fit_callbacks
from purenet.train import keep as fit_keep
from purenet.train.base import (
    LEARNING_RATE,
    STEP_LOSS,
    FitResult,
    Loss,
    Metric,
    NonFiniteLossError,
    StepOutput,
    TrainState,
)
from purenet.train.evaluation import (
    _evaluate_batches,
    _evaluator,
    check_metrics,
    label_classes,
    trace_metrics,
)
from purenet.train.history import append_epoch, fits_own, pad_epoch
from purenet.train.inputs import (
    _check_shapes_before_training,
    _check_validation,
    _close,
    _device_data_budget,
    _mesh_shardings,
    _progress_bar,
    _warn_if_apply_if_finite,
)
from purenet.train.resume import (
    check_resume_policy,
    check_writable,
    configuration,
    injected_hyperparams,
    save,
    start,
)
from purenet.train.step import _runner


def fit(
    model: Layer, params: Any, x: Any, y: Any, *, loss: Loss, optimizer: optax.GradientTransformation,
    epochs: int, batch_size: int, key: jax.Array, regularizer: Callable[[Any], jax.Array] | None = None,
    validation: tuple[Any, Any] | None = None, metrics: Mapping[str, Metric] | None = None,
    steps_per_dispatch: int | None = None, policy: Policy | None = None, on_nonfinite: str = "stop",
    mesh: Mesh | None = None, data_axis: str = "data", checkpoint_path: str | os.PathLike | None = None,
    resume: str = "auto", progress: bool | None = None, callbacks: Sequence[Any] | None = None,
    step_losses: bool = False,
) -> FitResult:  # fmt: skip
    """Train for ``epochs`` passes over (x, y) in minibatches reshuffled from ``key`` each epoch.

    Args:
      model: the network.
      params: its initial params (copied: fit never consumes them).
      x: the training inputs, first axis the examples.
      y: the training targets, first axis the examples.
      loss: ``loss(outputs, targets) -> scalar`` (as for ``make_train_step``, as are the next four).
      optimizer: an optax gradient transformation.
      regularizer: optional ``params -> lambda * Omega(params)`` added to the cost.
      policy: a mixed-precision ``Policy``.
      on_nonfinite: ``"stop"`` (raise, keeping the last good state) or ``"skip"``.
      epochs: the passes over the data to reach, >= 1 (resumed ones count).
      batch_size: examples per step, >= 1, capped at the dataset size (a partial last one is dropped).
      key: PRNG key for the shuffles and for stochastic layers (dropout).
      validation: ``(x_val, y_val)`` evaluated after every epoch.
      metrics: ``{name: fn(outputs, targets) -> scalar}`` on the validation data, e.g. ``pn.accuracy``
        (so they need ``validation``; a metric named ``"loss"`` would hide ``val_loss`` and is refused).
      steps_per_dispatch: steps fused into one ``lax.scan`` (default: an epoch, up to 256).
      mesh: train data-parallel, the minibatch sharded over this mesh's axis ``data_axis``.
      data_axis: that axis; ``batch_size`` must be a multiple of its size.
      checkpoint_path: save state, history and configuration there after every epoch, atomically.
      resume: ``"auto"`` resumes a checkpoint there, saying so; ``"never"`` starts over, saying
        so; ``"require"`` fails without one; another run's is refused (``purenet.train.resume``).
      progress: a tqdm bar (loss, examples/s); default: on a terminal without ``CI``.
      callbacks: called at each epoch's end; one returning True stops training
        (``purenet.train.callbacks``: ``pn.EarlyStopping``, ``pn.KeepCheckpoints``).
      step_losses: also keep every step's loss, ``history["step_loss"]`` one list per epoch.

    Returns:
      ``FitResult(params, opt_state, history)``: history as ``FitResult`` says, with
      ``"learning_rate"`` (each epoch's last step) where ``optax.inject_hyperparams`` keeps one.

    Raises:
      NonFiniteLossError: with ``on_nonfinite="stop"``: names the step and
        holds the last good params and optimizer state.
      ResumeError: a checkpoint that cannot be resumed, as ``resume`` says.
    """
    epochs, resume, key = _check_call(epochs, resume, key, checkpoint_path)
    callbacks, step_losses = fit_callbacks.check_callbacks(callbacks), _check_step_losses(step_losses)
    fit_keep.check_directories(callbacks, checkpoint_path)
    plan = _prepare(
        model, params, x, y, loss=loss, optimizer=optimizer, batch_size=batch_size, regularizer=regularizer,
        validation=validation, metrics=metrics, steps_per_dispatch=steps_per_dispatch, policy=policy,
        on_nonfinite=on_nonfinite, mesh=mesh, data_axis=data_axis, step_losses=step_losses,
    )  # fmt: skip
    state, key, history, start_epoch = _start(plan, params, optimizer, key, checkpoint_path, resume, epochs)
    stop = fit_callbacks.begin(callbacks, history, _history_keys(plan, state, metrics))
    epochs_left = range(start_epoch, start_epoch if stop else epochs)  # a callback may stop it at once
    state = _train(plan, state, key, history, epochs_left, callbacks, checkpoint_path, progress)
    state = fit_callbacks.end(callbacks, history, state)
    return FitResult(state.params, state.opt_state, history)


def _train(
    plan, state: TrainState, key: jax.Array, history: dict, epochs: range, callbacks: tuple, checkpoint_path,
    progress,
) -> TrainState:  # fmt: skip
    """The epochs themselves: run, record, call back, checkpoint; stop early where a callback asks."""
    bar = _progress_bar(progress, total=len(epochs) * plan.steps_per_epoch * plan.batch_size)
    try:
        for epoch in epochs:
            started = time.perf_counter()
            state, key, outputs, hyperparams = _run_epoch(plan, state, key, bar)
            _record_epoch(plan, epoch, state, outputs, hyperparams, history)
            append_epoch(history, "seconds", time.perf_counter() - started, epoch)
            pad_epoch(history, epoch + 1, only=fits_own)  # callbacks (KeepCheckpoints) see it whole
            try:
                stop = fit_callbacks.epoch_end(callbacks, epoch + 1, history, state)
            finally:  # a callback that raises still leaves the epoch's checkpoint: nothing trained is lost
                pad_epoch(history, epoch + 1)  # and the names callbacks record, once they have
                _report_epoch(plan, epoch, state, key, history, bar, checkpoint_path)
            if stop:
                break
    finally:
        _close(bar)
    return state


# --------------------------------------------------------------------------
# fit's parts: prepare, start, run one epoch, record it
# --------------------------------------------------------------------------


def _check_call(epochs: Any, resume: Any, key: Any, checkpoint_path: Any) -> tuple[int, str, jax.Array]:
    """fit's own arguments, checked before anything runs (the data: ``_prepare``)."""
    if checkpoint_path is not None:
        check_writable(checkpoint_path)
    return require_positive_int("fit", "epochs", epochs), check_resume_policy(resume), check_key("fit", key)


class _Plan(NamedTuple):
    """What ``fit`` fixes before its first step, from its arguments."""

    x: Any  # the training data, on the device where it fits there
    y: Any
    validation: tuple[np.ndarray, np.ndarray] | None
    batch_size: int  # capped at the dataset size
    steps_per_epoch: int
    steps_per_dispatch: int
    on_nonfinite: str
    replicated: NamedSharding | None  # the state's sharding on a mesh
    run: Callable  # the compiled loop: run(state, x, y, indices, keys) -> (state, StepOutput)
    evaluate_on: Callable  # the compiled evaluator of the validation data
    config: dict  # what its checkpoints record about the run (purenet.train.resume.configuration)
    step_losses: bool  # record every step's loss in history["step_loss"]


def _prepare(
    model: Layer,
    params: Any,
    x: Any,
    y: Any,
    *,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    regularizer: Callable[[Any], jax.Array] | None,
    validation: tuple[Any, Any] | None,
    metrics: Mapping[str, Metric] | None,
    steps_per_dispatch: int | None,
    policy: Policy | None,
    on_nonfinite: str,
    mesh: Mesh | None,
    data_axis: str,
    step_losses: bool,
) -> _Plan:
    """Check fit's arguments and data, place the data, and fetch the compiled loop and evaluator."""
    batch_size = require_positive_int("fit", "batch_size", batch_size)
    metrics = check_metrics("fit", metrics)
    if metrics and validation is None:  # they would be computed on nothing and silently missing
        raise ConfigError(
            "fit", f"metrics {[name for name, _ in metrics]} are computed on the validation data, but "
            "validation is None: pass validation=(x_val, y_val), or drop metrics",
        )  # fmt: skip
    x, y = check_arrays("fit", x, y)
    if x.shape[0] == 0:
        raise ConfigError("fit", "the training set is empty")
    classes = label_classes(model, params, x, y, loss)
    if classes is not None:
        check_labels("fit", y, classes)
    batch_size = min(batch_size, x.shape[0])
    steps_per_epoch = x.shape[0] // batch_size
    if steps_per_dispatch is None:
        steps_per_dispatch = min(steps_per_epoch, 256)
    steps_per_dispatch = min(
        require_positive_int("fit", "steps_per_dispatch", steps_per_dispatch), steps_per_epoch
    )
    _check_shapes_before_training(model, params, x, y, loss)
    if validation is not None:
        validation = _check_validation(validation, x, y, classes)
        batch = validation_batch(batch_size)
        trace_metrics("fit", model, params, metrics, validation[0][:batch], validation[1][:batch])
    policy = None if policy is None else check_policy(policy)

    replicated = batch_sharding = None
    if mesh is not None:
        replicated, batch_sharding = _mesh_shardings(mesh, data_axis, batch_size)
    on_device = x.nbytes + y.nbytes <= _device_data_budget()
    if on_device:
        x, y = jax.device_put(x, replicated), jax.device_put(y, replicated)
    run = _runner(model, loss, optimizer, regularizer, policy, on_nonfinite, batch_sharding, on_device)
    evaluate_on = _evaluator(model, loss, metrics, policy)
    return _Plan(
        x, y, validation, batch_size, steps_per_epoch, steps_per_dispatch, on_nonfinite, replicated, run,
        evaluate_on, {}, step_losses,
    )  # fmt: skip


def _start(
    plan: _Plan,
    params: Any,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    checkpoint_path,
    resume,
    epochs,
) -> tuple[TrainState, jax.Array, dict[str, list[float]], int]:
    """The state, key, history and epoch to start from: fresh, or resumed (``purenet.train.resume``)."""
    params = jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, copy=True), params)  # the runner donates it
    state = TrainState(params, optimizer.init(params), jnp.array(True))
    plan.config.update(configuration(state, plan.batch_size))
    _warn_if_apply_if_finite(state.opt_state, plan.on_nonfinite)
    state, key, history, start_epoch = start(checkpoint_path, resume, state, key, epochs, plan.config)
    if plan.replicated is not None:
        state = jax.device_put(state, plan.replicated)
    return state, key, history, start_epoch


def _run_epoch(
    plan: _Plan, state: TrainState, key: jax.Array, bar
) -> tuple[TrainState, jax.Array, StepOutput, dict[str, float]]:
    """One epoch of reshuffled minibatches: the new state and key, every step's loss and finite flag,
    and the optimizer's injected hyperparameters after its last step.

    The steps' outputs and the hyperparameters come to the host once, at the
    end: the dispatches queue up behind one another without a host sync.
    """
    key, shuffle_key, steps_key = jax.random.split(key, 3)
    # the epoch's batches and keys come to the host once; slicing them per dispatch is then free
    order = np.asarray(jax.random.permutation(shuffle_key, plan.x.shape[0]))
    indices = order[: plan.steps_per_epoch * plan.batch_size].reshape(plan.steps_per_epoch, plan.batch_size)
    step_keys = jax.random.split(steps_key, plan.steps_per_epoch)
    if not jnp.issubdtype(step_keys.dtype, jax.dtypes.prng_key):  # typed keys stay on the device
        step_keys = np.asarray(step_keys)
    outputs = []
    for first in range(0, plan.steps_per_epoch, plan.steps_per_dispatch):
        chunk = slice(first, first + plan.steps_per_dispatch)
        state, out = plan.run(state, plan.x, plan.y, indices[chunk], step_keys[chunk])
        outputs.append(out)
        if bar is not None:
            bar.update(len(indices[chunk]) * plan.batch_size)
    fetched, hyperparams = jax.device_get((outputs, _learning_rate(state.opt_state)))
    losses = np.concatenate([np.asarray(out.loss) for out in fetched])
    finite = np.concatenate([np.asarray(out.finite) for out in fetched])
    return state, key, StepOutput(losses, finite), {n: float(v) for n, v in hyperparams.items()}


def _report_epoch(plan: _Plan, epoch: int, state: TrainState, key, history, bar, checkpoint_path) -> None:
    """Show the finished epoch on the progress bar and save its checkpoint, if asked for."""
    if bar is not None:
        bar.set_postfix(epoch=epoch + 1, loss=f"{history['loss'][-1]:.4f}")
    if checkpoint_path is not None:
        save(checkpoint_path, state, key, history, epoch + 1, plan.steps_per_epoch, plan.config)


def _record_epoch(
    plan: _Plan, epoch: int, state: TrainState, outputs: StepOutput, hyperparams: dict[str, float],
    history: dict[str, list],
) -> None:  # fmt: skip
    """Append an epoch's mean loss, skipped steps, hyperparameters and validation figures to ``history``.

    Raises:
      NonFiniteLossError: with ``on_nonfinite="stop"``, for the epoch's first
        non-finite step; the state froze there, so it is the last good one.
    """
    finite = outputs.finite
    if plan.on_nonfinite == "stop" and not finite.all():
        bad_step = epoch * plan.steps_per_epoch + int(np.argmin(finite))
        raise NonFiniteLossError(bad_step, state.params, state.opt_state, history)
    losses = outputs.loss[finite]
    append_epoch(history, "loss", float(np.mean(losses)) if losses.size else float("nan"), epoch)
    append_epoch(history, "skipped", int((~finite).sum()), epoch)
    if plan.step_losses:
        append_epoch(history, STEP_LOSS, [float(value) for value in outputs.loss], epoch, missing=[])
    for name, value in hyperparams.items():
        append_epoch(history, name, value, epoch)
    if plan.validation is not None:
        figures = _evaluate_batches(
            plan.evaluate_on, state.params, *plan.validation, batch_size=validation_batch(plan.batch_size)
        )
        for name, value in figures.items():
            append_epoch(history, f"val_{name}", value, epoch)


def validation_batch(batch_size: int) -> int:
    """The batch the validation data is evaluated in: the training batch, at least 1024 (fewer dispatches)."""
    return max(batch_size, 1024)


def _learning_rate(opt_state: Any) -> dict[str, Any]:
    """The learning rates ``optax.inject_hyperparams`` keeps in the state: ``{"learning_rate": lr}``,
    one ``"learning_rate/<group>"`` per injected state where there are several, or ``{}``."""
    injected = injected_hyperparams(opt_state)
    return {n: v for n, v in injected.items() if n == LEARNING_RATE or n.startswith(LEARNING_RATE + "/")}


def _history_keys(plan: _Plan, state: TrainState, metrics: Mapping[str, Metric] | None) -> list[str]:
    """The names every epoch of this run records, known before the first step (for callbacks to check)."""
    keys = ["loss", "skipped", "seconds"] + [STEP_LOSS] * plan.step_losses
    keys += list(_learning_rate(state.opt_state))
    if plan.validation is not None:
        keys += ["val_loss"] + [f"val_{name}" for name, _ in check_metrics("fit", metrics)]
    return keys


def _check_step_losses(step_losses: Any) -> bool:
    if not isinstance(step_losses, (bool, np.bool_)):
        raise ConfigError("fit", f"step_losses must be True or False, got {step_losses!r}")
    return bool(step_losses)


__all__ = ["fit"]
