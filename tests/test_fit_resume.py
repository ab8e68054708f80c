"""Issue 15: fit never resumes, starts over or overwrites silently, and checks everything before its first step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purenet as pn
from purenet import checkpoint

KEY = jax.random.PRNGKey(0)
X = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
Y = np.arange(8) % 3
MODEL = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
_, PARAMS = MODEL.init(KEY, (-1, 3))


def _template():
    """The tree fit saves, for loading its checkpoint outside fit."""
    return {"params": PARAMS, "opt_state": optax.adam(1e-2).init(PARAMS), "key": KEY}


def run(path=None, *, epochs=1, optimizer=None, model=MODEL, params=PARAMS, **kwargs):
    arguments = dict(loss=pn.softmax_cross_entropy, batch_size=4, key=KEY, progress=False)
    arguments.update(kwargs)
    return pn.fit(
        model,
        params,
        X,
        Y,
        optimizer=optimizer or optax.adam(1e-2),
        epochs=epochs,
        checkpoint_path=path,
        **arguments,
    )


def test_auto_resumes_and_says_from_which_epoch(tmp_path, capsys):
    path = tmp_path / "run"
    run(path, epochs=1)
    capsys.readouterr()
    result = run(path, epochs=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fit: resuming from" in err and "after epoch 1 of 2" in err
    assert len(result.history["loss"]) == 2
    straight = run(None, epochs=2)
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_array_equal(a, b)  # resuming changes nothing


def test_the_resume_line_names_the_epochs(tmp_path, capsys):
    path = tmp_path / "run"
    run(path, epochs=1)
    capsys.readouterr()
    run(path, epochs=3)
    assert "after epoch 1 of 3" in capsys.readouterr().err


def test_another_optimizer_is_refused_naming_its_state(tmp_path):
    path = tmp_path / "run"
    run(path, epochs=1, optimizer=optax.adam(1e-2))
    with pytest.raises(
        pn.ResumeError, match=r"fit: resuming from .* refused: .*the optimizer state's structure"
    ):
        run(path, epochs=2, optimizer=optax.sgd(1e-2, momentum=0.9))


def test_another_injected_learning_rate_is_refused(tmp_path):
    path = tmp_path / "run"
    run(path, epochs=1, optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
    with pytest.raises(
        pn.ResumeError, match=r"the optimizer's hyperparameters \(learning_rate: 0.01 saved, 0.1 now\)"
    ):
        run(path, epochs=2, optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=1e-1))


def test_a_plain_learning_rate_change_is_undetectable_as_documented(tmp_path, capsys):
    """optax.adam(lr) keeps no trace of lr in its state: fit resumes, and says so; resume='never' starts over."""
    path = tmp_path / "run"
    run(path, epochs=1, optimizer=optax.adam(1e-2))
    run(path, epochs=2, optimizer=optax.adam(1e-1))
    assert "fit: resuming from" in capsys.readouterr().err
    fresh = run(path, epochs=2, optimizer=optax.adam(1e-1), resume="never")
    assert "starting over" in capsys.readouterr().err
    assert len(fresh.history["loss"]) == 2


def test_a_batch_size_change_is_refused(tmp_path):
    path = tmp_path / "run"
    run(path, epochs=1)
    with pytest.raises(pn.ResumeError, match=r"the batch size \(4 saved, 2 now\)"):
        run(path, epochs=2, batch_size=2)


def test_fewer_epochs_than_the_checkpoint_holds_is_refused(tmp_path):
    path = tmp_path / "run"
    run(path, epochs=2)
    with pytest.raises(pn.ResumeError, match=r"already trained 2 epochs, more than the epochs=1 asked"):
        run(path, epochs=1)


@pytest.mark.parametrize("epoch", [-5, 0, 2.5, "3", True])
def test_insane_metadata_is_refused(tmp_path, epoch):
    path = tmp_path / "run"
    run(path, epochs=1)
    saved, meta = checkpoint.load(path, like=_template())
    meta["epoch"] = epoch
    checkpoint.save(path, saved, **meta)
    with pytest.raises(pn.ResumeError, match=rf"its metadata records epoch {epoch!r}, not an integer >= 1"):
        run(path, epochs=3)


def test_a_history_that_disagrees_with_the_epoch_is_refused(tmp_path):
    path = tmp_path / "run"
    run(path, epochs=2)
    saved, meta = checkpoint.load(path, like=_template())
    meta["history"]["loss"] = meta["history"]["loss"][:1]
    checkpoint.save(path, saved, **meta)
    with pytest.raises(pn.ResumeError, match="its history does not hold one entry per epoch of 2"):
        run(path, epochs=3)


def test_resume_policies(tmp_path, capsys):
    path = tmp_path / "run"
    with pytest.raises(pn.ResumeError, match="resume='require', but there is no checkpoint at"):
        run(path, resume="require")
    with pytest.raises(pn.ResumeError, match="resume='require' needs a checkpoint_path"):
        run(None, resume="require")
    with pytest.raises(
        pn.ConfigError, match=r"resume must be one of \('auto', 'never', 'require'\), got 'yes'"
    ):
        run(path, resume="yes")
    run(path, epochs=2)
    result = run(path, epochs=1, resume="never")
    assert "starting over" in capsys.readouterr().err
    assert checkpoint.read_metadata(path)["epoch"] == 1 and len(result.history["loss"]) == 1


# --------------------------------------------------------------------------
# Everything checked before the first step
# --------------------------------------------------------------------------


def test_validation_of_the_wrong_width_fails_before_any_training(tmp_path):
    path = tmp_path / "run"
    with pytest.raises(
        pn.ShapeError, match=r"expected x_val of shape \(n, \*\(3,\)\) like the training data"
    ):
        run(path, validation=(np.ones((4, 5), np.float32), Y[:4]))
    assert not checkpoint.exists(path)


def test_an_empty_validation_set_is_refused(tmp_path):
    with pytest.raises(pn.ShapeError, match="the validation set holds no examples"):
        run(None, validation=(np.ones((0, 3), np.float32), np.zeros(0, np.int64)))


def test_validation_labels_are_checked_against_the_classes():
    with pytest.raises(pn.ConfigError, match=r"fit: labels must lie in \[0, 3\), got 7"):
        run(None, validation=(X[:2], np.array([0, 7])))


def test_an_unwritable_checkpoint_path_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(
        pn.CheckpointError, match=r"fit.*cannot write checkpoints at .*a_file/run.*checked before training"
    ):
        run(blocker / "run")


def test_params_that_do_not_fit_the_model_fail_before_training():
    with pytest.raises(pn.ParamsError, match=r"Dense\(4\) at params\[0\]\['w'\]"):
        run(None, params=(dict(PARAMS[0], w=jnp.ones((5, 4))), (), PARAMS[2]))


@pytest.mark.parametrize("key", ["key", None, 3, np.zeros(3, np.uint32)])
def test_a_malformed_key_is_refused_naming_fit(key):
    with pytest.raises(pn.InputTypeError, match="fit: key must be a PRNG key"):
        run(None, key=key)


@pytest.mark.parametrize(
    "argument", [dict(epochs=0), dict(epochs=1.5), dict(batch_size="8"), dict(batch_size=True)]
)
def test_counts_must_be_positive_integers(argument):
    with pytest.raises(pn.ConfigError, match=r"fit: (epochs|batch_size) must be an integer >= 1"):
        run(None, **argument)


def _nan_when_label_two(z, t):
    """A loss that is NaN on any batch holding label 2 (one example of the 8 has it)."""
    return jnp.mean((z[:, 0] - t) ** 2) + jnp.where(jnp.any(t == 2), jnp.nan, 0.0)


def test_apply_if_finite_and_fits_guard_compose_as_documented():
    """fit's guard decides first and says so; on_nonfinite='skip' skips the one bad step a epoch and counts it."""
    y = np.array([0, 1, 0, 1, 0, 1, 0, 2])
    loss = pn.Loss(_nan_when_label_two, "nan_when_label_two")
    optimizer = optax.apply_if_finite(optax.sgd(1e-3), max_consecutive_errors=1)
    common = dict(loss=loss, optimizer=optimizer, epochs=2, batch_size=4, key=KEY, progress=False)
    with pytest.warns(UserWarning, match="fit's own guard .* decides first"):
        result = pn.fit(MODEL, PARAMS, X, y, on_nonfinite="skip", **common)
    assert result.history["skipped"] == [1, 1]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(result.params))
    with pytest.warns(UserWarning), pytest.raises(pn.NonFiniteLossError, match="not finite at step"):
        pn.fit(MODEL, PARAMS, X, y, on_nonfinite="stop", **common)
