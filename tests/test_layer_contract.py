"""The Layer contract: apply(params, x, *, key=None, train=False) checked when built; train under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

MODEL = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dropout(0.5), pn.residual(pn.serial(pn.Dense(8), pn.Tanh())),
                  pn.Dense(3))
KEY = jax.random.PRNGKey(1)


@pytest.fixture(scope="module")
def point():
    _, params = MODEL.init(jax.random.PRNGKey(0), (-1, 4))
    return params, jnp.linspace(-2.0, 2.0, 20).reshape(5, 4)


def test_jit_of_apply_works_in_training_mode_as_written(point):
    params, x = point
    eager_train, eager_eval = MODEL.apply(params, x, key=KEY, train=True), MODEL.apply(params, x)
    assert not np.array_equal(eager_train, eager_eval)  # dropout really acts
    jitted = jax.jit(MODEL.apply)
    np.testing.assert_array_equal(jitted(params, x, key=KEY, train=True), eager_train)
    np.testing.assert_array_equal(jitted(params, x, key=KEY, train=False), eager_eval)
    np.testing.assert_array_equal(jitted(params, x), eager_eval)
    static = jax.jit(MODEL.apply, static_argnames="train")
    np.testing.assert_array_equal(static(params, x, key=KEY, train=True), eager_train)


def test_a_traced_train_differentiates_and_vmaps(point):
    params, x = point
    loss = lambda p, train: jnp.sum(MODEL.apply(p, x, key=KEY, train=train) ** 2)  # noqa: E731
    traced = jax.jit(jax.grad(loss))(params, True)
    eager = jax.grad(loss)(params, True)
    for got, want in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    modes = jax.vmap(lambda train: MODEL.apply(params, x, key=KEY, train=train))(jnp.array([True, False]))
    np.testing.assert_allclose(modes[0], MODEL.apply(params, x, key=KEY, train=True), rtol=1e-6)
    np.testing.assert_allclose(modes[1], MODEL.apply(params, x), rtol=1e-6)


def test_a_traced_train_without_a_key_names_the_dropout(point):
    params, x = point
    with pytest.raises(pn.ConfigError, match=r"Dropout\(0.5\) at params\[2\]: train=True needs a PRNG key"):
        jax.jit(MODEL.apply)(params, x, train=True)


NOT_A_BOOL = st.one_of(
    st.integers(), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
    st.lists(st.booleans(), min_size=1, max_size=3).map(np.array),
    st.sampled_from([np.float32(1.0), np.int8(1), jnp.ones(()), jnp.ones((2,), bool), np.array([True])]),
)


@settings(max_examples=60, deadline=None)
@given(NOT_A_BOOL)
def test_train_that_is_not_a_bool_is_refused_by_name(train):
    params = ({"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}, (), (), ({"block": ({"w": jnp.ones((8, 8)), "b": jnp.zeros(8)}, ())}), {"w": jnp.ones((8, 3)), "b": jnp.zeros(3)})
    with pytest.raises(pn.ConfigError, match=r"^serial: train must be a bool \(True while training\), got "):
        MODEL.apply(params, jnp.ones((2, 4)), key=KEY, train=train)


@pytest.mark.parametrize("train", [np.True_, np.array(True), jnp.array(True)])
def test_concrete_boolean_scalars_count_as_bools(point, train):
    params, x = point
    np.testing.assert_array_equal(MODEL.apply(params, x, key=KEY, train=train),
                                  MODEL.apply(params, x, key=KEY, train=True))


def _init(key, shape):
    return shape, ()


def apply_plain(params, x):
    return x


def apply_key_only(params, x, *, key=None):
    return x


@pytest.mark.parametrize(
    "apply, missing",
    [(apply_plain, "key"), (apply_key_only, "train"), (lambda p: p, "")],
)
def test_an_apply_off_the_contract_is_refused_when_built(apply, missing):
    with pytest.raises(pn.ConfigError) as caught:
        pn.Layer(_init, apply, name="Mine")
    message = str(caught.value)
    assert message.startswith("Mine: apply must follow the Layer contract apply(params, x, *, key=None, train=False) -> y")
    assert f"'{missing}'" in message or not missing
    assert "Add `*, key=None, train=False` (or `**kwargs`)" in message


@pytest.mark.parametrize(
    "apply",
    [
        lambda p, x, **kw: 2 * x,
        lambda p, x, key=None, train=False: 2 * x,
        lambda *args, **kwargs: 2 * args[1],
        lambda params, x, *, key=None, train=False, extra=1.0: 2 * x * extra,
    ],
)
def test_applies_on_the_contract_run_inside_serial_under_jit(apply):
    model = pn.serial(pn.Dense(3), pn.Layer(_init, apply, name="Double"), pn.Dropout(0.1))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(jax.jit(model.apply)(params, x, key=KEY, train=True),
                               model.apply(params, x, key=KEY, train=True), rtol=1e-6)


def test_replacing_a_field_keeps_one_wrapper(point):
    params, x = point
    replaced = MODEL.replace(name="renamed")
    assert replaced.apply is MODEL.apply  # wrapped once: no second layer of checks per call
    np.testing.assert_array_equal(replaced.apply(params, x), MODEL.apply(params, x))
