"""RBF units: layout and hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def test_layout_and_default_width(key):
    out_shape, params = pn.RBF(3).init(key, (-1, 4))
    assert out_shape == (-1, 3)
    assert params["w"].shape == (4, 3)
    np.testing.assert_allclose(params["sigma"], np.full(3, 2.0))  # sqrt(d) = sqrt(4)


def test_hand_computed_value():
    params = {"w": jnp.array([[0.0, 1.0], [0.0, 2.0]]), "sigma": jnp.array([1.0, 2.0])}
    x = jnp.array([[1.0, 1.0]])
    # unit 0: centre (0, 0), ||x - c||^2 = 2, exp(-2); unit 1: centre (1, 2), distance^2 = 1, exp(-1/4)
    np.testing.assert_allclose(pn.RBF(2).apply(params, x), [[math.exp(-2), math.exp(-0.25)]], rtol=1e-6)


def test_a_point_at_a_centre_gives_one(key):
    _, params = pn.RBF(5).init(key, (-1, 3))
    centre = params["w"][:, 2]
    assert float(pn.RBF(5).apply(params, centre[None])[0, 2]) == pytest.approx(1.0, abs=1e-5)


def test_wrong_sigma_shape(key):
    _, params = pn.RBF(3).init(key, (-1, 2))
    params = {**params, "sigma": jnp.ones(2)}
    with pytest.raises(pn.ParamsError, match=r"RBF\(3\) at params\['sigma'\]"):
        pn.RBF(3).apply(params, jnp.ones((1, 2)))
