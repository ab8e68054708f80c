"""Dense and LowRankDense: layouts, hand-computed values, initialization, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def test_dense_layout_and_hand_computed_value(key):
    out_shape, params = pn.Dense(2).init(key, (-1, 3))
    assert out_shape == (-1, 2)
    assert params["w"].shape == (3, 2) and params["b"].shape == (2,)
    params = {"w": jnp.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]), "b": jnp.array([0.5, -1.0])}
    x = jnp.array([[1.0, 2.0, 3.0]])
    # [1 + 0 + 9 + 0.5, 2 - 2 + 1.5 - 1]
    np.testing.assert_allclose(pn.Dense(2).apply(params, x), [[10.5, 0.5]])


def test_dense_keeps_leading_axes_and_works_unbatched(key):
    out_shape, params = pn.Dense(4).init(key, (-1, 7, 3))
    assert out_shape == (-1, 7, 4)
    assert pn.Dense(4).apply(params, jnp.ones((2, 7, 3))).shape == (2, 7, 4)
    assert pn.Dense(4).apply(params, jnp.ones(3)).shape == (4,)


def test_dense_default_init_is_he_normal_and_zero_bias():
    _, params = pn.Dense(1000).init(jax.random.PRNGKey(1), (-1, 500))
    assert jnp.all(params["b"] == 0)
    # He normal (truncated): variance 2 / fan_in.
    assert abs(float(jnp.var(params["w"])) * 500 / 2 - 1) < 0.02


def test_dense_takes_its_initializers(key):
    layer = pn.Dense(3, w_init=jax.nn.initializers.ones, b_init=jax.nn.initializers.constant(0.1))
    _, params = layer.init(key, (-1, 2))
    assert jnp.all(params["w"] == 1) and jnp.allclose(params["b"], 0.1)


def test_low_rank_dense_is_u_times_v(key):
    layer = pn.LowRankDense(5, rank=2)
    out_shape, params = layer.init(key, (-1, 4))
    assert out_shape == (-1, 5)
    assert {k: v.shape for k, v in params.items()} == {"u": (4, 2), "v": (2, 5), "b": (5,)}
    x = jax.random.normal(key, (3, 4))
    np.testing.assert_allclose(
        layer.apply(params, x), x @ (params["u"] @ params["v"]) + params["b"], rtol=1e-5, atol=1e-6
    )
    # q (n + p) parameters instead of n p.
    assert pn.count_params(params) == 2 * (4 + 5) + 5


def test_low_rank_dense_hand_value():
    params = {"u": jnp.array([[1.0], [2.0]]), "v": jnp.array([[3.0, -1.0]]), "b": jnp.array([0.0, 1.0])}
    np.testing.assert_allclose(pn.LowRankDense(2, 1).apply(params, jnp.array([[1.0, 1.0]])), [[9.0, -2.0]])


@pytest.mark.parametrize("make", [lambda: pn.Dense(0), lambda: pn.LowRankDense(3, 0), lambda: pn.Dense(2.5)])
def test_sizes_below_one_are_refused(make):
    with pytest.raises(pn.ConfigError, match="must be an integer >= 1"):
        make()


def test_wrong_width_at_apply_names_the_leaf_and_the_input_width(key):
    _, params = pn.Dense(2).init(key, (-1, 3))
    with pytest.raises(pn.ParamsError) as info:
        pn.Dense(2).apply(params, jnp.ones((1, 4)))
    assert str(info.value) == (
        "Dense(2) at params['w']: expected shape (4, 2) for an input of width 4, got (3, 2)"
    )


def test_params_with_wrong_keys(key):
    with pytest.raises(pn.ParamsError, match=r"expected keys \['b', 'w'\], got \['W', 'b'\]"):
        pn.Dense(2).apply({"W": jnp.ones((3, 2)), "b": jnp.ones(2)}, jnp.ones((1, 3)))
    with pytest.raises(pn.ParamsError, match="expected a dict"):
        pn.Dense(2).apply((), jnp.ones((1, 3)))


def test_integer_input_is_a_type_error(key):
    _, params = pn.Dense(2).init(key, (-1, 3))
    with pytest.raises(
        pn.InputTypeError, match=r"Dense\(2\): expected a floating-point input, got dtype int"
    ):
        pn.Dense(2).apply(params, jnp.ones((1, 3), jnp.int32))


def test_unknown_width_at_init():
    with pytest.raises(pn.ShapeError, match=r"Dense\(2\): the feature \(last\) axis"):
        pn.Dense(2).init(jax.random.PRNGKey(0), (-1, None))
