"""Layers that reshape or regularize without parameters: Flatten and Dropout.

Hand-derived backward: Flatten reshapes dJ/dy back to the input's shape;
Dropout's reference is its evaluation-mode forward, the identity, so its
backward passes dJ/dy through unchanged (gradient checks run with
``train=False``).  Both are linear in x, so their R-operator passes
(second order) are the same ops on R{x} and R{dJ/dy}.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import Layer, MissingKeyError, Reference, ShapeError, check_key
from purenet.shapes import check_input, check_no_params, normalize_shape
from purenet.validate import require_number


def Flatten() -> Layer:
    """Flatten every axis after the first (the batch axis) into one feature axis."""
    name = "Flatten"

    def init(key, input_shape):
        shape = normalize_shape(name, input_shape)
        if len(shape) < 2 or any(d < 1 for d in shape[1:]):
            raise ShapeError(
                name,
                f"expected a batch axis then known feature axes, e.g. (-1, 8, 8), got {shape}",
            )
        return (shape[0], math.prod(shape[1:])), ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        x = check_input(name, x, min_rank=2)
        return jnp.reshape(x, (x.shape[0], -1))

    return Layer(init, apply, name=name, reference=FLATTEN_REFERENCE)


def Dropout(rate: float) -> Layer:
    """Inverted dropout (Srivastava et al. 2014; the book's section 7.12).

    While training, each entry is zeroed with probability ``rate`` and the
    survivors are scaled by 1 / (1 - rate), so the expected activation is
    unchanged and evaluation needs no rescaling.  When not training the layer
    is the identity.

    Args:
      rate: the probability of dropping an entry, in [0, 1).

    Returns:
      A parameter-free Layer whose ``apply`` needs ``key`` when ``train=True``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import purenet as pn
      >>> dropout = pn.Dropout(0.5)
      >>> _, params = dropout.init(jax.random.PRNGKey(0), (-1, 6))
      >>> x = jnp.ones((1, 6))
      >>> print(dropout.apply(params, x))  # evaluation (train=False): the identity
      [[1. 1. 1. 1. 1. 1.]]
      >>> y = dropout.apply(params, x, key=jax.random.PRNGKey(1), train=True)
      >>> set(y.ravel().tolist()) <= {0.0, 2.0}  # each entry dropped, or scaled by 1 / (1 - rate)
      True
    """
    name = f"Dropout({rate})"
    rate = require_number(name, "rate (a probability)", rate, low=0.0, high=1.0, high_open=True)

    def init(key, input_shape):
        return tuple(normalize_shape(name, input_shape)), ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        x = check_input(name, x)
        if not train or rate == 0.0:
            return x
        if key is None:
            raise MissingKeyError(name, "train=True needs a PRNG key: apply(params, x, key=key, train=True)")
        keep = jax.random.bernoulli(check_key(name, key), 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)

    return Layer(init, apply, name=name, reference=IDENTITY_REFERENCE)


# Flatten's pullback reshapes G back to x's shape; evaluation-mode dropout is the identity.
# Both are linear in x, so their R-pass is the op itself on R{x} (Reference.linear).
FLATTEN_REFERENCE = Reference.linear(
    lambda params, x: (np.reshape(x, (x.shape[0], -1)), lambda g: ((), np.reshape(g, np.shape(x))))
)
IDENTITY_REFERENCE = Reference.linear(lambda params, x: (x, lambda g: ((), g)))


__all__ = ["Dropout", "Flatten"]
