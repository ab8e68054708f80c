"""The rectifier family g(z, alpha) = max(0, z) + alpha min(0, z), values and kinks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

Z = jnp.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])


@pytest.mark.parametrize(
    "layer, expected",
    [
        (pn.ReLU(), [0.0, 0.0, 0.0, 0.5, 3.0]),
        (pn.AbsRect(), [2.0, 0.5, 0.0, 0.5, 3.0]),
        (pn.LeakyReLU(), [-0.02, -0.005, 0.0, 0.5, 3.0]),
        (pn.LeakyReLU(0.2), [-0.4, -0.1, 0.0, 0.5, 3.0]),
    ],
)
def test_fixed_slope_values(layer, expected):
    out_shape, params = layer.init(jax.random.PRNGKey(0), (-1, 5))
    assert out_shape == (-1, 5) and params == ()
    np.testing.assert_allclose(layer.apply(params, Z)[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "layer, slope_at_zero",
    [(pn.ReLU(), 0.0), (pn.AbsRect(), -1.0), (pn.LeakyReLU(0.01), 0.01)],
)
def test_derivative_at_the_kink_is_alpha(layer, slope_at_zero):
    derivative = jax.grad(lambda z: layer.apply((), z).sum())(jnp.zeros((1, 1)))
    assert float(derivative[0, 0]) == pytest.approx(slope_at_zero)


def test_prelu_per_feature_and_shared(key):
    out_shape, params = pn.PReLU().init(key, (-1, 5))
    assert out_shape == (-1, 5)
    np.testing.assert_allclose(params["alpha"], np.full(5, 0.25))
    _, shared = pn.PReLU(shared=True).init(key, (-1, 5))
    assert shared["alpha"].shape == ()
    alpha = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(
        pn.PReLU().apply({"alpha": alpha}, Z)[0], [-0.2, -0.1, 0.0, 0.5, 3.0], rtol=1e-6
    )


def test_prelu_gradients_at_the_kink():
    alpha = jnp.array([0.3])
    grads = jax.grad(lambda a, z: pn.PReLU().apply({"alpha": a}, z).sum(), argnums=(0, 1))
    g_alpha, g_z = grads(alpha, jnp.zeros((1, 1)))
    assert float(g_z[0, 0]) == pytest.approx(0.3)  # the z <= 0 side's slope
    assert float(g_alpha[0]) == 0.0  # min(0, 0) = 0
    g_alpha, _ = grads(alpha, jnp.array([[-2.0]]))
    assert float(g_alpha[0]) == -2.0


def test_prelu_wrong_alpha_shape(key):
    with pytest.raises(pn.ParamsError, match=r"PReLU at params\['alpha'\]: expected shape \(5,\)"):
        pn.PReLU().apply({"alpha": jnp.ones(4)}, jnp.ones((2, 5)))


def test_parameter_free_layer_refuses_params():
    with pytest.raises(pn.ParamsError, match="ReLU: this layer has no parameters and expects ()"):
        pn.ReLU().apply({"w": jnp.ones(2)}, jnp.ones((1, 2)))


def test_rectifiers_prefer_he_init():
    he = jax.nn.initializers.he_normal()
    for layer in (pn.ReLU(), pn.AbsRect(), pn.LeakyReLU(), pn.PReLU()):
        assert layer.init_policy.prefers is not None
        a = layer.init_policy.prefers(jax.random.PRNGKey(3), (4, 4))
        np.testing.assert_array_equal(a, he(jax.random.PRNGKey(3), (4, 4)))
