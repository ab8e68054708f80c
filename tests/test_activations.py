"""Parameter-free units: hand-computed values and the hard-tanh kinks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

Z = [-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]


@pytest.mark.parametrize(
    "layer, formula",
    [
        (pn.Sigmoid(), lambda z: 1 / (1 + math.exp(-z))),
        (pn.Tanh(), math.tanh),
        (pn.Softplus(), lambda z: math.log1p(math.exp(z))),
        (pn.HardTanh(), lambda z: max(-1.0, min(1.0, z))),
        (pn.Cos(), math.cos),
        (pn.Identity(), lambda z: z),
    ],
)
def test_values(layer, formula):
    out_shape, params = layer.init(jax.random.PRNGKey(0), (-1, len(Z)))
    assert out_shape == (-1, len(Z)) and params == ()
    np.testing.assert_allclose(layer.apply(params, jnp.array([Z]))[0], [formula(z) for z in Z], rtol=1e-6)


def test_softplus_does_not_overflow():
    out = pn.Softplus().apply((), jnp.array([[-1e4, 1e4]]))
    np.testing.assert_allclose(out, [[0.0, 1e4]])


def test_hard_tanh_derivative_is_zero_at_the_kinks_and_one_inside():
    z = jnp.array([[-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 2.0]])
    derivative = jax.grad(lambda v: pn.HardTanh().apply((), v).sum())(z)
    np.testing.assert_array_equal(derivative[0], [0, 0, 1, 1, 1, 0, 0])


def test_cos_after_dense_is_the_books_cos_unit(key):
    model = pn.serial(pn.Dense(3), pn.Cos())
    _, params = model.init(key, (-1, 2))
    x = jnp.array([[0.3, -0.7]])
    np.testing.assert_allclose(
        model.apply(params, x), jnp.cos(x @ params[0]["w"] + params[0]["b"]), rtol=1e-6
    )


def test_sigmoid_and_tanh_prefer_glorot():
    glorot = jax.nn.initializers.glorot_normal()
    for layer in (pn.Sigmoid(), pn.Tanh()):
        drawn = layer.init_policy.prefers(jax.random.PRNGKey(2), (5, 3))
        np.testing.assert_array_equal(drawn, glorot(jax.random.PRNGKey(2), (5, 3)))


def test_elementwise_builds_a_users_unit(key):
    swish = pn.elementwise("Swish", lambda z: z * jax.nn.sigmoid(z))
    np.testing.assert_allclose(swish.apply((), jnp.array([[1.0]])), [[1 / (1 + math.exp(-1))]], rtol=1e-6)
    with pytest.raises(pn.InputTypeError, match="^Swish: expected a floating-point input"):
        swish.apply((), jnp.array([[1]]))
