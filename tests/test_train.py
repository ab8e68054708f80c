"""The jit-compiled train step and fit(): fused and step-by-step loops, evaluation, non-finite handling."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purenet as pn
from purenet import train
from tests.digits import fit_digits


def regression_data(key):
    x = jax.random.normal(key, (64, 3))
    return x, x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3


def leaves_equal(a, b) -> bool:
    return all(
        bool(jnp.array_equal(u, v))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def fit_regression(data_key, model=None, **overrides):
    x, y = regression_data(data_key)
    model = model or pn.Dense(1)
    _, params = model.init(data_key, (-1, 3))
    kwargs = dict(
        loss=pn.mean_squared_error,
        optimizer=optax.adam(0.1),
        epochs=3,
        batch_size=8,
        key=jax.random.PRNGKey(5),
    )
    return pn.fit(model, params, x, y, **(kwargs | overrides))


def test_fit_learns_a_linear_map(key):
    params, _, history = fit_regression(key, epochs=100, batch_size=16)
    assert len(history["loss"]) == 100 and history["loss"][-1] < 1e-3 < history["loss"][0]
    np.testing.assert_allclose(params["w"][:, 0], [1.0, -2.0, 0.5], atol=0.02)
    assert history["skipped"] == [0] * 100 and len(history["seconds"]) == 100


def test_fit_is_deterministic_given_the_key(key):
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))
    first = fit_regression(key, model, optimizer=optax.sgd(0.01))
    assert leaves_equal(first.params, fit_regression(key, model, optimizer=optax.sgd(0.01)).params)


@pytest.mark.parametrize("steps_per_dispatch", [1, 3, 5])
def test_fused_and_step_by_step_loops_train_the_same_params(key, steps_per_dispatch):
    """K steps in one lax.scan draw the same batches and keys as K dispatches (8 steps per epoch here)."""
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))
    fused = fit_regression(key, model)  # default: the whole epoch in one dispatch
    other = fit_regression(key, model, steps_per_dispatch=steps_per_dispatch)
    assert leaves_equal(fused.params, other.params)
    np.testing.assert_allclose(fused.history["loss"], other.history["loss"], rtol=1e-6)


def test_host_fed_loop_trains_the_same_params(key, monkeypatch):
    """Data too large for the device is fed one minibatch per step, with the same result."""
    on_device = fit_regression(key, pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1)))
    monkeypatch.setattr(train.loop, "_device_data_budget", lambda: 0)  # where fit looks it up
    host_fed = fit_regression(key, pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1)))
    assert leaves_equal(on_device.params, host_fed.params)


def test_the_step_consumes_the_state_it_is_given_unless_told_not_to(key):
    """Donation: the new state takes the old one's buffers; donate=False keeps the old one readable."""
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    x, y = regression_data(key)
    optimizer = optax.sgd(0.1)
    kept = pn.make_train_step(model, pn.mean_squared_error, optimizer, donate=False)
    state = pn.TrainState(params, optimizer.init(params), jnp.array(True))
    new_state, _ = kept(state, x, y, key)
    assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state))
    expected = jax.tree_util.tree_map(np.asarray, new_state.params)

    donating = pn.make_train_step(model, pn.mean_squared_error, optimizer)
    copied = jax.tree_util.tree_map(jnp.copy, state)
    donated_state, _ = donating(copied, x, y, key)
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(copied.params))
    for a, b in zip(jax.tree_util.tree_leaves(donated_state.params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)


def test_fit_never_consumes_the_callers_params(key):
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    before = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), params)  # no view kept alive
    for steps_per_dispatch in (None, 1):
        x, y = regression_data(key)
        pn.fit(model, params, x, y, loss=pn.mean_squared_error, optimizer=optax.sgd(0.1), epochs=1,
               batch_size=8, key=key, steps_per_dispatch=steps_per_dispatch)  # fmt: skip
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(a, b)  # raises "Array has been deleted" if fit donated them


def test_fit_matches_a_hand_written_loop(key):
    """fit's shuffles and keys, replayed independently with the public step, give the same params."""
    x, y = regression_data(key)
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))
    _, params = model.init(key, (-1, 3))
    optimizer = optax.sgd(0.05)
    result = pn.fit(
        model, params, x, y, loss=pn.mean_squared_error, optimizer=optimizer, epochs=2, batch_size=8, key=key
    )
    step = pn.make_train_step(model, pn.mean_squared_error, optimizer)
    state, run_key = pn.TrainState(params, optimizer.init(params), jnp.array(True)), key
    for _ in range(2):
        run_key, shuffle_key, steps_key = jax.random.split(run_key, 3)
        order = np.asarray(jax.random.permutation(shuffle_key, 64))
        for i, step_key in enumerate(jax.random.split(steps_key, 8)):
            state, _ = step(state, x[order[8 * i : 8 * i + 8]], y[order[8 * i : 8 * i + 8]], step_key)
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


POISON = 999.0


def poisoned(key):
    x, y = regression_data(key)
    return x, y.at[40].set(POISON)  # the example at index 40 poisons whichever batch holds it


def poisoned_loss(outputs, targets):
    """Squared error, but NaN on a batch holding the marked example (fit refuses NaN in the data itself)."""
    return pn.mean_squared_error(outputs, targets) + jnp.sum(jnp.where(targets == POISON, jnp.nan, 0.0))


def bad_steps(key, epochs=2):
    """The steps whose batch holds example 40, from fit's shuffle order replayed by hand."""
    steps, run_key = [], jax.random.PRNGKey(5)
    for epoch in range(epochs):
        run_key, shuffle_key, _ = jax.random.split(run_key, 3)
        order = np.asarray(jax.random.permutation(shuffle_key, 64))
        steps.append(epoch * 8 + int(np.flatnonzero(order == 40)[0]) // 8)
    return steps


@pytest.mark.parametrize("steps_per_dispatch", [None, 1])
def test_non_finite_loss_stops_with_the_last_good_params(key, steps_per_dispatch):
    x, y = poisoned(key)
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    kwargs = dict(loss=poisoned_loss, optimizer=optax.sgd(0.01), batch_size=8, key=jax.random.PRNGKey(5))
    with pytest.raises(
        pn.NonFiniteLossError, match=r"fit: the loss or a gradient was not finite at step \d+"
    ) as info:
        pn.fit(model, params, x, y, epochs=2, steps_per_dispatch=steps_per_dispatch, **kwargs)
    error = info.value
    assert error.step == bad_steps(key)[0]
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(error.params))
    # the kept params are those after exactly error.step good steps: train that far on clean data
    # ordered the same way (the poisoned example is never reached before the bad step)
    clean_x, clean_y = regression_data(key)
    step = pn.make_train_step(model, pn.mean_squared_error, optax.sgd(0.01))
    state = pn.TrainState(params, optax.sgd(0.01).init(params), jnp.array(True))
    _, shuffle_key, steps_key = jax.random.split(jax.random.PRNGKey(5), 3)
    order = np.asarray(jax.random.permutation(shuffle_key, 64))
    for i, step_key in enumerate(jax.random.split(steps_key, 8)[: error.step]):
        state, _ = step(state, clean_x[order[8 * i : 8 * i + 8]], clean_y[order[8 * i : 8 * i + 8]], step_key)
    assert leaves_equal(error.params, state.params)
    assert leaves_equal(error.opt_state, state.opt_state)


def test_skip_mode_skips_the_bad_steps_and_trains_on(key):
    x, y = poisoned(key)
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    result = pn.fit(
        model,
        params,
        x,
        y,
        loss=poisoned_loss,
        optimizer=optax.adam(0.1),
        epochs=40,
        batch_size=8,
        key=jax.random.PRNGKey(5),
        on_nonfinite="skip",
    )
    assert result.history["skipped"] == [1] * 40  # one poisoned batch per epoch, each skipped
    assert all(np.isfinite(result.history["loss"]))  # the mean over the steps that were applied
    assert result.history["loss"][-1] < 1e-2
    np.testing.assert_allclose(result.params["w"][:, 0], [1.0, -2.0, 0.5], atol=0.05)


def test_validation_metrics_match_an_independent_count(key):
    model = pn.serial(pn.Dense(32), pn.Tanh(), pn.Dense(10))
    result, data = fit_digits(model, key, optimizer=optax.adam(1e-2), key=key)
    assert set(result.history) == {"loss", "skipped", "seconds", "val_loss", "val_accuracy"}
    logits = np.asarray(model.apply(result.params, data.x_test), np.float64)
    expected_accuracy = np.mean(logits.argmax(axis=1) == data.y_test)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -np.mean(log_probs[np.arange(len(logits)), data.y_test])
    assert result.history["val_accuracy"][-1] == pytest.approx(expected_accuracy, abs=1e-6)
    assert result.history["val_loss"][-1] == pytest.approx(expected_loss, rel=1e-5)
    assert result.history["val_accuracy"][-1] > 0.9
    # evaluate() in odd-sized batches gives the same figures
    figures = pn.evaluate(
        model, result.params, data.x_test, data.y_test, loss=pn.softmax_cross_entropy,
        metrics={"accuracy": pn.accuracy}, batch_size=100,
    )  # fmt: skip
    assert figures["accuracy"] == pytest.approx(expected_accuracy, abs=1e-6)
    assert figures["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_binary_accuracy_counts_the_side_of_zero():
    assert (
        float(pn.binary_accuracy(jnp.array([[2.0], [-1.0], [0.5], [-3.0]]), jnp.array([1, 0, 0, 0]))) == 0.75
    )


def test_progress_bar_shows_loss_and_throughput(key, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    fit_regression(key, progress=True)
    text = stream.getvalue()
    assert "loss=" in text and "example/s" in text and "epoch=3" in text
    stream.truncate(0)
    monkeypatch.setenv("CI", "1")
    fit_regression(key)  # the default: quiet under CI (and when stderr is not a terminal)
    assert stream.getvalue() == ""


def test_fit_argument_errors(key):
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    kwargs = dict(loss=pn.mean_squared_error, optimizer=optax.sgd(0.1), key=key, epochs=1)
    ones = jnp.ones((4, 3))
    with pytest.raises(
        pn.ShapeError, match="fit: x and y must hold the same number of examples, got 4 and 5"
    ):
        pn.fit(model, params, ones, jnp.ones((5, 1)), batch_size=2, **kwargs)
    with pytest.raises(pn.ConfigError, match="fit: batch_size must be an integer >= 1"):
        pn.fit(model, params, ones, jnp.ones((4, 1)), batch_size=0, **kwargs)
    with pytest.raises(pn.ConfigError, match="fit: steps_per_dispatch must be an integer >= 1"):
        pn.fit(model, params, ones, jnp.ones((4, 1)), batch_size=2, steps_per_dispatch=0, **kwargs)
    with pytest.raises(
        pn.ConfigError, match=r"fit: on_nonfinite must be one of \('stop', 'skip'\), got 'ignore'"
    ):
        pn.fit(model, params, ones, jnp.ones((4, 1)), batch_size=2, on_nonfinite="ignore", **kwargs)
    with pytest.raises(pn.ConfigError, match="fit: x holds NaN or inf in 1 example.*index 2"):
        pn.fit(model, params, ones.at[2, 1].set(jnp.inf), jnp.ones((4, 1)), batch_size=2, **kwargs)
    with pytest.raises(
        pn.ShapeError, match="fit: x and y must hold the same number of examples, got 4 and 3"
    ):
        pn.fit(
            model, params, ones, jnp.ones((4, 1)), batch_size=2, validation=(ones, jnp.ones((3, 1))), **kwargs
        )


def test_typed_prng_keys_train_like_raw_ones():
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))
    raw = fit_regression(jax.random.PRNGKey(0), model, key=jax.random.PRNGKey(5))
    typed = fit_regression(jax.random.PRNGKey(0), model, key=jax.random.key(5))
    assert leaves_equal(raw.params, typed.params)


def test_labels_out_of_the_models_range_are_refused(key):
    model = pn.Dense(3)
    _, params = model.init(key, (-1, 2))
    kwargs = dict(loss=pn.softmax_cross_entropy, optimizer=optax.sgd(0.1), key=key, epochs=1, batch_size=2)
    x = jnp.ones((4, 2))
    with pytest.raises(pn.ConfigError, match=r"fit: labels must lie in \[0, 3\), got 3 at index 1"):
        pn.fit(model, params, x, jnp.array([0, 3, 1, 2]), **kwargs)
    with pytest.raises(pn.ConfigError, match=r"fit: labels must lie in \[0, 3\), got -1 at index 0"):
        pn.fit(model, params, x, jnp.array([0, 1, 1, 2]), validation=(x, jnp.array([-1, 0, 0, 0])), **kwargs)


class IndexLoss:
    """A user's loss over class scores that says so, as purenet's own Loss records do."""

    class_labels = True

    def __call__(self, logits, labels):
        return pn.softmax_cross_entropy(logits, labels)


def squared_distance_to_label(outputs, labels):
    """A plain function on integer targets that are values, not class indices: 3 is a fine target."""
    return jnp.mean((outputs[:, 0] - labels) ** 2)


def test_the_label_check_follows_the_losss_class_labels_fact(key):
    model = pn.Dense(3)
    _, params = model.init(key, (-1, 2))
    kwargs = dict(optimizer=optax.sgd(0.1), key=key, epochs=1, batch_size=2)
    x, y = jnp.ones((4, 2)), jnp.array([0, 3, 1, 2])
    with pytest.raises(pn.ConfigError, match=r"fit: labels must lie in \[0, 3\), got 3 at index 1"):
        pn.fit(model, params, x, y, loss=IndexLoss(), **kwargs)
    with pytest.raises(pn.ConfigError, match=r"fit: labels must lie in \[0, 3\), got -1 at index 0"):
        pn.fit(model, params, x, jnp.array([0, 1, 1, 2]), loss=IndexLoss(),
               validation=(x, jnp.array([-1, 0, 0, 0])), **kwargs)  # fmt: skip
    assert not hasattr(squared_distance_to_label, "class_labels")
    result = pn.fit(model, params, x, y, loss=squared_distance_to_label, validation=(x, y), **kwargs)
    assert np.isfinite(result.history["loss"]).all() and np.isfinite(result.history["val_loss"]).all()


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def backend_compiles():
    """The XLA backend compiles that happen inside the block, one entry each."""
    compiles = []

    def listen(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            compiles.append(kwargs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_second_evaluate_with_the_same_objects_compiles_nothing(key):
    model = pn.serial(pn.Dense(8), pn.Tanh(), pn.Dense(3))  # a fresh model: nothing cached for it yet
    _, params = model.init(key, (-1, 4))
    x, y = jax.random.normal(key, (50, 4)), jnp.arange(50) % 3
    metrics = {"accuracy": pn.accuracy}

    def run():
        return pn.evaluate(model, params, x, y, loss=pn.softmax_cross_entropy, metrics=metrics, batch_size=32)

    with backend_compiles() as first:
        figures = run()
    with backend_compiles() as second:
        again = run()
    assert len(first) >= 2  # the evaluator, once per batch shape (32 and the trailing 18)
    assert second == [] and again == figures


def test_a_second_fit_with_the_same_objects_compiles_nothing(key):
    """The runner and the validation evaluator come from the compile cache; the eager ops are JAX-cached."""
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))  # fresh: its first fit must compile
    optimizer = optax.adam(0.1)
    x, y = regression_data(key)
    kwargs = dict(loss=pn.mean_squared_error, optimizer=optimizer, epochs=2, batch_size=8,
                  validation=(x[:20], y[:20]), metrics={"mae": lambda z, t: jnp.mean(jnp.abs(z - t))})  # fmt: skip
    with backend_compiles() as first:
        pn.fit(model, model.init(key, (-1, 3))[1], x, y, key=jax.random.PRNGKey(5), **kwargs)
    # new params and a new key of the same shapes, the same model, loss, optimizer and metric functions
    with backend_compiles() as second:
        result = pn.fit(
            model, model.init(jax.random.PRNGKey(1), (-1, 3))[1], x, y, key=jax.random.PRNGKey(6), **kwargs
        )
    assert len(first) >= 2  # at least the fused training loop and the evaluator
    assert second == []  # nothing at all: not the loop, not the evaluator, not an eager op
    assert len(result.history["val_mae"]) == 2


class ArrayPenalty:
    """A regularizer holding an array: unhashable, so fit builds its loop afresh instead of caching it."""

    __hash__ = None

    def __init__(self, scale):
        self.scale = jnp.asarray(scale)

    def __call__(self, params):
        return self.scale * sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(params))


def test_fit_with_an_unhashable_regularizer_builds_afresh_and_trains_the_same(key):
    penalty = ArrayPenalty(1e-3)
    with pytest.raises(TypeError):
        hash(penalty)
    first = fit_regression(key, regularizer=penalty)
    assert leaves_equal(first.params, fit_regression(key, regularizer=penalty).params)
    plain = fit_regression(key, regularizer=lambda params: penalty(params))
    assert leaves_equal(first.params, plain.params)
