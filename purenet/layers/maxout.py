"""Maxout units (Goodfellow et al. 2013; the book's section 6.3.1.1).

    z[..., i, k] = sum_j x[..., j] w[j, i, k] + b[i, k]
    h[..., i]    = max_k z[..., i, k]

Parameter layout (public and stable): ``{"w": (d, n, k), "b": (n, k)}``.

Convention at the kink: where several pieces tie for the maximum, the first
maximal piece (lowest k) is selected, and the whole gradient flows through it.
A plain ``jnp.max`` would split the gradient evenly between tied pieces, so
``apply`` selects the piece explicitly with ``argmax``, which returns the
first maximum.

Hand-derived backward.  Let k*(b, i) be the selected piece and
S[b, i, k] = [k = k*(b, i)] its one-hot indicator; with G = dJ/dh, the
gradient reaches z only through the selected piece, dJ/dz = S G[..., None], so

    dJ/dw[j, i, k] = sum_b x[b, j] S[b, i, k] G[b, i]
    dJ/db[i, k]    = sum_b S[b, i, k] G[b, i]
    dJ/dx[b, j]    = sum_{i,k} w[j, i, k] S[b, i, k] G[b, i]

Hand-derived R-operator (Pearlmutter 1994).  Away from ties the selection S
is locally constant, so h is the selected piece, an affine map bilinear in
(x, w): no unit curvature, only the cross terms between x and w.  With
R{z} = R{x} . w + x . v_w + v_b and R{G_z} = S R{G}[..., None]:

    R{h}      = the selected entry of R{z}
    R{dJ/dw}  = R{x}^T G_z + x^T R{G_z}
    R{dJ/db}  = sum_b R{G_z}
    R{dJ/dx}  = R{G_z} . w^T + G_z . v_w^T
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
    sum_to_shape,
    with_width,
)

# He normal over the input width d: each piece is a rectifier-like linear map.
_maxout_w_default = jax.nn.initializers.variance_scaling(
    2.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2)
)


def Maxout(
    units: int,
    pieces: int,
    w_init: Initializer | None = None,
    b_init: Initializer = jax.nn.initializers.zeros,
) -> Layer:
    """A maxout layer: each of ``units`` outputs is the max of ``pieces`` affine pieces.

    Args:
      units: output width n, >= 1.
      pieces: pieces per unit k, >= 1 (k = 1 is a Dense layer).
      w_init: initializer for ``w`` of shape (d, n, k); ``None`` is He
        normal with fan-in d.
      b_init: initializer for ``b`` of shape (n, k).

    Returns:
      A Layer with params ``{"w": (d, n, k), "b": (n, k)}``.
    """
    name = f"Maxout({units}, pieces={pieces})"
    units = require_positive_int(name, "units", units)
    pieces = require_positive_int(name, "pieces", pieces)
    require_initializers(name, w_init=w_init, b_init=b_init)
    chosen_w_init = _maxout_w_default if w_init is None else w_init

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        w_key, b_key = jax.random.split(key)
        params = {
            "w": chosen_w_init(w_key, (width, units, pieces)),
            "b": b_init(b_key, (units, pieces)),
        }
        return with_width(tuple(input_shape), units), params

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params_like_init(name, init, params, x)
        z = jnp.einsum("...j,jik->...ik", x, params["w"]) + params["b"]
        first_max = jnp.argmax(z, axis=-1, keepdims=True)
        return jnp.take_along_axis(z, first_max, axis=-1)[..., 0]

    # A maxout layer is its own unit, so it has no init policy: ``serial`` never swaps its initializer.
    return Layer(init, apply, name=name, reference=MAXOUT_REFERENCE)


def _pieces(params, x: np.ndarray) -> np.ndarray:
    return np.einsum("...j,jik->...ik", x, params["w"]) + params["b"]


def maxout_forward(params, x: np.ndarray):
    """h_i = max_k z_ik; the pullback sends G through the first maximal piece only (module docstring)."""
    z = _pieces(params, x)
    selected = np.argmax(z, axis=-1)  # NumPy's argmax also returns the first maximum

    def pullback(g):
        g_z = (np.arange(z.shape[-1]) == selected[..., None]) * g[..., None]
        rows = g_z.reshape(-1, *z.shape[-2:])
        g_w = np.einsum("bj,bik->jik", x.reshape(-1, x.shape[-1]), rows)
        g_x = np.einsum("...ik,jik->...j", g_z, params["w"])
        return {"w": g_w, "b": sum_to_shape(g_z, z.shape[-2:])}, g_x

    return z.max(axis=-1), pullback


def maxout_kinks(params, x: np.ndarray) -> float:
    """The smallest gap between a unit's top two pieces (a tie is the kink)."""
    z = _pieces(params, x)
    if z.shape[-1] < 2 or z.size == 0:
        return np.inf
    top_two = np.sort(z, axis=-1)[..., -2:]
    return float(np.min(top_two[..., 1] - top_two[..., 0]))


def maxout_rop(params, x: np.ndarray, v, r_x: np.ndarray):
    """R{h} through the selected pieces, and the R-pullback's cross terms (module docstring)."""
    z = _pieces(params, x)
    r_z = np.einsum("...j,jik->...ik", r_x, params["w"]) + _pieces(v, x)
    chosen = np.arange(z.shape[-1]) == np.argmax(z, axis=-1)[..., None]

    def pullback(g, r_g):
        g_z, r_g_z = chosen * g[..., None], chosen * r_g[..., None]
        g_w = _weight_gradient(x, g_z)
        r_g_w = _weight_gradient(r_x, g_z) + _weight_gradient(x, r_g_z)
        g_x = np.einsum("...ik,jik->...j", g_z, params["w"])
        r_g_x = np.einsum("...ik,jik->...j", r_g_z, params["w"]) + np.einsum("...ik,jik->...j", g_z, v["w"])
        grads = ({"w": g_w, "b": sum_to_shape(g_z, z.shape[-2:])}, g_x)
        return grads, ({"w": r_g_w, "b": sum_to_shape(r_g_z, z.shape[-2:])}, r_g_x)

    return z.max(axis=-1), np.sum(chosen * r_z, axis=-1), pullback


def _weight_gradient(x: np.ndarray, g_z: np.ndarray) -> np.ndarray:
    """sum over the batch of x_j g_z[i, k]: dJ/dw for pieces z = x . w."""
    return np.einsum("bj,bik->jik", x.reshape(-1, x.shape[-1]), g_z.reshape(-1, *g_z.shape[-2:]))


MAXOUT_REFERENCE = Reference(maxout_forward, maxout_kinks, maxout_rop)


__all__ = ["Maxout"]
