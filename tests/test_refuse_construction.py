"""Issue 15: constructors, input shapes, keys, params dtypes and the init/apply contract refuse bad values by name.

Each test feeds what a hostile user would (NaN slopes, bools as sizes,
negative axes, strings as keys, integer initializers, a unit breaking its
own promise) and asserts a purenet error naming who refused and what came.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn
from purenet.validate import require_number

KEY = jax.random.PRNGKey(0)

# --------------------------------------------------------------------------
# Constructor arguments
# --------------------------------------------------------------------------

BAD_NUMBERS = [math.nan, math.inf, -math.inf, "0.1", None, True, [0.1], 1 + 2j]


@pytest.mark.parametrize("alpha", BAD_NUMBERS)
def test_leaky_relu_refuses_a_slope_that_is_not_a_finite_real(alpha):
    with pytest.raises(pn.ConfigError, match=r"LeakyReLU.*: alpha must be a finite real number, got"):
        pn.LeakyReLU(alpha)


@pytest.mark.parametrize("alpha", [0.0, -1.0, 0.3, np.float32(0.2), 2])
def test_leaky_relu_accepts_finite_slopes_and_computes_with_them(alpha):
    layer = pn.LeakyReLU(alpha)
    y = layer.apply((), jnp.array([-2.0, 3.0]))
    np.testing.assert_allclose(y, [-2.0 * float(alpha), 3.0], rtol=1e-6)


@pytest.mark.parametrize("rate", [math.nan, math.inf, -0.1, 1.0, 1.5, "0.5", True, None])
def test_dropout_refuses_rates_outside_zero_one(rate):
    with pytest.raises(
        pn.ConfigError, match=r"rate \(a probability\) must be a finite real number in \[0, 1\)"
    ):
        pn.Dropout(rate)


def test_dropout_accepts_numpy_rates():
    assert pn.Dropout(np.float32(0.25)).name == "Dropout(0.25)"


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: pn.Dense(3, w_init="he"), "w_init"),
        (lambda: pn.Dense(3, b_init=0.1), "b_init"),
        (lambda: pn.LowRankDense(3, 2, v_init=1), "v_init"),
        (lambda: pn.Maxout(3, 2, w_init=[1.0]), "w_init"),
        (lambda: pn.RBF(3, sigma_init="ones"), "sigma_init"),
        (lambda: pn.PReLU(alpha_init=0.25), "alpha_init"),
    ],
)
def test_initializers_must_be_callables(build, argument):
    with pytest.raises(pn.ConfigError, match=f"{argument} must be an initializer"):
        build()


@pytest.mark.parametrize("shared", ["yes", 1, None])
def test_prelu_shared_must_be_a_bool(shared):
    with pytest.raises(pn.ConfigError, match="PReLU: shared must be True or False"):
        pn.PReLU(shared=shared)


@given(st.one_of(st.floats(), st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans()))
@settings(max_examples=60, deadline=None)
def test_require_number_accepts_exactly_the_finite_reals_in_range(value):
    """The one constructor check: a finite real in [0, 1), never a bool or a string."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value < 1.0
    )
    if ok:
        assert require_number("Unit", "rate", value, low=0.0, high=1.0, high_open=True) == float(value)
    else:
        with pytest.raises(pn.ConfigError, match=r"Unit: rate must be a finite real number in \[0, 1\), got"):
            require_number("Unit", "rate", value, low=0.0, high=1.0, high_open=True)


# --------------------------------------------------------------------------
# Input shapes at init
# --------------------------------------------------------------------------

LAYERS = [
    lambda: pn.Dense(3),
    lambda: pn.LowRankDense(3, 2),
    lambda: pn.Maxout(3, 2),
    lambda: pn.RBF(3),
    lambda: pn.PReLU(),
    lambda: pn.Tanh(),
    lambda: pn.Dropout(0.5),
    lambda: pn.Flatten(),
    lambda: pn.serial(pn.Dense(4), pn.ReLU(), pn.Dense(2)),
    lambda: pn.residual(pn.Dense(4)),
]

BAD_AXES = [True, False, -2, -5, 2.0, "4", np.bool_(True)]


@given(
    st.sampled_from(LAYERS),
    st.sampled_from(BAD_AXES),
    st.integers(0, 1),
)
@settings(max_examples=60, deadline=None)
def test_init_refuses_malformed_input_shapes(make_layer, bad_axis, position):
    """(-1, True) was read as width 1, (-5, 4) as a batch axis: both refused by the layer, naming the shape."""
    shape = [-1, 4]
    shape[position] = bad_axis
    layer = make_layer()
    with pytest.raises(pn.ShapeError) as caught:
        layer.init(KEY, tuple(shape))
    message = str(caught.value)
    assert "expected an input shape" in message  # said by the layer, or by a combinator's first child
    assert repr(bad_axis) in message or str(bad_axis) in message


@pytest.mark.parametrize("shape", [(-1, 4), (None, 4), (0, 4), (7, 4), (-1, 2, 2)])
def test_init_accepts_well_formed_shapes(shape):
    out, params = pn.Dense(3).init(KEY, shape)
    assert out[-1] == 3 and params["w"].shape[1] == 3


# --------------------------------------------------------------------------
# PRNG keys
# --------------------------------------------------------------------------

BAD_KEYS = ["abc", None, 0, 1.5, jnp.zeros((3,), jnp.uint32), jnp.zeros((2,), jnp.float32), np.zeros((2, 2))]


@given(st.sampled_from(LAYERS), st.sampled_from(BAD_KEYS))
@settings(max_examples=40, deadline=None)
def test_init_refuses_anything_but_a_prng_key(make_layer, key):
    layer = make_layer()
    with pytest.raises(pn.InputTypeError, match=re.escape(layer.name.split("(")[0]) + ".*key must be a PRNG key"):
        layer.init(key, (-1, 4))


@pytest.mark.parametrize("key", [jax.random.PRNGKey(3), jax.random.key(3)])
def test_init_accepts_both_kinds_of_key(key):
    _, params = pn.Dense(2).init(key, (-1, 3))
    assert params["w"].shape == (3, 2)


@pytest.mark.parametrize("key", [k for k in BAD_KEYS if k is not None])  # None: "no key", tested below
def test_training_apply_refuses_a_malformed_key(key):
    model = pn.serial(pn.Dense(3), pn.Dropout(0.5))
    _, params = model.init(KEY, (-1, 2))
    with pytest.raises(pn.InputTypeError, match="key must be a PRNG key"):
        model.apply(params, jnp.ones((4, 2)), key=key, train=True)


def test_dropout_training_without_a_key_says_how():
    with pytest.raises(pn.ConfigError, match=r"train=True needs a PRNG key"):
        pn.Dropout(0.5).apply((), jnp.ones((2, 2)), train=True)


def test_init_under_vmap_and_eval_shape_still_works():
    """The key check reads only shapes and dtypes, so traced keys pass."""
    keys = jax.random.split(KEY, 3)
    _, params = jax.vmap(lambda k: pn.Dense(2).init(k, (-1, 3)))(keys)
    assert params["w"].shape == (3, 3, 2)
    shapes = jax.eval_shape(lambda k: pn.Dense(2).init(k, (-1, 3))[1], KEY)
    assert shapes["b"].shape == (2,)


# --------------------------------------------------------------------------
# Params dtypes: floating point only
# --------------------------------------------------------------------------


def _integer_initializer(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, jnp.int32)


@pytest.mark.parametrize(
    "build",
    [
        lambda: pn.Dense(2, w_init=_integer_initializer),
        lambda: pn.Dense(2, b_init=_integer_initializer),
        lambda: pn.Maxout(2, 2, w_init=_integer_initializer),
        lambda: pn.serial(pn.Dense(2), pn.PReLU(alpha_init=_integer_initializer)),
    ],
)
def test_an_initializer_returning_integers_is_refused_at_init(build):
    """Before, integer params ran with another output and jax.grad failed later with a JAX TypeError."""
    with pytest.raises(
        pn.ParamsError, match=r"at params.*init built a leaf of dtype int32; params must be floating"
    ):
        build().init(KEY, (-1, 3))


@given(
    st.sampled_from([jnp.int32, jnp.int8, jnp.uint8, jnp.bool_, jnp.complex64]),
    st.sampled_from(["w", "b"]),
)
@settings(max_examples=20, deadline=None)
def test_apply_refuses_params_that_are_not_floating(dtype, leaf):
    layer = pn.Dense(2)
    _, params = layer.init(KEY, (-1, 3))
    params = dict(params, **{leaf: params[leaf].astype(dtype)})
    with pytest.raises(pn.ParamsError, match=rf"Dense\(2\) at params\['{leaf}'\]: expected a floating dtype"):
        layer.apply(params, jnp.ones((2, 3)))


def test_repeat_refuses_integer_params_instead_of_outputting_zeros():
    model = pn.repeat(pn.Dense(3), 2)
    _, params = model.init(KEY, (-1, 3))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), params)
    with pytest.raises(pn.ParamsError, match="expected a floating dtype"):
        model.apply(params, jnp.ones((2, 3)))


# --------------------------------------------------------------------------
# The init/apply contract inside serial
# --------------------------------------------------------------------------


def _narrowing_unit():
    """A user's unit whose init promises its input's shape but whose apply keeps one feature."""
    return pn.Layer(lambda key, shape: (shape, ()), lambda p, x, **kw: x[..., :1], name="Narrowing")


def test_serial_refuses_a_child_whose_apply_breaks_its_init_promise():
    model = pn.serial(pn.Dense(3), _narrowing_unit(), pn.Tanh())
    _, params = model.init(KEY, (-1, 2))
    with pytest.raises(
        pn.ShapeError, match=r"Narrowing at params\[1\]: apply returned shape \(4, 1\).*promised \(4, 3\)"
    ):
        model.apply(params, jnp.ones((4, 2)))


def test_the_promise_is_checked_at_trace_time_under_jit():
    model = pn.serial(pn.Dense(3), _narrowing_unit())
    _, params = model.init(KEY, (-1, 2))
    with pytest.raises(pn.ShapeError, match="apply returned shape"):
        jax.jit(model.apply)(params, jnp.ones((4, 2)))


def test_the_promise_check_passes_vmapped_and_multi_axis_inputs():
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    _, params = model.init(KEY, (-1, 5))
    per_example = jax.vmap(model.apply, in_axes=(None, 0))(params, jnp.ones((4, 5)))
    assert per_example.shape == (4, 2)
    assert model.apply(params, jnp.ones((2, 3, 5))).shape == (2, 3, 2)


# --------------------------------------------------------------------------
# Helpers that took anything
# --------------------------------------------------------------------------


@pytest.mark.parametrize("params", ["abc", {"w": "x"}, (jnp.ones(2), object())])
def test_count_params_refuses_what_is_not_a_params_tree(params):
    with pytest.raises(pn.ParamsError, match="count_params.*expected a params pytree of arrays"):
        pn.count_params(params)


def test_count_params_counts_arrays_and_numbers():
    assert pn.count_params({"w": jnp.ones((2, 3)), "b": 0.0, "e": ()}) == 7


@pytest.mark.parametrize("dtype", ["nonsense", 3, None, "int32", jnp.int8])
def test_policy_refuses_unknown_or_non_floating_dtypes(dtype):
    with pytest.raises(pn.ConfigError, match="policy: compute_dtype must be one of"):
        pn.policy(dtype)


@pytest.mark.parametrize("model", ["x", None, pn.Dense])
def test_summary_refuses_what_is_not_a_layer(model):
    with pytest.raises(pn.ConfigError, match="summary: expected a purenet Layer"):
        pn.summary(model, (-1, 3))


# --------------------------------------------------------------------------
# The derivative checks: arguments that would make a check lie
# --------------------------------------------------------------------------


def _small_network():
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    _, params = model.init(KEY, (-1, 2))
    return model, params, jnp.ones((4, 2)), jnp.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(eps=0.0), r"eps must be a finite real number in \(0, 1\], got 0.0"),
        (dict(eps=math.nan), r"eps must be a finite real number in \(0, 1\], got nan"),
        (dict(rtol=-1.0), r"rtol must be a finite real number >= 0, got -1.0"),
        (dict(atol=math.inf), r"atol must be a finite real number >= 0, got inf"),
        (dict(reference_rtol="1e-10"), r"reference_rtol must be a finite real number >= 0"),
        (dict(directions=1.5), r"directions must be an integer in \[0, 10000\], got 1.5"),
        (dict(max_coordinates=0, directions=0), r"max_coordinates=0 and directions=0 probe nothing"),
    ],
)
def test_check_gradients_refuses_tolerances_that_would_make_it_lie(arguments, message):
    model, params, x, y = _small_network()
    with pytest.raises(pn.ConfigError, match=r"check_gradients\(serial\): " + message):
        pn.check_gradients(model, params, x, y, pn.softmax_cross_entropy, **arguments)


def test_checks_refuse_non_finite_points_naming_the_leaf():
    model, params, x, y = _small_network()
    params[2]["b"] = params[2]["b"].at[0].set(jnp.nan)
    with pytest.raises(pn.DataError, match=r"check_gradients\(serial\): params\[2\]\['b'\] must be finite"):
        pn.check_gradients(model, params, x, y, pn.softmax_cross_entropy)
    with pytest.raises(pn.DataError, match=r"check_layer\(Tanh\): x must be finite, got 1 non-finite"):
        pn.check_layer(pn.Tanh(), x=jnp.array([[0.5, jnp.inf]]))
    with pytest.raises(pn.ConfigError, match=r"check_layer\(Tanh\): eps must be"):
        pn.check_layer(pn.Tanh(), eps=-1e-5)


# --------------------------------------------------------------------------
# Inputs that are not arrays; data helpers; wrappers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("x", ["abc", None, {"x": 1.0}, b"\x00", [[1.0, "a"]]])
def test_apply_refuses_inputs_that_are_not_arrays(x):
    layer = pn.Dense(2)
    _, params = layer.init(KEY, (-1, 3))
    with pytest.raises(pn.InputTypeError, match=r"Dense\(2\): expected a floating-point array input, got"):
        layer.apply(params, x)


def test_standardizer_refuses_empty_non_finite_and_mismatched_data():
    from purenet.data import Standardizer

    with pytest.raises(pn.ShapeError, match=r"Standardizer.fit: x holds no examples"):
        Standardizer.fit(np.zeros((0, 2)))
    with pytest.raises(pn.ConfigError, match=r"Standardizer.fit: x holds NaN or inf in 1 example"):
        Standardizer.fit(np.array([[np.nan, 1.0], [1.0, 2.0]]))
    scaler = Standardizer.fit(np.array([[0.0, 1.0], [2.0, 3.0]]))
    with pytest.raises(pn.ShapeError, match=r"Standardizer.transform: expected examples of shape \(2,\)"):
        scaler.transform(np.ones((3, 5)))
    with pytest.raises(pn.InputTypeError, match=r"Standardizer.inverse: x must be numeric"):
        scaler.inverse(np.array([["a", "b"]]))


@pytest.mark.parametrize("seed", ["a", -1, 1.5, None])
def test_dataset_seeds_must_be_non_negative_integers(seed):
    with pytest.raises(pn.ConfigError, match="train_test_split: seed must be an integer >= 0"):
        pn.load_digits(seed=seed)


def test_wrappers_refuse_what_is_not_a_layer_or_a_function():
    with pytest.raises(pn.ConfigError, match="mixed_precision: expected a purenet Layer, got str"):
        pn.mixed_precision("x", pn.policy())
    with pytest.raises(pn.ConfigError, match="Swish: fn must be callable, got int"):
        pn.elementwise("Swish", 3)
    with pytest.raises(pn.ConfigError, match="Swish: np_derivative must be callable, got str"):
        pn.elementwise("Swish", jnp.tanh, np_fn=np.tanh, np_derivative="1 - tanh^2")
