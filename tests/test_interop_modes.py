"""purenet.interop as a hostile user meets it: each host's train/eval switch, rng streams, odd params.

The adapters must follow their host's idiom for the mode (NNX's
``.train()``/``.eval()``, linen's ``deterministic``, Equinox's
``inference_mode``), need a dropout key only from a model that draws one,
and refuse what they cannot use by name (a purenet error naming the adapter
and the leaf or argument), never with a bare Flax or Equinox error.
"""

import importlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

EXTRA = "needs the optional extra interop: pip install '.[interop]'"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flax") is None or importlib.util.find_spec("equinox") is None,
    reason=f"flax or equinox missing: {EXTRA}",
)

DROPOUT = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dropout(0.5), pn.Dense(3))
PLAIN = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dense(3))
X = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)
KEY = jax.random.PRNGKey(7)
# A custom layer whose init returns a Python float: valid purenet params (init's check allows it).
SCALE = pn.Layer(init=lambda key, shape: (shape, {"scale": 2.0}), name="Scale",
                 apply=lambda p, x, *, key=None, train=False: x * p["scale"])


@pytest.fixture(scope="module")
def params():
    return DROPOUT.init(jax.random.PRNGKey(0), (-1, 4))[1]


def test_nnx_follows_train_and_eval_like_nnx_dropout(params):
    from flax import nnx

    from purenet.interop import NNXModel

    class Parent(nnx.Module):
        def __init__(self, rngs):
            self.body = NNXModel(DROPOUT, params=params, rngs=rngs)

        def __call__(self, x):
            return self.body(x)

    parent = Parent(nnx.Rngs(dropout=3))
    evaluated = DROPOUT.apply(params, X)
    np.testing.assert_array_equal(parent(X), evaluated)  # never set: evaluation, as model.apply
    parent.train()
    assert not np.array_equal(parent(X), evaluated)  # dropout on, keys from the stream
    parent.eval()
    np.testing.assert_array_equal(parent(X), evaluated)
    np.testing.assert_array_equal(parent.body(X, key=KEY, train=True), DROPOUT.apply(params, X, key=KEY, train=True))


def test_linen_follows_its_deterministic_attribute(params):
    from purenet.interop import LinenModel

    evaluated = DROPOUT.apply(params, X)
    training = LinenModel(DROPOUT, (-1, 4), deterministic=False)
    variables = training.wrap(params)
    assert not np.array_equal(training.apply(variables, X, rngs={"dropout": KEY}), evaluated)
    np.testing.assert_array_equal(training.apply(variables, X, train=False), evaluated)  # the call wins
    np.testing.assert_array_equal(LinenModel(DROPOUT, (-1, 4), deterministic=True).apply(variables, X), evaluated)


def test_equinox_follows_inference_mode_and_refuses_a_key_without_a_mode(params):
    import equinox as eqx

    from purenet.interop import EquinoxModel

    module = EquinoxModel(DROPOUT, params=params)
    evaluated, trained = DROPOUT.apply(params, X), DROPOUT.apply(params, X, key=KEY, train=True)
    np.testing.assert_array_equal(module(X), evaluated)
    with pytest.raises(pn.ConfigError, match=r"EquinoxModel: a key came with no mode: pass train=True"):
        module(X, key=KEY)
    np.testing.assert_array_equal(eqx.nn.inference_mode(module, False)(X, key=KEY), trained)
    np.testing.assert_array_equal(eqx.nn.inference_mode(module, True)(X, key=KEY), evaluated)
    with pytest.raises(pn.MissingKeyError, match=r"EquinoxModel: Dropout\(0.5\) at params\[2\]: .*give key="):
        eqx.nn.inference_mode(module, False)(X)


def test_a_model_without_dropout_trains_with_no_dropout_stream():
    from flax import nnx

    from purenet.interop import LinenModel, NNXModel

    module = NNXModel(PLAIN, (-1, 4), rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(module(X, train=True), PLAIN.apply(module.to_params(), X))
    linen = LinenModel(PLAIN, (-1, 4))
    variables = linen.init(KEY, X)
    np.testing.assert_array_equal(linen.apply(variables, X, train=True),
                                  PLAIN.apply(variables["params"]["purenet"], X))


def test_a_dropout_model_without_a_key_names_the_adapter_and_the_stream(params):
    from flax import nnx

    from purenet.interop import LinenModel, NNXModel

    with pytest.raises(pn.MissingKeyError, match=r"NNXModel: .*Dropout\(0.5\).*rngs=nnx.Rngs\(dropout=...\)"):
        NNXModel(DROPOUT, params=params, rngs=nnx.Rngs(params=0))(X, train=True)
    linen = LinenModel(DROPOUT, (-1, 4))
    with pytest.raises(pn.MissingKeyError, match=r"LinenModel: .*Dropout\(0.5\).*rngs=\{\"dropout\": key\}"):
        linen.apply(linen.wrap(params), X, train=True)


@pytest.mark.parametrize("train", [np.True_, jnp.array(True)])
def test_a_boolean_scalar_or_traced_train_draws_from_the_stream(params, train):
    from flax import nnx

    from purenet.interop import LinenModel, NNXModel

    evaluated = DROPOUT.apply(params, X)
    linen = LinenModel(DROPOUT, (-1, 4))
    drawn = linen.apply(linen.wrap(params), X, train=train, rngs={"dropout": KEY})
    assert not np.array_equal(drawn, evaluated)
    jitted = jax.jit(linen.apply)(linen.wrap(params), X, train=train, rngs={"dropout": KEY})
    np.testing.assert_allclose(jitted, drawn, rtol=1e-6)
    module = NNXModel(DROPOUT, params=params, rngs=nnx.Rngs(dropout=3))
    traced = nnx.jit(lambda m, x, t: m(x, train=t))(module, X, train)
    assert not np.array_equal(traced, evaluated)


def test_wrong_rngs_are_refused_by_name(params):
    from flax import nnx

    from purenet.interop import NNXModel

    for rngs in (0, KEY, "rngs"):
        with pytest.raises(pn.InputTypeError, match=r"NNXModel: rngs must be an nnx.Rngs such as nnx.Rngs\(0\), got"):
            NNXModel(DROPOUT, (-1, 4), rngs=rngs)
    with pytest.raises(pn.InputTypeError, match=r"NNXModel: rngs has neither a 'params' nor a default stream"):
        NNXModel(DROPOUT, (-1, 4), rngs=nnx.Rngs(dropout=0))
    with pytest.raises(pn.InputTypeError, match=r"NNXModel: rngs \(an nnx.Rngs\) must be a PRNG key"):
        NNXModel(DROPOUT, (-1, 4))


def test_linen_names_the_wrong_leaf_before_flax_does(params):
    from purenet.interop import LinenModel

    wide = DROPOUT.init(KEY, (-1, 5))[1]
    wrong_width = r"at params\[0\]\['w'\]: expected shape \(4, 8\), got \(5, 8\)"
    with pytest.raises(pn.ParamsError, match=r"LinenModel \(for inputs of shape \(-1, 4\)\) " + wrong_width):
        LinenModel(DROPOUT).apply(LinenModel(DROPOUT).wrap(wide), X)  # input_shape read off X
    with pytest.raises(pn.ParamsError, match="LinenModel " + wrong_width):
        LinenModel(DROPOUT, (-1, 4)).wrap(wide)
    with pytest.raises(pn.ParamsError, match=r"LinenModel: expected a tuple of 4 entries, got a str"):
        LinenModel(DROPOUT, (-1, 4)).wrap("garbage")
    np.testing.assert_array_equal(LinenModel(DROPOUT).apply(LinenModel(DROPOUT).wrap(params), X),
                                  DROPOUT.apply(params, X))


def test_python_float_params_train_in_every_adapter():
    import equinox as eqx
    from flax import nnx

    from purenet.interop import EquinoxModel, NNXModel

    expected = float(jax.grad(lambda p: jnp.sum(SCALE.apply(p, X)))({"scale": 2.0})["scale"])
    module = EquinoxModel(SCALE, (-1, 4), key=KEY)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(X)))(module)
    assert float(grads.params["scale"]) == pytest.approx(expected)  # a trainable array, not static
    nnx_module = NNXModel(SCALE, (-1, 4), rngs=nnx.Rngs(0))
    nnx_grads = nnx.grad(lambda m: jnp.sum(m(X)))(nnx_module)
    assert float(nnx_grads.params["scale"].get_value()) == pytest.approx(expected)


def test_nnx_params_and_abstract_modules_unwrap(params):
    from flax import nnx

    from purenet.interop import NNXModel

    first = NNXModel(DROPOUT, params=params)
    again = NNXModel(DROPOUT, params=first.params)  # nnx.Param leaves: unwrapped, not nested
    assert all(type(leaf) is not nnx.Param for leaf in jax.tree_util.tree_leaves(again.to_params()))
    np.testing.assert_array_equal(again(X), first(X))
    abstract = nnx.eval_shape(lambda: NNXModel(DROPOUT, (-1, 4), rngs=nnx.Rngs(0)))
    shapes = jax.tree_util.tree_map(lambda leaf: leaf.shape, abstract.to_params())
    assert shapes == jax.tree_util.tree_map(jnp.shape, params)


def test_import_star_takes_only_the_installed_adapters(monkeypatch):
    import purenet.interop as interop

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "flax" else real(name))
    try:
        assert importlib.reload(interop).__all__ == ["MissingExtraError", "EquinoxModel"]
    finally:
        monkeypatch.undo()
        assert "NNXModel" in importlib.reload(interop).__all__


def test_equinox_mode_survives_plain_jax_jit(params):
    import equinox as eqx

    from purenet.interop import EquinoxModel

    training = eqx.nn.inference_mode(EquinoxModel(DROPOUT, params=params), False)
    trained = DROPOUT.apply(params, X, key=KEY, train=True)
    np.testing.assert_allclose(jax.jit(lambda m, key: m(X, key=key))(training, KEY), trained, rtol=1e-6)
    evaluating = eqx.nn.inference_mode(training, True)  # the flag is a traced leaf under plain jax.jit
    np.testing.assert_allclose(jax.jit(lambda m, key: m(X, key=key))(evaluating, KEY), DROPOUT.apply(params, X),
                               rtol=1e-6)


def test_linen_under_vmap_and_a_batch_of_scalars_and_bad_mode_flags(params):
    import equinox as eqx

    from purenet.interop import EquinoxModel, LinenModel

    linen = LinenModel(DROPOUT, (-1, 4))  # under vmap each call sees one example: the shape is given
    per_example = jax.vmap(lambda xi: linen.apply(linen.wrap(params), xi))(X)
    np.testing.assert_allclose(per_example, DROPOUT.apply(params, X), rtol=1e-6)
    scalars = pn.Layer(init=lambda key, shape: (shape, {"s": jnp.ones(shape[1:])}), name="Scale",
                       apply=lambda p, x, *, key=None, train=False: x * p["s"])
    assert LinenModel(scalars).init(KEY, jnp.arange(6.0))["params"]["purenet"]["s"].shape == ()  # a batch
    for flag in (0, "no", 1.0):
        with pytest.raises(pn.ConfigError, match=r"EquinoxModel: inference must be True, False or None"):
            EquinoxModel(DROPOUT, params=params, inference=flag)(X)
        with pytest.raises(pn.ConfigError, match=r"LinenModel: deterministic must be True, False or None"):
            LinenModel(DROPOUT, deterministic=flag).apply(linen.wrap(params), X)
    with pytest.raises(pn.MissingKeyError, match=r"EquinoxModel: .*use eqx.filter_jit"):
        jax.jit(lambda m: m(X))(eqx.nn.inference_mode(EquinoxModel(DROPOUT, params=params), True))
    np.testing.assert_array_equal(eqx.filter_jit(lambda m: m(X))(eqx.nn.inference_mode(
        EquinoxModel(DROPOUT, params=params), True)), DROPOUT.apply(params, X))
