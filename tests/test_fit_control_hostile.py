"""Hostile inputs to fit's training-loop control: refused by name before training, nothing lost.

Each test here failed before its fix (the finding's number in the comment).
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn
from purenet import checkpoint
from purenet.train.evaluation import check_metrics

KEY = jax.random.PRNGKey(1)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 2)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)
MODEL = pn.Dense(2)
_, PARAMS = MODEL.init(jax.random.PRNGKey(0), (-1, 2))


def run(epochs=2, **kwargs):
    arguments = dict(
        loss=pn.softmax_cross_entropy, optimizer=optax.sgd(0.1), epochs=epochs, batch_size=8, key=KEY,
        progress=False,
    )  # fmt: skip
    return pn.fit(MODEL, PARAMS, X, Y, **(arguments | kwargs))


class Recorder:
    """Records the epochs it saw and their params: empty after a refusal before training."""

    def __init__(self):
        self.epochs, self.params = [], []

    def on_epoch_end(self, epoch, history, state):
        self.epochs.append(epoch)
        self.params.append(state.params)


def refused(match, **kwargs):
    """fit refuses with a ConfigError matching ``match``, before its first epoch."""
    recorder = Recorder()
    callbacks = [*kwargs.pop("callbacks", []), recorder]
    with pytest.raises(pn.ConfigError, match=match) as error:
        run(callbacks=callbacks, **kwargs)
    assert recorder.epochs == []
    return error.value


def leaves_equal(a, b):
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return all(np.array_equal(u, v) for u, v in pairs)


# --------------------------------------------------------------------------
# metrics (findings 1, 16, 23)
# --------------------------------------------------------------------------


def test_a_metric_named_loss_is_refused_not_written_over_val_loss():  # 1
    refused(
        r"fit: metrics may not be named 'loss'.*val_loss", validation=(X, Y), metrics={"loss": pn.accuracy}
    )
    with pytest.raises(pn.ConfigError, match="evaluate: metrics may not be named 'loss'"):
        pn.evaluate(MODEL, PARAMS, X, Y, loss=pn.softmax_cross_entropy, metrics={"loss": pn.accuracy})


@settings(max_examples=60, deadline=None)
@given(
    metrics=st.dictionaries(
        st.one_of(st.text(max_size=5), st.integers(), st.sampled_from(["loss", "accuracy", ""])),
        st.one_of(st.just(pn.accuracy), st.integers(), st.none(), st.just(len)),
        max_size=4,
    )
)
def test_metrics_are_accepted_exactly_when_named_by_fresh_strings_and_callable(metrics):  # 16
    good = all(isinstance(n, str) and n and n != "loss" and callable(f) for n, f in metrics.items())
    if good:
        assert check_metrics("fit", metrics) == tuple(metrics.items())
    else:
        with pytest.raises(pn.ConfigError, match="fit: metrics"):
            check_metrics("fit", metrics)


@pytest.mark.parametrize(
    "metrics, match",
    [
        ({1: pn.accuracy}, "metrics' names must be non-empty strings, e.g. 'accuracy', got 1"),
        ({"a": 3}, r"metrics\['a'\] must be a function \(outputs, targets\) -> scalar, got int"),
        ([("a", pn.accuracy)], "metrics must be a mapping"),
    ],
)
def test_bad_metrics_are_refused_before_training(metrics, match):  # 16
    refused(match, validation=(X, Y), metrics=metrics)


def test_metrics_without_validation_are_refused():  # 23
    refused(r"metrics \['accuracy'\] are computed on the validation data", metrics={"accuracy": pn.accuracy})


# --------------------------------------------------------------------------
# learning rates of several injected states (finding 2)
# --------------------------------------------------------------------------


def two_groups(rate_w, rate_b):
    return optax.multi_transform(
        {
            "w": optax.inject_hyperparams(optax.sgd)(learning_rate=rate_w),
            "b": optax.inject_hyperparams(optax.sgd)(learning_rate=rate_b),
        },
        {"w": "w", "b": "b"},
    )


def test_each_groups_learning_rate_is_recorded_and_checked_on_resume(tmp_path):  # 2
    path = tmp_path / "run"
    history = run(optimizer=two_groups(0.1, 0.001), checkpoint_path=path).history
    np.testing.assert_allclose(history["learning_rate/w"], [0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(history["learning_rate/b"], [0.001, 0.001], rtol=1e-6)
    assert "learning_rate" not in history  # neither group's rate passes for the other's
    for changed, name in (
        (two_groups(5.0, 0.001), "learning_rate/w"),
        (two_groups(0.1, 5.0), "learning_rate/b"),
    ):
        with pytest.raises(pn.ResumeError, match=f"{name}: .* saved, 5 now"):
            run(epochs=3, optimizer=changed, checkpoint_path=path)


def test_a_single_injected_rate_keeps_its_plain_name():
    history = run(optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)).history
    assert [k for k in history if k.startswith("learning_rate")] == ["learning_rate"]


# --------------------------------------------------------------------------
# KeepCheckpoints' directory (findings 3, 4, 5, 13)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["best", "best.npz", "epoch-0002", "sub/../epoch-0001.npz"])
def test_a_checkpoint_path_among_the_kept_files_is_refused(tmp_path, name):  # 3
    (tmp_path / "sub").mkdir()
    keep = pn.KeepCheckpoints(tmp_path, last=2, best="loss")
    refused(
        r"checkpoint_path .* in the directory callbacks\[0\]",
        checkpoint_path=tmp_path / name,
        callbacks=[keep],
    )
    assert sorted(os.listdir(tmp_path)) == ["sub"]


def test_two_keepers_on_one_directory_are_refused(tmp_path):  # 3
    (tmp_path / "sub").mkdir()
    one, two = pn.KeepCheckpoints(tmp_path, best="loss"), pn.KeepCheckpoints(tmp_path / "sub" / "..", last=3)
    refused(r"callbacks\[0\] and callbacks\[1\] are KeepCheckpoints on one directory", callbacks=[one, two])


def test_another_runs_best_is_not_adopted_on_resume(tmp_path, capsys):  # 4
    kept, path = tmp_path / "kept", tmp_path / "run"
    run(epochs=1, optimizer=optax.sgd(0.7), callbacks=[pn.KeepCheckpoints(kept, last=None, best="loss")])
    run(epochs=2, checkpoint_path=path)  # this run's first part, without KeepCheckpoints
    capsys.readouterr()
    keep = pn.KeepCheckpoints(kept, last=None, best="loss")
    history = run(epochs=3, checkpoint_path=path, callbacks=[keep]).history
    assert "is not the resumed run's" in capsys.readouterr().err
    assert keep.best_epoch == 3  # its loss falls: only this run's epochs compete
    meta = checkpoint.read_metadata(kept / "best.npz")
    assert meta["epoch"] == 3 and meta["history"]["loss"] == history["loss"]


def test_an_earlier_best_stays_until_this_run_writes_its_own(tmp_path):  # 5
    run(epochs=1, callbacks=[pn.KeepCheckpoints(tmp_path, last=None, best="loss")])
    before = (tmp_path / "best.npz").read_bytes()

    def nan_loss(outputs, targets):
        return pn.softmax_cross_entropy(outputs, targets) * jnp.nan

    keep = pn.KeepCheckpoints(tmp_path, last=None, best="loss")
    run(epochs=2, loss=nan_loss, on_nonfinite="skip", callbacks=[keep])
    assert keep.best_path is None and (tmp_path / "best.npz").read_bytes() == before


def test_an_empty_directory_name_is_refused():  # 13
    with pytest.raises(pn.ConfigError, match="KeepCheckpoints: directory must name a directory, got ''"):
        pn.KeepCheckpoints("")


@pytest.mark.parametrize("name", ["epoch-0009.npz", "best.npz"])
def test_a_file_that_is_not_a_checkpoint_is_refused_and_kept(tmp_path, name):  # 13
    (tmp_path / name).write_bytes(b"my own notes, not a checkpoint")
    recorder = Recorder()
    with pytest.raises(pn.CheckpointError, match=f"{name}' is not a training checkpoint"):
        run(callbacks=[recorder, pn.KeepCheckpoints(tmp_path, last=1, best="loss")])
    assert recorder.epochs == [] and (tmp_path / name).read_bytes() == b"my own notes, not a checkpoint"


# --------------------------------------------------------------------------
# Resumed histories (finding 6) and early stopping across runs (10, 11)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, then",
    [
        (dict(validation=(X, Y), metrics={"accuracy": pn.accuracy}), {}),
        (dict(step_losses=True), {}),
        ({}, dict(step_losses=True, validation=(X, Y))),
    ],
)
def test_every_checkpoint_fit_writes_resumes(tmp_path, first, then):  # 6
    path, lengths = tmp_path / "run", []

    def mine(epoch, history, state):  # a callback's own name, recorded by the first part only
        history.setdefault("mine", []).append(float(epoch))

    def regular(epoch, history, state):  # what callbacks (KeepCheckpoints) see
        lengths.append({name: len(values) for name, values in history.items() if name != "mine"})

    run(epochs=1, checkpoint_path=path, callbacks=[mine], **first)
    run(epochs=2, checkpoint_path=path, callbacks=[regular], **then)
    assert set(lengths[0].values()) == {2}
    history = run(epochs=3, checkpoint_path=path).history  # resumed from what the second part wrote
    assert {len(values) for values in history.values()} == {3}
    assert history["mine"][0] == 1.0 and np.isnan(history["mine"][1:]).all()
    if "step_loss" in history:
        assert [len(losses) > 0 for losses in history["step_loss"]] == [
            "step_losses" in first, "step_losses" in then, False,
        ]  # fmt: skip
    if "val_loss" in history:
        assert [math.isnan(v) for v in history["val_loss"]] == [
            "validation" not in first,
            "validation" not in then,
            True,
        ]


def test_a_finished_early_stopped_run_trains_no_further(tmp_path, capsys):  # 10
    path, flipped = tmp_path / "run", (X, 1 - Y)  # validation loss rises as training fits Y

    def again():
        stop, recorder = pn.EarlyStopping("val_loss", patience=1), Recorder()
        result = run(epochs=10, optimizer=optax.sgd(0.5), checkpoint_path=path, validation=flipped,
                     callbacks=[stop, recorder])  # fmt: skip
        return stop, recorder, result

    stop, _, first = again()
    assert stop.stopped_epoch == 2
    capsys.readouterr()
    stop, recorder, second = again()
    assert recorder.epochs == [] and second.history == first.history and stop.stopped_epoch == 2
    assert (
        "stops before training: val_loss has not improved for 1 of the resumed epochs"
        in capsys.readouterr().err
    )


def test_the_best_state_survives_a_non_finite_loss():  # 11
    def blows_up(outputs, targets):  # finite until the outputs grow past 5 (epoch 7 here)
        return pn.softmax_cross_entropy(outputs, targets) + 0 * jnp.sqrt(5.0 - jnp.abs(outputs).max())

    stop, recorder = pn.EarlyStopping("val_loss", patience=50), Recorder()
    with pytest.raises(pn.NonFiniteLossError):
        run(
            epochs=40,
            loss=blows_up,
            optimizer=optax.sgd(1.0),
            validation=(X, 1 - Y),
            callbacks=[stop, recorder],
        )
    assert stop.best_epoch is not None and len(recorder.epochs) > stop.best_epoch
    assert isinstance(stop.best_state, pn.TrainState)
    assert leaves_equal(stop.best_state.params, recorder.params[stop.best_epoch - 1])


# --------------------------------------------------------------------------
# The callback protocol (findings 14, 15, 17, 21, 22)
# --------------------------------------------------------------------------


def test_a_foreign_state_from_on_train_end_is_refused():  # 14
    _, other = pn.Dense(3).init(jax.random.PRNGKey(0), (-1, 2))

    class Swap:
        def on_train_end(self, history, state):
            return pn.TrainState(other, state.opt_state, state.healthy)

    with pytest.raises(
        pn.ConfigError, match=r"on_train_end returned a state unlike this run's\) at params\['"
    ):
        run(callbacks=[Swap()])


@pytest.mark.parametrize(
    "make",
    [lambda d: pn.EarlyStopping("step_loss", mode="min"), lambda d: pn.KeepCheckpoints(d, best="step_loss")],
)
def test_the_list_valued_step_loss_cannot_be_monitored(tmp_path, make):  # 15
    refused(
        "monitor 'step_loss' records a list of every step's loss",
        step_losses=True,
        callbacks=[make(tmp_path)],
    )


def test_a_class_in_place_of_a_callback_is_refused():  # 17
    refused(r"callbacks\[0\] is the class EarlyStopping, not a callback: pass an instance",
            callbacks=[pn.EarlyStopping])  # fmt: skip


@pytest.mark.parametrize(
    "callback, ok",
    [
        (lambda e, h: None, False),
        (lambda e, h, s, extra: None, False),
        (lambda: None, False),
        (lambda e, h, s: None, True),
        (lambda *args: None, True),
        (lambda e, h, s, extra=1: None, True),
    ],
)
def test_a_function_is_refused_unless_it_takes_epoch_history_state(callback, ok):  # 17
    if ok:
        run(epochs=1, callbacks=[callback])
    else:
        refused(
            r"callbacks\[0\] \(<lambda>\) cannot be called as \(epoch, history, state\)", callbacks=[callback]
        )


def test_a_hook_with_the_wrong_arguments_is_refused():  # 17
    class Begin:
        def on_train_begin(self, history):
            pass

    refused(r"callbacks\[0\]\.on_train_begin cannot be called as \(history, keys\)", callbacks=[Begin()])


@settings(max_examples=8, deadline=None)
@given(stop=st.booleans(), kind=st.sampled_from([np.bool_, jnp.asarray, np.asarray]))
def test_a_bool_scalar_answer_counts_as_a_bool(stop, kind):  # 21
    history = run(epochs=3, callbacks=[lambda e, h, s: kind(stop)]).history
    assert len(history["loss"]) == (1 if stop else 3)


@settings(max_examples=40, deadline=None)
@given(
    value=st.floats(min_value=0, max_value=10, allow_nan=False, width=32),
    kind=st.sampled_from([np.float32, np.float64, jnp.float32, float]),
)
def test_min_delta_takes_any_real_scalar(value, kind):  # 22
    assert pn.EarlyStopping(min_delta=kind(value)).monitor.min_delta == pytest.approx(value)


@pytest.mark.parametrize(
    "bad", [np.float32(-0.5), jnp.float32(np.nan), np.array([0.1]), np.bool_(True), "0.1"]
)
def test_min_delta_still_refuses_what_is_no_finite_number_above_zero(bad):  # 22
    with pytest.raises(pn.ConfigError, match="min_delta must be a finite number >= 0"):
        pn.EarlyStopping(min_delta=bad)


def test_a_failing_callback_still_leaves_the_epochs_checkpoint(tmp_path):
    path = tmp_path / "run"

    def fails_at_two(epoch, history, state):
        if epoch == 2:
            raise RuntimeError("a bug in my callback")

    with pytest.raises(RuntimeError, match="a bug in my callback"):
        run(epochs=4, checkpoint_path=str(path), callbacks=[fails_at_two])
    assert checkpoint.read_metadata(str(path))["epoch"] == 2  # epoch 2 trained, and is kept


def test_numpy_scalars_a_callback_records_are_saved_as_numbers(tmp_path):
    path = tmp_path / "run"

    def norms(epoch, history, state):
        history.setdefault("w_norm", []).append(np.float32(epoch) * jnp.ones(()))

    result = run(epochs=2, checkpoint_path=str(path), callbacks=[norms])
    assert checkpoint.read_metadata(str(path))["history"]["w_norm"] == [1.0, 2.0]
    assert len(result.history["w_norm"]) == 2


def test_a_history_entry_no_checkpoint_can_hold_is_named(tmp_path):
    def stores_an_object(epoch, history, state):
        history.setdefault("mine", []).append(object())

    with pytest.raises(pn.ConfigError, match=r"fit: history\['mine'\] holds a value a checkpoint cannot record"):
        run(epochs=1, checkpoint_path=str(tmp_path / "run"), callbacks=[stores_an_object])


def test_a_checkpoint_from_before_per_group_rates_says_so_not_that_the_run_differs(tmp_path):
    path = tmp_path / "run"
    run(optimizer=two_groups(0.1, 0.001), checkpoint_path=path)
    like = {"params": PARAMS, "opt_state": two_groups(0.1, 0.001).init(PARAMS), "key": KEY}
    tree, meta = checkpoint.load(path, like=like)
    meta["configuration"]["hyperparams"] = {"learning_rate": 0.001}  # how the merged names recorded it
    checkpoint.save(path, tree, **meta)
    with pytest.raises(pn.ResumeError, match=r"records one learning_rate where this run injects one per group: "
                                             r"learning_rate/b, learning_rate/w; either it was written before"):
        run(epochs=3, optimizer=two_groups(0.1, 0.001), checkpoint_path=path)


def test_keep_checkpoints_added_on_resume_says_where_the_resumed_best_was(tmp_path, capsys):
    path, kept = tmp_path / "run", tmp_path / "kept"
    flipped = (X, 1 - Y)  # the validation loss rises as training fits Y: epoch 1 is the best
    first = run(epochs=2, checkpoint_path=path, validation=flipped, optimizer=optax.sgd(0.5))
    keep = pn.KeepCheckpoints(kept, last=None, best="val_loss")
    result = run(epochs=4, checkpoint_path=path, validation=flipped, optimizer=optax.sgd(0.5), callbacks=[keep])
    losses = result.history["val_loss"]
    assert losses[:2] == first.history["val_loss"] and np.argmin(losses) == 0
    assert keep.best_epoch == 3 + int(np.argmin(losses[2:])) and keep.best_path.exists()  # this run's best
    assert checkpoint.read_metadata(keep.best_path)["epoch"] == keep.best_epoch
    said = capsys.readouterr().err
    assert "the resumed epochs' best is epoch 1" in said and "holds the best of this run's epochs" in said


def test_a_callable_object_with_other_hooks_is_still_called_each_epoch():
    class Counter:
        def __init__(self):
            self.epochs, self.ended = [], False

        def __call__(self, epoch, history, state):
            self.epochs.append(epoch)

        def on_train_end(self, history, state):
            self.ended = True

    counter = Counter()
    run(epochs=3, callbacks=[counter])
    assert counter.epochs == [1, 2, 3] and counter.ended


@pytest.mark.parametrize(("metric", "message"), [
    (lambda o, t: o, r"metrics\['m'\] must return a scalar, got an array of shape \(32, 2\)"),
    (lambda o: o.sum(), r"metrics\['m'\] cannot be computed as fn\(outputs, targets\).*TypeError"),
    (lambda o, t: float(o.sum()), r"metrics\['m'\] cannot be computed .*ConcretizationTypeError"),
    (lambda o, t: jnp.mean(o.reshape(-1, 64, 2)), r"metrics\['m'\] cannot be computed .*reshape"),
])
def test_a_metric_that_cannot_give_a_scalar_is_refused_before_training(tmp_path, metric, message):
    recorder = Recorder()
    with pytest.raises(pn.ConfigError, match=f"fit: {message}"):
        run(validation=(X, Y), metrics={"m": metric}, callbacks=[recorder], checkpoint_path=tmp_path / "run")
    assert recorder.epochs == [] and not checkpoint.exists(tmp_path / "run")
    with pytest.raises(pn.ConfigError, match=f"evaluate: {message}"):
        pn.evaluate(MODEL, PARAMS, X, Y, loss=pn.softmax_cross_entropy, metrics={"m": metric})


def test_an_object_whose_call_is_for_something_else_keeps_its_hooks():
    class Timer:
        def __init__(self):
            self.seen = []

        def __call__(self):  # a timer's own call, not a callback's
            return "elapsed"

        def on_train_begin(self, history, keys):
            self.seen.append("begin")

        def on_train_end(self, history, state):
            self.seen.append("end")

    timer = Timer()
    run(epochs=2, callbacks=[timer])
    assert timer.seen == ["begin", "end"]


def test_a_metric_over_pairs_of_examples_is_traced_on_a_whole_batch():
    pair_gap = lambda o, t: jnp.mean(jnp.abs(o.reshape(-1, 2, 2)[:, 0] - o.reshape(-1, 2, 2)[:, 1]))  # noqa: E731
    history = run(validation=(X, Y), metrics={"pair_gap": pair_gap}).history
    assert len(history["val_pair_gap"]) == 2 and np.isfinite(history["val_pair_gap"]).all()
    figures = pn.evaluate(MODEL, PARAMS, X, Y, loss=pn.softmax_cross_entropy, metrics={"pair_gap": pair_gap})
    assert np.isfinite(figures["pair_gap"])
