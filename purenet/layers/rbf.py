"""Radial basis function units (the book's section 6.3.3).

    h_i = exp(-||x - w[:, i]||^2 / sigma_i^2)

Parameter layout (public and stable): ``{"w": (d, n), "sigma": (n,)}``: the
centres are the columns of ``w``, as the book writes W_{:,i}, and the widths
are learned.  Only sigma^2 enters, so the sign of sigma is immaterial; a sigma
of zero divides by zero.

Hand-derived backward.  With D_i = ||x - w_i||^2, h_i = exp(-D_i / s_i^2),
G = dJ/dh and P_i = G_i h_i / s_i^2 (= -dJ/dD_i):

    dJ/dx     = -2 sum_i P_i (x - w_i)  = -2 (x sum_i P_i - P w^T)
    dJ/dw_i   =  2 sum_b P_bi (x_b - w_i) = 2 ((x^T P)_i - w_i sum_b P_bi)
    dJ/ds_i   =  2 sum_b P_bi D_bi / s_i

Hand-derived R-operator (Pearlmutter 1994), along (R{x}, v_w, v_s):

    R{D_i}   = 2 (x - w_i) . (R{x} - v_w_i)
    R{h_i}   = h_i (-R{D_i} / s_i^2 + 2 D_i v_s_i / s_i^3)
    R{P_i}   = (R{G_i} h_i + G_i R{h_i}) / s_i^2 - 2 P_i v_s_i / s_i

and the product rule on the three gradients above: each is bilinear in
P and (x, w, D), so R{grad} = grad(R{P}) + grad with (x, w, D) replaced by
(R{x}, v_w, R{D}) at P, and dJ/ds_i gains -dJ/ds_i v_s_i / s_i from its 1 / s_i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import Initializer, Layer, Reference
from purenet.shapes import (
    check_input,
    check_params_like_init,
    feature_width,
    require_initializers,
    require_positive_int,
    with_width,
)


def squared_distances(x: jax.Array, centres: jax.Array) -> jax.Array:
    """||x - c_i||^2 for every row of x and column of ``centres``, as a matmul.

    Expanding |x|^2 - 2 x.c + |c|^2 avoids a (batch, d, n) intermediate;
    rounding can make the expansion slightly negative, hence the clamp.
    """
    cross = x @ centres
    x_sq = jnp.sum(x * x, axis=-1, keepdims=True)
    c_sq = jnp.sum(centres * centres, axis=0)
    return jnp.maximum(x_sq - 2.0 * cross + c_sq, 0.0)


def RBF(
    units: int,
    w_init: Initializer = jax.nn.initializers.normal(1.0),
    sigma_init: Initializer | None = None,
) -> Layer:
    """A layer of Gaussian radial basis units with learned centres and widths.

    Args:
      units: number of units n, >= 1.
      w_init: initializer of the centres ``w`` (d, n); standard normal,
        which suits standardized inputs.
      sigma_init: initializer of the widths (n,); ``None`` sets every
        sigma to sqrt(d), the typical distance scale between a standardized
        input and a standard-normal centre, so units start neither saturated
        nor dead.

    Returns:
      A Layer with params ``{"w": (d, n), "sigma": (n,)}``.
    """
    name = f"RBF({units})"
    units = require_positive_int(name, "units", units)
    require_initializers(name, w_init=w_init, sigma_init=sigma_init)

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        w_key, s_key = jax.random.split(key)
        if sigma_init is None:
            sigma = jnp.full((units,), jnp.sqrt(float(width)), dtype=jnp.float32)
        else:
            sigma = sigma_init(s_key, (units,))
        return with_width(tuple(input_shape), units), {"w": w_init(w_key, (width, units)), "sigma": sigma}

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params_like_init(name, init, params, x)
        return jnp.exp(-squared_distances(x, params["w"]) / jnp.square(params["sigma"]))

    return Layer(init, apply, name=name, reference=RBF_REFERENCE)


def _np_squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """D[..., i] = ||x - centres[:, i]||^2, formed directly (no expansion) for the reference."""
    return np.sum(np.square(x[..., :, None] - centres), axis=-2)


def rbf_forward(params, x: np.ndarray):
    """h_i = exp(-||x - w_i||^2 / s_i^2); the pullback's three gradients go through P = G h / s^2."""
    w, sigma = params["w"], params["sigma"]
    distances = _np_squared_distances(x, w)
    h = np.exp(-distances / np.square(sigma))

    def pullback(g):
        return _rbf_gradients(x, w, sigma, distances, g * h / np.square(sigma))

    return h, pullback


def _rbf_gradients(x, w, sigma, distances, p) -> tuple[dict, np.ndarray]:
    """(dJ/d{w, sigma}, dJ/dx) from P = G h / s^2 (module docstring)."""
    rows_x, rows_p = x.reshape(-1, w.shape[0]), p.reshape(-1, w.shape[1])
    g_x = -2.0 * (x * p.sum(axis=-1, keepdims=True) - p @ w.T)
    g_w = 2.0 * (rows_x.T @ rows_p - w * rows_p.sum(axis=0))
    g_sigma = 2.0 * np.sum((p * distances).reshape(-1, w.shape[1]), axis=0) / sigma
    return {"w": g_w, "sigma": g_sigma}, g_x


def rbf_rop(params, x: np.ndarray, v, r_x: np.ndarray):
    """R{h} and the R-pullback by the product rule through P (module docstring)."""
    w, sigma, v_w, v_s = params["w"], params["sigma"], v["w"], v["sigma"]
    distances = _np_squared_distances(x, w)
    r_distances = 2.0 * np.sum((x[..., :, None] - w) * (r_x[..., :, None] - v_w), axis=-2)
    h = np.exp(-distances / np.square(sigma))
    r_h = h * (-r_distances / np.square(sigma) + 2.0 * distances * v_s / sigma**3)

    def pullback(g, r_g):
        p = g * h / np.square(sigma)
        r_p = (r_g * h + g * r_h) / np.square(sigma) - 2.0 * p * v_s / sigma
        grads = _rbf_gradients(x, w, sigma, distances, p)
        (r_at_p, r_x_at_p), (cross, cross_x) = (
            _rbf_gradients(x, w, sigma, distances, r_p),
            _rbf_gradients(r_x, v_w, sigma, r_distances, p),
        )
        r_sigma = r_at_p["sigma"] + cross["sigma"] - grads[0]["sigma"] * v_s / sigma
        return grads, ({"w": r_at_p["w"] + cross["w"], "sigma": r_sigma}, r_x_at_p + cross_x)

    return h, r_h, pullback


RBF_REFERENCE = Reference(rbf_forward, rop=rbf_rop)


__all__ = ["RBF", "squared_distances"]
