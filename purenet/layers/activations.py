"""Parameter-free elementwise units (the book's sections 6.3.2 and 6.3.3).

    Sigmoid   sigma(z) = 1 / (1 + exp(-z))
    Tanh      tanh(z) = 2 sigma(2z) - 1
    Softplus  zeta(z) = log(1 + exp(z)), a smooth rectifier (Dugas et al. 2001)
    HardTanh  max(-1, min(1, z)) (Collobert 2004)
    Cos       cos(z): with Dense before it, the book's h = cos(Wx + b) unit
    Identity  z

Convention at the kinks: HardTanh'(z) = 1 for |z| < 1 strictly and 0
elsewhere, so at z = +-1 exactly the derivative is 0 (the flat side).
``apply`` writes the unit as ``where(|z| < 1, z, sign(z))`` so that JAX's
derivative follows this; ``jnp.clip`` would give 1/2 at the kinks.

Sigmoid and tanh saturate, so the weights before them are best drawn with
Glorot's scaling (Glorot and Bengio 2010); ``serial`` hands that to the
layer in front of them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from purenet.core import Initializer, Layer, check_input, check_no_params, feature_width

glorot_normal = jax.nn.initializers.glorot_normal()


def elementwise(
    name: str, fn: Callable[[jax.Array], jax.Array], preferred_init: Initializer | None = None
) -> Layer:
    """A parameter-free layer applying ``fn`` to every entry of its input.

    Use it for a unit of your own: ``elementwise("Swish", lambda z: z * jax.nn.sigmoid(z))``.
    """

    def init(key, input_shape):
        feature_width(name, input_shape)
        return tuple(input_shape), ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        return fn(check_input(name, x))

    return Layer(init, apply, name=name, preferred_init=preferred_init)


def hard_tanh(z: jax.Array) -> jax.Array:
    """max(-1, min(1, z)) with derivative 0 at z = +-1 (see module docstring)."""
    return jnp.where(jnp.abs(z) < 1, z, jnp.sign(z))


def Sigmoid() -> Layer:
    """The logistic sigmoid unit."""
    return elementwise("Sigmoid", jax.nn.sigmoid, glorot_normal)


def Tanh() -> Layer:
    """The hyperbolic tangent unit."""
    return elementwise("Tanh", jnp.tanh, glorot_normal)


def Softplus() -> Layer:
    """The softplus unit, log(1 + exp(z)), computed without overflow."""
    return elementwise("Softplus", jax.nn.softplus)


def HardTanh() -> Layer:
    """The hard tanh unit, max(-1, min(1, z)); derivative 0 at z = +-1."""
    return elementwise("HardTanh", hard_tanh, glorot_normal)


def Cos() -> Layer:
    """The cosine unit: ``serial(Dense(n), Cos())`` is the book's h = cos(Wx + b)."""
    return elementwise("Cos", jnp.cos)


def Identity() -> Layer:
    """The identity: returns its input unchanged."""
    return elementwise("Identity", lambda z: z)


__all__ = ["Cos", "HardTanh", "Identity", "Sigmoid", "Softplus", "Tanh", "elementwise", "hard_tanh"]
