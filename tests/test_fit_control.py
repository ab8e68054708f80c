"""Issue 18: fit's training-loop control: callbacks, EarlyStopping, KeepCheckpoints, lr and step losses."""

import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn
from purenet import checkpoint
from purenet.train.callbacks import EarlyStopping

KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
X_VAL = RNG.standard_normal((32, 4)).astype(np.float32)
Y_VAL = (X_VAL[:, 0] > 0).astype(int) + (X_VAL[:, 1] > 0)
MODEL = pn.serial(pn.Dense(8), pn.Tanh(), pn.Dense(3))
_, PARAMS = MODEL.init(KEY, (-1, 4))
STEPS_PER_EPOCH = 4  # 64 examples, batch 16


def run(epochs=3, *, optimizer=None, **kwargs):
    arguments = dict(
        loss=pn.softmax_cross_entropy, batch_size=16, key=KEY, progress=False, validation=(X_VAL, Y_VAL),
        metrics={"accuracy": pn.accuracy},
    )  # fmt: skip
    arguments.update(kwargs)
    return pn.fit(MODEL, PARAMS, X, Y, optimizer=optimizer or optax.adam(1e-2), epochs=epochs, **arguments)


class Recorder:
    """Keeps every epoch's params (the callback's copy) and the epochs it saw."""

    def __init__(self):
        self.params, self.epochs = [], []

    def on_epoch_end(self, epoch, history, state):
        self.epochs.append(epoch)
        self.params.append(state.params)


def leaves_equal(a, b):
    return all(
        np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


# --------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------


def test_a_function_returning_true_stops_after_that_epoch(tmp_path):
    seen = []

    def stop_at_two(epoch, history, state):
        seen.append((epoch, len(history["loss"])))
        return epoch == 2

    path = tmp_path / "run"
    params, _, history = run(epochs=10, callbacks=[stop_at_two], checkpoint_path=path)
    assert seen == [(1, 1), (2, 2)]  # called after each epoch is recorded
    assert len(history["loss"]) == 2
    assert checkpoint.read_metadata(path)["epoch"] == 2  # the stopping epoch is still saved
    assert not leaves_equal(params, PARAMS)


def test_callbacks_get_a_copy_they_may_keep_across_epochs():
    recorder = Recorder()
    params, _, _ = run(epochs=3, callbacks=[recorder])
    assert recorder.epochs == [1, 2, 3]
    # fit donated its own buffers to the next epoch; the kept copies are still readable and distinct
    assert not leaves_equal(recorder.params[0], recorder.params[1])
    assert leaves_equal(recorder.params[-1], params)


def test_every_callback_runs_even_after_one_asks_to_stop():
    recorder = Recorder()
    _, _, history = run(epochs=5, callbacks=[lambda epoch, h, s: True, recorder])
    assert recorder.epochs == [1] and len(history["loss"]) == 1


@pytest.mark.parametrize(
    "callbacks, message",
    [
        (EarlyStopping(), "callbacks must be a list of callbacks, got EarlyStopping; wrap one in [...]"),
        (lambda e, h, s: None, "callbacks must be a list of callbacks, got function"),
        ([3], "callbacks[0] must be a function (epoch, history, state) or an object with on_epoch_end"),
    ],
)
def test_a_wrong_callbacks_argument_is_refused(callbacks, message):
    with pytest.raises(pn.ConfigError, match="fit") as error:
        run(callbacks=callbacks)
    assert message in str(error.value)


@pytest.mark.parametrize("answer", ["stop", 1, {"stop": True}])
def test_a_callback_returning_anything_but_a_bool_is_refused(answer):
    with pytest.raises(pn.ConfigError, match=r"callbacks\[0\] \(<lambda>\) returned .* at epoch 1"):
        run(callbacks=[lambda epoch, history, state: answer])


def test_on_train_end_must_return_a_train_state_or_none():
    class Bad:
        def on_train_end(self, history, state):
            return state.params

    with pytest.raises(pn.ConfigError, match=r"callbacks\[0\] \(Bad\)\.on_train_end returned tuple"):
        run(epochs=1, callbacks=[Bad()])


# --------------------------------------------------------------------------
# EarlyStopping
# --------------------------------------------------------------------------


def expected_stop(values, patience, min_delta, mode):
    """An independent reading of the rule: (stopped epoch or None, best epoch), epochs counted from 1."""
    best_epoch, best = None, None
    for epoch, value in enumerate(values, start=1):
        if np.isnan(value):
            pass  # NaN never improves
        elif best is None or (value < best - min_delta if mode == "min" else value > best + min_delta):
            best_epoch, best = epoch, value
        if epoch - (best_epoch or 0) >= patience:
            return epoch, best_epoch
    return None, best_epoch


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan"))), min_size=1, max_size=20),
    patience=st.integers(1, 5),
    min_delta=st.sampled_from([0.0, 0.1, 1.0]),
    mode=st.sampled_from(["min", "max"]),
)
def test_early_stopping_follows_the_rule(values, patience, min_delta, mode):
    stop = EarlyStopping("val_score", patience=patience, min_delta=min_delta, mode=mode, restore_best=False)
    stop.on_train_begin({"loss": []}, ("loss", "val_score"))
    history, stopped = {"val_score": []}, None
    for epoch, value in enumerate(values, start=1):
        history["val_score"].append(value)
        if stop.on_epoch_end(epoch, history, state=None):
            stopped = epoch
            break
    want_stop, want_best = expected_stop(values, patience, min_delta, mode)
    assert stopped == want_stop == stop.stopped_epoch
    assert stop.best_epoch == want_best


def test_early_stopping_restores_the_best_epochs_params(capsys):
    stop, recorder = EarlyStopping("val_loss", patience=2), Recorder()
    # a learning rate so large that validation loss rises after the first epochs
    params, _, history = run(epochs=30, optimizer=optax.sgd(3.0), callbacks=[stop, recorder])
    assert stop.stopped_epoch == len(history["loss"]) < 30
    best = int(np.nanargmin(history["val_loss"])) + 1
    assert stop.best_epoch == best and stop.stopped_epoch == best + 2
    assert leaves_equal(params, recorder.params[best - 1])
    figures = pn.evaluate(MODEL, params, X_VAL, Y_VAL, loss=pn.softmax_cross_entropy)
    np.testing.assert_allclose(figures["loss"], history["val_loss"][best - 1], rtol=1e-5)
    err = capsys.readouterr().err
    assert f"stopped training after epoch {best + 2}: val_loss has not improved for 2 epochs" in err
    assert f"restored the params of epoch {best}" in err


def test_early_stopping_on_accuracy_rises_and_keeps_the_last_params_when_asked():
    stop, recorder = EarlyStopping("val_accuracy", patience=1, restore_best=False), Recorder()
    params, _, history = run(epochs=40, callbacks=[stop, recorder])
    assert stop.monitor.mode == "max"
    assert leaves_equal(params, recorder.params[-1])
    if stop.stopped_epoch is not None:
        assert history["val_accuracy"][-1] <= history["val_accuracy"][stop.best_epoch - 1]


def test_early_stopping_counts_patience_across_a_resume(tmp_path):
    path = tmp_path / "run"
    run(epochs=3, optimizer=optax.sgd(3.0), checkpoint_path=path)
    stop = EarlyStopping("val_loss", patience=2, restore_best=False)
    _, _, history = run(epochs=30, optimizer=optax.sgd(3.0), checkpoint_path=path, callbacks=[stop])
    want_stop, want_best = expected_stop(history["val_loss"], 2, 0.0, "min")
    assert (stop.stopped_epoch, stop.best_epoch) == (want_stop, want_best)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EarlyStopping("val_los"), "monitor 'val_los' is not in fit's history"),
        (lambda: EarlyStopping("grad_norm", mode="min"), "monitor 'grad_norm' is not in fit's history"),
        (lambda: EarlyStopping(patience=0), "patience must be an integer >= 1"),
        (lambda: EarlyStopping(mode="down"), "mode must be one of ('auto', 'min', 'max'), got 'down'"),
        (lambda: EarlyStopping(min_delta=-1.0), "min_delta must be a finite number >= 0"),
        (lambda: EarlyStopping(min_delta=float("nan")), "min_delta must be a finite number >= 0"),
        (lambda: EarlyStopping(restore_best="yes"), "restore_best must be True or False"),
        (lambda: EarlyStopping(monitor=None), "monitor must be a history key"),
    ],
)
def test_early_stopping_refuses_bad_arguments_before_training(make, message):
    recorder = Recorder()
    with pytest.raises(pn.ConfigError, match="EarlyStopping") as error:
        run(epochs=2, callbacks=[make(), recorder])
    assert message in str(error.value)
    assert recorder.epochs == []  # refused before the first epoch


def test_a_metric_of_unknown_direction_needs_a_mode():
    with pytest.raises(pn.ConfigError, match="cannot tell whether 'val_f1' should fall or rise: pass mode="):
        run(callbacks=[EarlyStopping("val_f1")], metrics={"f1": pn.accuracy})
    stop = EarlyStopping("val_f1", mode="max", patience=1)
    run(epochs=2, callbacks=[stop], metrics={"f1": pn.accuracy})
    assert stop.monitor.mode == "max"


def test_a_val_monitor_without_validation_says_so():
    with pytest.raises(pn.ConfigError, match=r"val_ metrics need fit\(validation=\.\.\.\)"):
        run(callbacks=[EarlyStopping("val_loss")], validation=None, metrics=None)


# --------------------------------------------------------------------------
# The history: learning rate and step losses
# --------------------------------------------------------------------------


def test_the_history_holds_the_scheduled_learning_rate_of_each_epochs_last_step():
    schedule = optax.exponential_decay(1e-2, transition_steps=3, decay_rate=0.5)
    _, _, history = run(epochs=4, optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=schedule))
    want = [float(schedule(STEPS_PER_EPOCH * epoch - 1)) for epoch in range(1, 5)]
    np.testing.assert_allclose(history["learning_rate"], want, rtol=1e-6)


def test_a_constant_injected_learning_rate_is_recorded_and_a_plain_one_is_not():
    _, _, injected = run(epochs=2, optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.05))
    np.testing.assert_allclose(injected["learning_rate"], [0.05, 0.05], rtol=1e-6)
    _, _, plain = run(epochs=1, optimizer=optax.sgd(0.05))
    assert "learning_rate" not in plain  # it cannot be read from a plain optimizer's state


def test_step_losses_are_every_steps_loss_and_average_to_the_epoch_loss():
    _, _, history = run(epochs=2, step_losses=True)
    assert [len(losses) for losses in history["step_loss"]] == [STEPS_PER_EPOCH] * 2
    np.testing.assert_allclose([np.mean(s) for s in history["step_loss"]], history["loss"], rtol=1e-6)


def test_step_losses_match_the_step_by_step_loop():
    """The fused loop's per-step losses are the losses make_train_step reports, step by step."""
    _, _, fused = run(epochs=1, step_losses=True, steps_per_dispatch=STEPS_PER_EPOCH)
    _, _, single = run(epochs=1, step_losses=True, steps_per_dispatch=1)
    np.testing.assert_allclose(fused["step_loss"][0], single["step_loss"][0], rtol=1e-5)


def test_a_resume_that_adds_step_losses_pads_the_earlier_epochs(tmp_path):
    path = tmp_path / "run"
    run(epochs=1, checkpoint_path=path)
    _, _, history = run(epochs=2, checkpoint_path=path, step_losses=True)
    assert history["step_loss"][0] == [] and len(history["step_loss"][1]) == STEPS_PER_EPOCH
    _, _, again = run(epochs=3, checkpoint_path=path, step_losses=True)  # and resumes from that
    assert len(again["loss"]) == len(again["step_loss"]) == 3


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_step_losses_must_be_a_bool(bad):
    with pytest.raises(pn.ConfigError, match="step_losses must be True or False"):
        run(step_losses=bad)


def test_a_checkpoint_path_in_a_missing_directory_is_created(tmp_path):
    path = tmp_path / "runs" / "deep" / "digits"
    run(epochs=1, checkpoint_path=path)
    assert checkpoint.read_metadata(path)["epoch"] == 1
