"""Affine layers: Dense and LowRankDense (the book's linear hidden units, section 6.3.3).

Parameter layouts (public and stable):

    Dense(n)           {"w": (d, n), "b": (n,)}                 y = x @ w + b
    LowRankDense(n, r) {"u": (d, r), "v": (r, n), "b": (n,)}    y = x @ u @ v + b

A weight initializer left as ``None`` is the library default, He normal
(He et al. 2015), which ``serial`` swaps for the unit that follows the layer
when that unit prefers another (Glorot for sigmoid and tanh).
"""

from __future__ import annotations

import jax

from purenet.core import (
    Initializer,
    Layer,
    check_input,
    check_params,
    feature_width,
    require_positive_int,
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
        or whatever the unit after this layer prefers inside ``serial``.
      b_init: initializer for ``b``; zeros, or ``constant(0.1)`` so that
        rectified units start active (section 6.3.1).

    Returns:
      A Layer with params ``{"w": (d, n), "b": (n,)}``.
    """
    name = f"Dense({units})"
    units = require_positive_int(name, "units", units)
    chosen_w_init = he_normal if w_init is None else w_init

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        w_key, b_key = jax.random.split(key)
        params = {"w": chosen_w_init(w_key, (width, units)), "b": b_init(b_key, (units,))}
        return with_width(tuple(input_shape), units), params

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params(name, params, {"w": (x.shape[-1], units), "b": (units,)}, x.shape[-1])
        return x @ params["w"] + params["b"]

    def rebuilt(initializer):
        return Dense(units, initializer, b_init)

    return Layer(init, apply, name=name, with_init=rebuilt if w_init is None else None)


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
        expected = {"u": (x.shape[-1], rank), "v": (rank, units), "b": (units,)}
        check_params(name, params, expected, x.shape[-1])
        # (x u) v costs r (d + n) per row, never forming the d x n product.
        return (x @ params["u"]) @ params["v"] + params["b"]

    def rebuilt(initializer):
        return LowRankDense(units, rank, initializer, v_init, b_init)

    return Layer(init, apply, name=name, with_init=rebuilt if u_init is None else None)


__all__ = ["Dense", "LowRankDense"]
