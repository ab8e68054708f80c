"""The jit-compiled train step and the epoch loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purenet as pn


def regression_data(key):
    x = jax.random.normal(key, (64, 3))
    return x, x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3


def test_fit_learns_a_linear_map(key):
    x, y = regression_data(key)
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    params, _, history = pn.fit(
        model,
        params,
        x,
        y,
        loss=pn.mean_squared_error,
        optimizer=optax.adam(0.1),
        epochs=100,
        batch_size=16,
        key=key,
    )
    assert len(history) == 100 and history[-1] < 1e-3 < history[0]
    np.testing.assert_allclose(params["w"][:, 0], [1.0, -2.0, 0.5], atol=0.02)


def test_fit_is_deterministic_given_the_key(key):
    x, y = regression_data(key)
    model = pn.serial(pn.Dense(4), pn.Dropout(0.2), pn.Dense(1))
    _, params = model.init(key, (-1, 3))
    run = lambda: pn.fit(  # noqa: E731
        model,
        params,
        x,
        y,
        loss=pn.mean_squared_error,
        optimizer=optax.sgd(0.01),
        epochs=3,
        batch_size=8,
        key=jax.random.PRNGKey(5),
    )[0]
    chex_equal = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), run(), run())
    assert all(jax.tree_util.tree_leaves(chex_equal))


def test_non_finite_loss_stops_with_the_last_good_params(key):
    x, y = regression_data(key)
    y = y.at[40].set(jnp.nan)  # the example at index 40 poisons whichever batch holds it
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    with pytest.raises(pn.NonFiniteLossError, match="not finite at step") as info:
        pn.fit(
            model,
            params,
            x,
            y,
            loss=pn.mean_squared_error,
            optimizer=optax.sgd(0.01),
            epochs=2,
            batch_size=8,
            key=key,
        )
    error = info.value
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(error.params))
    # replaying the same shuffle up to the bad step by hand gives the kept params
    step = pn.make_train_step(model, pn.mean_squared_error, optax.sgd(0.01))
    order = jax.random.permutation(jax.random.split(key)[1], 64)
    batches = [order[i * 8 : (i + 1) * 8] for i in range(8)]
    assert 40 in np.asarray(batches[error.step])
    state = pn.train.TrainState(params, optax.sgd(0.01).init(params), jnp.array(True))
    step_key = jax.random.split(key)[0]
    for i in range(error.step):
        step_key, k = jax.random.split(step_key)
        state, _ = step(state, x[batches[i]], y[batches[i]], k)
    for kept, replayed in zip(
        jax.tree_util.tree_leaves(error.params), jax.tree_util.tree_leaves(state.params)
    ):
        np.testing.assert_array_equal(kept, replayed)


def test_fit_argument_errors(key):
    model = pn.Dense(1)
    _, params = model.init(key, (-1, 3))
    kwargs = dict(loss=pn.mean_squared_error, optimizer=optax.sgd(0.1), key=key)
    with pytest.raises(
        pn.ShapeError, match="fit: x and y must hold the same number of examples, got 4 and 5"
    ):
        pn.fit(model, params, jnp.ones((4, 3)), jnp.ones((5, 1)), epochs=1, batch_size=2, **kwargs)
    with pytest.raises(pn.ConfigError, match="fit: batch_size must be an integer >= 1"):
        pn.fit(model, params, jnp.ones((4, 3)), jnp.ones((4, 1)), epochs=1, batch_size=0, **kwargs)
