"""Flatten and Dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def test_flatten(key):
    out_shape, params = pn.Flatten().init(key, (None, 8, 8))
    assert out_shape == (-1, 64) and params == ()
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(pn.Flatten().apply((), x), np.arange(24).reshape(2, 12))


def test_flatten_needs_a_batch_axis(key):
    with pytest.raises(pn.ShapeError, match="^Flatten: expected a batch axis"):
        pn.Flatten().init(key, (64,))


def test_dropout_is_identity_when_not_training(key):
    x = jax.random.normal(key, (4, 10))
    np.testing.assert_array_equal(pn.Dropout(0.5).apply((), x), x)
    np.testing.assert_array_equal(pn.Dropout(0.5).apply((), x, key=key, train=False), x)


def test_dropout_in_training_zeroes_and_rescales(key):
    x = jnp.ones((200, 100))
    y = pn.Dropout(0.25).apply((), x, key=key, train=True)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float(jnp.mean(y == 0)) - 0.25) < 0.01
    assert abs(float(jnp.mean(y)) - 1.0) < 0.02  # inverted dropout keeps the expectation
    z = pn.Dropout(0.25).apply((), x, key=jax.random.PRNGKey(9), train=True)
    assert not jnp.array_equal(y, z)


def test_dropout_needs_a_key_when_training():
    with pytest.raises(pn.ConfigError, match="train=True needs a PRNG key"):
        pn.Dropout(0.5).apply((), jnp.ones((1, 3)), train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2, "0.5"])
def test_dropout_rate_out_of_range(rate):
    with pytest.raises(pn.ConfigError, match=r"rate \(a probability\) must be a finite real number in \[0, 1\)"):
        pn.Dropout(rate)
