"""purenet.interop: a purenet model trained inside Flax NNX, Flax linen and Equinox matches pn.fit.

Each adapter trains a few full-batch Adam steps in its host library's own
idiom and must land on the params purenet's own ``fit`` reaches on the same
data (to 1e-5); the host library's transformations must see every leaf.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purenet as pn

EXTRA = "needs the optional extra interop: pip install '.[interop]'"
flax_missing = importlib.util.find_spec("flax") is None
equinox_missing = importlib.util.find_spec("equinox") is None
needs_flax = pytest.mark.skipif(flax_missing, reason=f"flax missing: {EXTRA}")
needs_equinox = pytest.mark.skipif(equinox_missing, reason=f"equinox missing: {EXTRA}")

STEPS, RATE = 5, 1e-2
MODEL = pn.serial(pn.Dense(16), pn.Tanh(), pn.residual(pn.serial(pn.Dense(16), pn.ReLU())), pn.Dense(10))


@pytest.fixture(scope="module")
def task():
    """Digits, the initial params, and where purenet's own fit takes them in STEPS full-batch steps."""
    data = pn.load_digits()
    x, y = data.x_train[:256], data.y_train[:256]
    _, params = MODEL.init(jax.random.PRNGKey(0), (-1, 64))
    result = pn.fit(MODEL, params, x, y, loss=pn.softmax_cross_entropy, optimizer=optax.adam(RATE),
                    epochs=STEPS, batch_size=len(x), key=jax.random.PRNGKey(1))
    return x, y, params, result.params


def assert_matches_fit(trained, fitted, initial):
    pn.check_like(trained, fitted, layer="test")
    leaves = zip(*map(jax.tree_util.tree_leaves, (trained, fitted, initial)))
    for got, want, start in leaves:
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        assert float(jnp.max(jnp.abs(got - start))) > 1e-3  # every leaf really trained


@needs_flax
def test_nnx_trains_with_nnx_optimizer_like_fit(task):
    from flax import nnx

    from purenet.interop import NNXModel

    x, y, params, fitted = task
    module = NNXModel(MODEL, params=params)
    assert len(jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))) == 6  # one nnx.Param per leaf
    optimizer = nnx.Optimizer(module, optax.adam(RATE), wrt=nnx.Param)

    @nnx.jit
    def step(module, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: pn.softmax_cross_entropy(m(x, train=True), y))(module)
        optimizer.update(module, grads)
        return loss

    for _ in range(STEPS):
        step(module, optimizer)
    assert_matches_fit(module.to_params(), fitted, params)


@needs_flax
def test_linen_trains_with_optax_like_fit(task):
    from purenet.interop import LinenModel

    x, y, params, fitted = task
    module = LinenModel(MODEL, (-1, 64))
    built = module.init(jax.random.PRNGKey(0), x)["params"]["purenet"]
    pn.check_like(built, params, layer="test")  # linen's init builds purenet's own layout
    variables = module.wrap(params)
    tx = optax.adam(RATE)
    state = tx.init(variables)

    @jax.jit
    def step(variables, state):
        grads = jax.grad(lambda v: pn.softmax_cross_entropy(module.apply(v, x), y))(variables)
        updates, state = tx.update(grads, state, variables)
        return optax.apply_updates(variables, updates), state

    for _ in range(STEPS):
        variables, state = step(variables, state)
    assert_matches_fit(variables["params"]["purenet"], fitted, params)


@needs_equinox
def test_equinox_trains_with_filter_jit_like_fit(task):
    import equinox as eqx

    from purenet.interop import EquinoxModel

    x, y, params, fitted = task
    module = EquinoxModel(MODEL, params=params)
    tx = optax.adam(RATE)
    state = tx.init(eqx.filter(module, eqx.is_array))

    @eqx.filter_jit
    def step(module, state):
        grads = eqx.filter_grad(lambda m: pn.softmax_cross_entropy(m(x), y))(module)
        updates, state = tx.update(grads, state, module)
        return eqx.apply_updates(module, updates), state

    for _ in range(STEPS):
        module, state = step(module, state)
    assert_matches_fit(module.params, fitted, params)


DROPOUT = pn.serial(pn.Dense(8), pn.Dropout(0.5), pn.Dense(3))


def dropout_reference(key):
    _, params = DROPOUT.init(jax.random.PRNGKey(0), (-1, 4))
    x = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)
    return params, x, DROPOUT.apply(params, x, key=key, train=True), DROPOUT.apply(params, x)


@needs_flax
def test_nnx_and_linen_feed_dropout_from_their_rng_streams():
    from flax import nnx

    from purenet.interop import LinenModel, NNXModel

    key = jax.random.PRNGKey(7)
    params, x, trained, evaluated = dropout_reference(key)
    module = NNXModel(DROPOUT, params=params)
    np.testing.assert_array_equal(module(x, key=key, train=True), trained)
    np.testing.assert_array_equal(module(x), evaluated)
    streamed = NNXModel(DROPOUT, params=params, rngs=nnx.Rngs(dropout=3))
    assert not np.array_equal(streamed(x, train=True), streamed(x, train=True))  # a fresh key per call
    linen = LinenModel(DROPOUT, (-1, 4))
    variables = linen.wrap(params)
    from_stream = linen.apply(variables, x, train=True, rngs={"dropout": key})
    assert from_stream.shape == trained.shape and not np.array_equal(from_stream, evaluated)
    np.testing.assert_array_equal(linen.apply(variables, x, key=key, train=True), trained)
    np.testing.assert_array_equal(linen.apply(variables, x), evaluated)


@needs_equinox
def test_equinox_dropout_takes_the_key_and_vmaps():
    import equinox as eqx

    from purenet.interop import EquinoxModel

    key = jax.random.PRNGKey(7)
    params, x, trained, evaluated = dropout_reference(key)
    module = EquinoxModel(DROPOUT, params=params)
    np.testing.assert_array_equal(module(x, key=key, train=True), trained)
    per_example = eqx.filter_vmap(lambda xi: module(xi[None])[0])(x)
    np.testing.assert_allclose(per_example, evaluated, rtol=1e-6)


@needs_flax
@needs_equinox
@pytest.mark.parametrize("name", ["NNXModel", "EquinoxModel"])
def test_adapters_refuse_what_they_cannot_wrap(name):
    import purenet.interop as interop

    adapter = getattr(interop, name)
    with pytest.raises(pn.ConfigError, match=f"{name}: model must be a purenet Layer, got function"):
        adapter(lambda x: x, (-1, 4))
    with pytest.raises(pn.ConfigError, match=f"{name}: give input_shape .* or params .*, got neither"):
        adapter(DROPOUT)
    _, params = DROPOUT.init(jax.random.PRNGKey(0), (-1, 4))
    with pytest.raises(pn.ParamsError, match=rf"{name} at params\[0\]\['w'\]: expected shape \(5, 8\), got \(4, 8\)"):
        adapter(DROPOUT, (-1, 5), params=params)
    with pytest.raises(pn.ParamsError, match=r"Dense\(8\) at params\[0\]\['w'\]: expected shape \(5, 8\) for an input of width 5"):
        adapter(DROPOUT, (-1, 4), params=params)(jnp.ones((2, 5)))


def test_a_missing_extra_is_named(monkeypatch):
    import purenet.interop as interop

    monkeypatch.setattr(interop.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(interop.MissingExtraError, match=r"purenet.interop.NNXModel: needs flax, .* pip install 'purenet\[interop\]'"):
        interop.NNXModel  # noqa: B018 - the attribute access is what is tested
    with pytest.raises(AttributeError, match="no attribute 'Model'"):
        interop.Model  # noqa: B018
