"""Maxout: layout, hand-computed values, the first-piece convention at ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def test_layout(key):
    out_shape, params = pn.Maxout(4, pieces=3).init(key, (-1, 5))
    assert out_shape == (-1, 4)
    assert params["w"].shape == (5, 4, 3) and params["b"].shape == (4, 3)


def test_hand_computed_value():
    # one input feature, two units, two pieces each
    w = jnp.array([[[1.0, -1.0], [2.0, 0.5]]])  # (d=1, n=2, k=2)
    b = jnp.array([[0.0, 0.0], [-1.0, 1.0]])
    x = jnp.array([[3.0], [-2.0]])
    # x=3: unit0 max(3, -3)=3, unit1 max(5, 2.5)=5; x=-2: unit0 max(-2, 2)=2, unit1 max(-5, 0)=0
    np.testing.assert_allclose(pn.Maxout(2, 2).apply({"w": w, "b": b}, x), [[3.0, 5.0], [2.0, 0.0]])


def test_equals_max_over_pieces_of_affine_maps(key):
    _, params = pn.Maxout(6, 4).init(key, (-1, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 3))
    z = np.einsum("bj,jik->bik", np.asarray(x), np.asarray(params["w"])) + np.asarray(params["b"])
    np.testing.assert_allclose(pn.Maxout(6, 4).apply(params, x), z.max(-1), rtol=1e-5, atol=1e-6)


def test_ties_send_the_whole_gradient_to_the_first_maximal_piece():
    # both pieces equal (z = x for both): d h / d w[0,0,k] is x for k = 0 and 0 for k = 1
    params = {"w": jnp.array([[[1.0, 1.0]]]), "b": jnp.zeros((1, 2))}
    x = jnp.array([[2.0]])
    grads = jax.grad(lambda p: pn.Maxout(1, 2).apply(p, x).sum())(params)
    np.testing.assert_array_equal(grads["w"], [[[2.0, 0.0]]])
    np.testing.assert_array_equal(grads["b"], [[1.0, 0.0]])


def test_pieces_below_one_are_refused():
    with pytest.raises(pn.ConfigError, match=r"Maxout\(3, pieces=0\): pieces must be an integer >= 1, got 0"):
        pn.Maxout(3, 0)


def test_wrong_pieces_in_params(key):
    _, params = pn.Maxout(2, 3).init(key, (-1, 4))
    with pytest.raises(pn.ParamsError, match=r"params\['w'\]: expected shape \(4, 2, 2\)"):
        pn.Maxout(2, 2).apply(params, jnp.ones((1, 4)))
