"""Affine layers: Dense and LowRankDense (the book's linear hidden units, section 6.3.3).

Parameter layouts (public and stable):

    Dense(n)           {"w": (d, n), "b": (n,)}                 y = x @ w + b
    LowRankDense(n, r) {"u": (d, r), "v": (r, n), "b": (n,)}    y = x @ u @ v + b

Init policy: a weight initializer left as ``None`` is the library default,
He normal (He et al. 2015), *and* the layer declares itself rebuildable
(``InitPolicy.rebuild``), so ``serial`` gives it the initializer the unit
right after it prefers (Glorot before sigmoid and tanh).  Pass ``w_init``
(``u_init``) and that choice is kept wherever the layer sits.

Hand-derived backward (the book's eqs. 6.45-6.46 in batched, row-vector form).
With y = x w + b for a batch of rows and G = dJ/dy:

    dJ/dw = x^T G          (sum over the batch of outer products x_b G_b^T)
    dJ/db = sum_b G_b
    dJ/dx = G w^T

and for y = (x u) v + b, with h = x u and G_h = G v^T:

    dJ/dv = h^T G,   dJ/du = x^T G_h,   dJ/db = sum_b G_b,   dJ/dx = G_h u^T

Hand-derived R-operator (Pearlmutter 1994): R{.} is the derivative along
the direction (R{x}, R{w} = v_w, R{b} = v_b).  y = x w + b is bilinear in
(x, w), so its second derivatives are the cross terms alone (f'' = 0 in each
argument); the product rule on each line above gives

    R{y}     = R{x} w + x v_w + v_b
    R{dJ/dw} = R{x}^T G + x^T R{G}      (the cross term: x's direction meets G)
    R{dJ/db} = sum_b R{G}_b
    R{dJ/dx} = R{G} w^T + G v_w^T       (the cross term: w's direction meets G)

and LowRankDense chains two such products through h = x u.
"""

from __future__ import annotations

import jax
import numpy as np

from purenet.core import NO_INIT_POLICY, Initializer, InitPolicy, Layer, Reference
from purenet.shapes import (
    check_input,
    check_params_like_init,
    feature_width,
    require_initializers,
    require_positive_int,
    sum_to_shape,
    with_width,
)

he_normal = jax.nn.initializers.he_normal()
lecun_normal = jax.nn.initializers.lecun_normal()
zeros = jax.nn.initializers.zeros


def Dense(
    units: int,
    w_init: Initializer | None = None,
    b_init: Initializer = zeros,
) -> Layer:
    """A fully connected affine layer, ``y = x @ w + b`` (the book's eq. 6.3 without g).

    Args:
      units: output width n, >= 1.
      w_init: initializer for ``w`` of shape (d, n); ``None`` is He normal,
        or whatever the unit after this layer prefers inside ``serial``
        (module docstring, "Init policy").
      b_init: initializer for ``b``; zeros, or ``constant(0.1)`` so that
        rectified units start active (section 6.3.1).

    Returns:
      A Layer with params ``{"w": (d, n), "b": (n,)}``.

    Examples:
      ``init`` infers d from the input shape; -1 is the batch axis.

      >>> import jax, jax.numpy as jnp
      >>> import purenet as pn
      >>> layer = pn.Dense(3)
      >>> out_shape, params = layer.init(jax.random.PRNGKey(0), (-1, 4))
      >>> out_shape
      (-1, 3)
      >>> jax.tree_util.tree_map(jnp.shape, params)
      {'b': (3,), 'w': (4, 3)}
      >>> layer.apply(params, jnp.ones((2, 4))).shape
      (2, 3)
    """
    name = f"Dense({units})"
    units = require_positive_int(name, "units", units)
    require_initializers(name, w_init=w_init, b_init=b_init)
    chosen_w_init = he_normal if w_init is None else w_init

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        w_key, b_key = jax.random.split(key)
        params = {"w": chosen_w_init(w_key, (width, units)), "b": b_init(b_key, (units,))}
        return with_width(tuple(input_shape), units), params

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params_like_init(name, init, params, x)
        return x @ params["w"] + params["b"]

    def rebuilt(chosen):
        return Dense(units, chosen, b_init)

    policy = NO_INIT_POLICY if w_init is not None else InitPolicy(rebuild=rebuilt)
    return Layer(init, apply, name=name, reference=DENSE_REFERENCE, init_policy=policy)


def matmul_bprop(x: np.ndarray, w: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For y = x w over a batch of rows: (dJ/dw, dJ/dx) = (x^T G, G w^T), leading axes summed."""
    rows_x, rows_g = x.reshape(-1, w.shape[0]), g.reshape(-1, w.shape[1])
    return rows_x.T @ rows_g, g @ w.T


def matmul_r_bprop(x, w, r_x, v_w, g, r_g) -> tuple[tuple, tuple]:
    """For y = x w: ``((dJ/dw, dJ/dx), (R{dJ/dw}, R{dJ/dx}))`` with R{dJ/dw} = R{x}^T G + x^T R{G}
    and R{dJ/dx} = R{G} w^T + G v_w^T (module docstring)."""
    g_w, g_x = matmul_bprop(x, w, g)
    r_g_w, r_g_x = matmul_bprop(x, w, r_g)
    cross_w, cross_x = matmul_bprop(r_x, v_w, g)  # (R{x}^T G, G v_w^T): the terms a missing cross term drops
    return (g_w, g_x), (r_g_w + cross_w, r_g_x + cross_x)


def dense_forward(params, x: np.ndarray):
    """y = x w + b, and its pullback: dJ/dw = x^T G, dJ/db = sum_b G, dJ/dx = G w^T."""
    w, b = params["w"], params["b"]

    def pullback(g):
        g_w, g_x = matmul_bprop(x, w, g)
        return {"w": g_w, "b": sum_to_shape(g, np.shape(b))}, g_x

    return x @ w + b, pullback


def dense_rop(params, x: np.ndarray, v, r_x: np.ndarray):
    """R{y} = R{x} w + x v_w + v_b; the pullback adds R{dJ/dw}, R{dJ/db}, R{dJ/dx} (module docstring)."""
    w, b = params["w"], params["b"]

    def pullback(g, r_g):
        (g_w, g_x), (r_g_w, r_g_x) = matmul_r_bprop(x, w, r_x, v["w"], g, r_g)
        grads = ({"w": g_w, "b": sum_to_shape(g, np.shape(b))}, g_x)
        return grads, ({"w": r_g_w, "b": sum_to_shape(r_g, np.shape(b))}, r_g_x)

    return x @ w + b, r_x @ w + x @ v["w"] + v["b"], pullback


DENSE_REFERENCE = Reference(dense_forward, rop=dense_rop)


def LowRankDense(
    units: int,
    rank: int,
    u_init: Initializer | None = None,
    v_init: Initializer = lecun_normal,
    b_init: Initializer = zeros,
) -> Layer:
    """An affine layer whose weight is factored, ``W = U V`` (section 6.3.3).

    With input width d the layer holds r (d + n) weights instead of d n: the
    book's linear hidden units that save parameters when r is small.

    Args:
      units: output width n, >= 1.
      rank: inner width r, >= 1.
      u_init: initializer for ``u`` (d, r); ``None`` is He normal (or the
        next unit's choice inside ``serial``).  With ``v`` drawn at variance
        1 / r the product U V then has the variance of ``u_init`` over d.
      v_init: initializer for ``v`` (r, n); LeCun normal.
      b_init: initializer for ``b`` (n,).

    Returns:
      A Layer with params ``{"u": (d, r), "v": (r, n), "b": (n,)}``.
    """
    name = f"LowRankDense({units}, rank={rank})"
    units = require_positive_int(name, "units", units)
    rank = require_positive_int(name, "rank", rank)
    require_initializers(name, u_init=u_init, v_init=v_init, b_init=b_init)
    chosen_u_init = he_normal if u_init is None else u_init

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        u_key, v_key, b_key = jax.random.split(key, 3)
        params = {
            "u": chosen_u_init(u_key, (width, rank)),
            "v": v_init(v_key, (rank, units)),
            "b": b_init(b_key, (units,)),
        }
        return with_width(tuple(input_shape), units), params

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params_like_init(name, init, params, x)
        # (x u) v costs r (d + n) per row, never forming the d x n product.
        return (x @ params["u"]) @ params["v"] + params["b"]

    def rebuilt(chosen):
        return LowRankDense(units, rank, chosen, v_init, b_init)

    policy = NO_INIT_POLICY if u_init is not None else InitPolicy(rebuild=rebuilt)
    return Layer(init, apply, name=name, reference=LOW_RANK_REFERENCE, init_policy=policy)


def low_rank_forward(params, x: np.ndarray):
    """y = (x u) v + b; pullback with h = x u kept: dJ/dv = h^T G, G_h = G v^T, dJ/du = x^T G_h."""
    u, v, b = params["u"], params["v"], params["b"]
    h = x @ u

    def pullback(g):
        g_v, g_h = matmul_bprop(h, v, g)
        g_u, g_x = matmul_bprop(x, u, g_h)
        return {"u": g_u, "v": g_v, "b": sum_to_shape(g, np.shape(b))}, g_x

    return h @ v + b, pullback


def low_rank_rop(params, x: np.ndarray, v, r_x: np.ndarray):
    """Two R-products chained through h = x u: R{h} = R{x} u + x v_u, R{y} = R{h} v + h v_v + v_b."""
    u, w, b = params["u"], params["v"], params["b"]
    h, r_h = x @ u, r_x @ u + x @ v["u"]

    def pullback(g, r_g):
        (g_w, g_h), (r_g_w, r_g_h) = matmul_r_bprop(h, w, r_h, v["v"], g, r_g)
        (g_u, g_x), (r_g_u, r_g_x) = matmul_r_bprop(x, u, r_x, v["u"], g_h, r_g_h)
        grads = ({"u": g_u, "v": g_w, "b": sum_to_shape(g, np.shape(b))}, g_x)
        return grads, ({"u": r_g_u, "v": r_g_w, "b": sum_to_shape(r_g, np.shape(b))}, r_g_x)

    return h @ w + b, r_h @ w + h @ v["v"] + v["b"], pullback


LOW_RANK_REFERENCE = Reference(low_rank_forward, rop=low_rank_rop)


__all__ = ["Dense", "LowRankDense", "dense_forward", "matmul_bprop", "matmul_r_bprop"]
