"""The Layer contract against odd layers and keys: named refusals, never a bare error from JAX or NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

X = jnp.ones((5, 4))
DROPOUT = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dropout(0.5), pn.Dense(3))


def plain(name, apply, params=()):
    return pn.Layer(init=lambda key, shape: (shape, params), apply=apply, name=name)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.text(max_size=3), st.none(), st.builds(object), st.lists(st.integers(), max_size=2),
                 st.integers(), st.booleans(), st.complex_numbers(allow_nan=False)))
def test_init_names_a_leaf_that_is_not_floating_point(leaf):
    layer = plain("Mine", lambda p, x, *, key=None, train=False: x, params={"w": leaf})
    if leaf is None or leaf == []:  # an empty subtree: no leaf at all, nothing to refuse
        return
    with pytest.raises(pn.ParamsError, match=r"Mine at params\['w'\].*: init built a leaf of (type|dtype)"):
        layer.init(jax.random.PRNGKey(0), (-1, 4))


def test_jit_evaluation_without_a_key_says_why_and_what_to_do():
    _, params = DROPOUT.init(jax.random.PRNGKey(0), (-1, 4))
    with pytest.raises(pn.MissingKeyError, match=r"serial: under jax.jit .* train arrives traced and both modes are "
                                                 r"compiled; training mode needs a PRNG key .*static_argnames=\"train\""):
        jax.jit(DROPOUT.apply)(params, X, train=False)
    static = jax.jit(DROPOUT.apply, static_argnames="train")
    np.testing.assert_array_equal(static(params, X, train=False), DROPOUT.apply(params, X))


def test_a_custom_layer_that_fails_in_one_traced_mode_is_named():
    noise = plain("Noise", lambda p, x, *, key=None, train=False: x + jax.random.normal(key, x.shape) if train else x)
    with pytest.raises(pn.ConfigError, match=r"Noise: under jax.jit .*both must trace with key=None.*TypeError"):
        jax.jit(noise.apply)((), X, train=False)
    half = plain("Half", lambda p, x, *, key=None, train=False: x.astype(jnp.float16) if train else x)
    with pytest.raises(pn.ConfigError, match=r"Half: under jax.jit .*the same shapes and dtypes"):
        jax.jit(half.apply)((), X, key=jax.random.PRNGKey(0), train=True)
    np.testing.assert_array_equal(jax.jit(half.apply, static_argnames="train")((), X, train=False), X)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_keys_follow_the_prng_implementation_in_use(impl):
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", impl)
    try:
        key = jax.random.PRNGKey(0)
        assert key.shape == (4,)
        shape, params = DROPOUT.init(key, (-1, 4))
        assert shape == (-1, 3)
        assert DROPOUT.apply(params, X, key=jax.random.PRNGKey(1), train=True).shape == (5, 3)
        with pytest.raises(pn.InputTypeError, match=r"serial: key must be a PRNG key .*got an array of shape \(2,\) "
                                                    r"\(uint32\); a raw key is uint32 of shape \(4,\) under"):
            DROPOUT.init(np.zeros(2, np.uint32), (-1, 4))
    finally:
        jax.config.update("jax_default_prng_impl", before)
    with pytest.raises(pn.InputTypeError, match=r"got an array of shape \(4,\) \(uint32\)"):
        DROPOUT.init(np.zeros(4, np.uint32), (-1, 4))
