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

Hand-derived backward: for h = f(z) applied entrywise, dJ/dz = dJ/dh * f'(z)
(the book's g <- g * f'(a) of Algorithm 6.4), with

    sigma'(z) = sigma(z) (1 - sigma(z))     tanh'(z) = 1 - tanh(z)^2
    zeta'(z)  = sigma(z)                    cos'(z)  = -sin(z)
    HardTanh'(z) = [|z| < 1]                Identity'(z) = 1

Hand-derived R-operator (Pearlmutter 1994): with R{z} the direction of z,
R{h} = f'(z) R{z}, and the product rule on dJ/dz = G f'(z) gives

    R{dJ/dz} = R{G} f'(z) + G f''(z) R{z}

where the second term is the unit's curvature, with

    sigma''(z) = sigma'(z) (1 - 2 sigma(z))   tanh''(z) = -2 tanh(z) tanh'(z)
    zeta''(z)  = sigma'(z)                    cos''(z)  = -cos(z)
    HardTanh''(z) = 0                         Identity''(z) = 0

HardTanh is piecewise linear: f'' = 0 on both sides of its kinks, and f'
keeps the first order's sides.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import NO_INIT_POLICY, ConfigError, Initializer, InitPolicy, Layer, Reference
from purenet.shapes import check_input, check_no_params, feature_width

glorot_normal = jax.nn.initializers.glorot_normal()
NpUnary = Callable[[np.ndarray], np.ndarray]


def elementwise(
    name: str,
    fn: Callable[[jax.Array], jax.Array],
    preferred_init: Initializer | None = None,
    *,
    np_fn: NpUnary | None = None,
    np_derivative: NpUnary | None = None,
    kink_distance: NpUnary | None = None,
    np_second_derivative: NpUnary | None = None,
) -> Layer:
    """A parameter-free layer applying ``fn`` to every entry of its input.

    Use it for a unit of your own:
    ``elementwise("Swish", lambda z: z * jax.nn.sigmoid(z), np_fn=..., np_derivative=...)``.

    Args:
      name: how errors and summaries name the unit.
      fn: the unit in ``jax.numpy``.
      preferred_init: the weight initializer the unit wants for the weights
        before it (its ``InitPolicy.prefers``, which ``serial`` reads).
      np_fn: the unit f in NumPy; given it and ``np_derivative``, the layer
        has a reference whose pullback is ``g -> ((), g * f'(z))``.
      np_derivative: the hand-derived derivative f' in NumPy.
      kink_distance: for a unit with kinks, the entrywise distance of z to
        the nearest kink (``np.abs`` for the rectifiers).
      np_second_derivative: f'' in NumPy (zero for a piecewise-linear
        unit); given it too, the reference has its R-operator, for
        ``reference_hvp`` and ``check_hvp``.
    """

    if not isinstance(name, str):
        raise ConfigError("elementwise", f"name must be a string, got {type(name).__name__}")
    functions = (("fn", fn), ("np_fn", np_fn), ("np_derivative", np_derivative))
    for argument, value in (*functions, ("np_second_derivative", np_second_derivative)):
        if (argument == "fn" or value is not None) and not callable(value):
            raise ConfigError(name, f"{argument} must be callable, got {type(value).__name__}")

    def init(key, input_shape):
        feature_width(name, input_shape)
        return tuple(input_shape), ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        return fn(check_input(name, x))

    reference = None
    if np_fn is not None and np_derivative is not None:
        reference = elementwise_reference(np_fn, np_derivative, kink_distance, np_second_derivative)
    policy = NO_INIT_POLICY if preferred_init is None else InitPolicy(prefers=preferred_init)
    return Layer(init, apply, name=name, reference=reference, init_policy=policy)


def elementwise_reference(
    np_fn: NpUnary,
    np_derivative: NpUnary,
    kink_distance: NpUnary | None = None,
    np_second_derivative: NpUnary | None = None,
) -> Reference:
    """h = f(z) entrywise; the pullback is dJ/dz = dJ/dh * f'(z) (Algorithm 6.4's g <- g * f'(a)).

    With f'' given, the R-pass too: R{h} = f'(z) R{z} and
    R{dJ/dz} = R{G} f'(z) + G f''(z) R{z} (module docstring).
    """

    def forward(params, z):
        return np_fn(z), lambda g: ((), g * np_derivative(z))

    def rop(params, z, v_params, r_z):
        slope = np_derivative(z)

        def pullback(g, r_g):
            return ((), g * slope), ((), r_g * slope + g * np_second_derivative(z) * r_z)

        return np_fn(z), slope * r_z, pullback

    kinks = None
    if kink_distance is not None:
        kinks = lambda params, z: float(np.min(kink_distance(z), initial=np.inf))  # noqa: E731
    return Reference(forward, kinks, None if np_second_derivative is None else rop)


def hard_tanh(z: jax.Array) -> jax.Array:
    """max(-1, min(1, z)) with derivative 0 at z = +-1 (see module docstring)."""
    return jnp.where(jnp.abs(z) < 1, z, jnp.sign(z))


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + e^-z), as e^z / (1 + e^z) for z < 0.

    Each branch exponentiates a non-positive number, so nothing overflows,
    and sigma keeps full relative precision far into the negative tail
    (sigma(-40) ~ 4e-18), where (1 + tanh(z / 2)) / 2 would round to 0.
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def np_softplus(z: np.ndarray) -> np.ndarray:
    """zeta(z) = log(1 + exp(z)) = logaddexp(0, z), without overflow."""
    return np.logaddexp(0.0, z)


def _sigmoid_slope(z: np.ndarray) -> np.ndarray:
    return np_sigmoid(z) * (1.0 - np_sigmoid(z))


def Sigmoid() -> Layer:
    """The logistic sigmoid unit."""
    return elementwise(
        "Sigmoid",
        jax.nn.sigmoid,
        glorot_normal,
        np_fn=np_sigmoid,
        np_derivative=_sigmoid_slope,
        np_second_derivative=lambda z: _sigmoid_slope(z) * (1.0 - 2.0 * np_sigmoid(z)),
    )


def Tanh() -> Layer:
    """The hyperbolic tangent unit."""
    return elementwise(
        "Tanh",
        jnp.tanh,
        glorot_normal,
        np_fn=np.tanh,
        np_derivative=lambda z: 1.0 - np.tanh(z) ** 2,
        np_second_derivative=lambda z: -2.0 * np.tanh(z) * (1.0 - np.tanh(z) ** 2),
    )


def Softplus() -> Layer:
    """The softplus unit, log(1 + exp(z)), computed without overflow."""
    return elementwise(
        "Softplus",
        jax.nn.softplus,
        np_fn=np_softplus,
        np_derivative=np_sigmoid,
        np_second_derivative=_sigmoid_slope,
    )


def HardTanh() -> Layer:
    """The hard tanh unit, max(-1, min(1, z)); derivative 0 at z = +-1."""
    return elementwise(
        "HardTanh",
        hard_tanh,
        glorot_normal,
        np_fn=lambda z: np.where(np.abs(z) < 1, z, np.sign(z)),
        np_derivative=lambda z: (np.abs(z) < 1).astype(z.dtype),
        kink_distance=lambda z: np.abs(np.abs(z) - 1.0),
        np_second_derivative=np.zeros_like,
    )


def Cos() -> Layer:
    """The cosine unit: ``serial(Dense(n), Cos())`` is the book's h = cos(Wx + b)."""
    return elementwise(
        "Cos",
        jnp.cos,
        np_fn=np.cos,
        np_derivative=lambda z: -np.sin(z),
        np_second_derivative=lambda z: -np.cos(z),
    )


def Identity() -> Layer:
    """The identity: returns its input unchanged."""
    return elementwise(
        "Identity",
        lambda z: z,
        np_fn=lambda z: z,
        np_derivative=np.ones_like,
        np_second_derivative=np.zeros_like,
    )


__all__ = [
    "Cos",
    "HardTanh",
    "Identity",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "elementwise",
    "elementwise_reference",
    "hard_tanh",
    "np_sigmoid",
    "np_softplus",
]
