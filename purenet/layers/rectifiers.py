"""The rectifier family (the book's section 6.3.1), all from one function

    g(z, alpha) = max(0, z) + alpha * min(0, z)

    ReLU       alpha = 0            (Jarrett et al. 2009; Glorot et al. 2011)
    AbsRect    alpha = -1           g(z) = |z|
    LeakyReLU  alpha fixed, 0.01    (Maas et al. 2013)
    PReLU      alpha learned        (He et al. 2015), initialized to 0.25

PReLU's parameter layout (public and stable): ``{"alpha": (features,)}``, one
slope per feature, or ``{"alpha": ()}`` when one slope is shared.

Convention at the kink: at z = 0 exactly, the derivative with respect to z
is alpha, the slope of the z <= 0 side (so ReLU'(0) = 0, |z|'(0) = -1,
LeakyReLU'(0) = 0.01), and the derivative with respect to alpha is
min(0, z) = 0.  ``apply`` writes g as ``where(z > 0, z, alpha * z)`` so that
JAX's derivative follows this convention exactly; ``jnp.maximum`` would split
ties and give 1/2 at z = 0.

Hand-derived backward, with G = dJ/dh and the convention above:

    dJ/dz     = G * ([z > 0] + alpha [z <= 0])
    dJ/dalpha = sum over the batch (and, if shared, the features) of G * z [z <= 0]

Hand-derived R-operator (Pearlmutter 1994).  g is piecewise linear in z, so
g_zz = 0 on both sides of the kink (the first order's sides kept); the only
curvature is PReLU's cross term g_{z alpha} = [z <= 0] between its input and
its slope.  With R{z} the input's direction and v_alpha the slope's:

    R{h}         = R{z} ([z > 0] + alpha [z <= 0]) + v_alpha z [z <= 0]
    R{dJ/dz}     = R{G} ([z > 0] + alpha [z <= 0]) + G v_alpha [z <= 0]
    R{dJ/dalpha} = sum of (R{G} z + G R{z}) [z <= 0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError, Initializer, InitPolicy, Layer, Reference
from purenet.layers.activations import elementwise
from purenet.shapes import (
    check_input,
    check_params_like_init,
    feature_width,
    require_initializers,
    sum_to_shape,
)
from purenet.validate import require_number

he_normal = jax.nn.initializers.he_normal()


def rectify(z: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """g(z, alpha) = max(0, z) + alpha min(0, z), with g'(0) = alpha (see module docstring)."""
    return jnp.where(z > 0, z, alpha * z)


def np_rectify(z: np.ndarray, alpha) -> np.ndarray:
    """g(z, alpha) in NumPy."""
    return np.where(z > 0, z, alpha * z)


def np_rectify_slope(z: np.ndarray, alpha) -> np.ndarray:
    """dg/dz = 1 for z > 0, alpha for z <= 0 (the convention at the kink)."""
    return np.where(z > 0, 1.0, alpha)


def _fixed_slope(name: str, alpha: float) -> Layer:
    return elementwise(
        name,
        lambda z: rectify(z, alpha),
        he_normal,
        np_fn=lambda z: np_rectify(z, alpha),
        np_derivative=lambda z: np_rectify_slope(z, alpha),
        kink_distance=np.abs,
        np_second_derivative=np.zeros_like,  # piecewise linear: g'' = 0 on both sides
    )


def ReLU() -> Layer:
    """The rectified linear unit, g(z) = max(0, z); g'(0) = 0."""
    return _fixed_slope("ReLU", 0.0)


def AbsRect() -> Layer:
    """Absolute value rectification, g(z) = |z| (Jarrett et al. 2009); g'(0) = -1."""
    return _fixed_slope("AbsRect", -1.0)


def LeakyReLU(alpha: float = 0.01) -> Layer:
    """The leaky ReLU, g(z) = max(0, z) + alpha min(0, z) with alpha fixed; g'(0) = alpha."""
    return _fixed_slope(f"LeakyReLU({alpha})", require_number(f"LeakyReLU({alpha!r})", "alpha", alpha))


def PReLU(
    shared: bool = False,
    alpha_init: Initializer = jax.nn.initializers.constant(0.25),
) -> Layer:
    """The parametric ReLU: alpha is learned (He et al. 2015), one per feature or shared.

    Args:
      shared: one slope for all features (params ``{"alpha": ()}``) instead
        of one per feature (``{"alpha": (features,)}``).
      alpha_init: initializer of the slopes; 0.25 as in He et al. 2015.

    Returns:
      A Layer computing max(0, z) + alpha min(0, z) over the last axis.
    """
    name = "PReLU(shared)" if shared else "PReLU"
    if not isinstance(shared, bool):
        raise ConfigError("PReLU", f"shared must be True or False, got {shared!r}")
    require_initializers(name, alpha_init=alpha_init)

    def alpha_shape(width):
        return () if shared else (width,)

    def init(key, input_shape):
        width = feature_width(name, input_shape)
        return tuple(input_shape), {"alpha": alpha_init(key, alpha_shape(width))}

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        check_params_like_init(name, init, params, x)
        return rectify(x, params["alpha"])

    return Layer(init, apply, name=name, reference=PRELU_REFERENCE, init_policy=InitPolicy(prefers=he_normal))


def prelu_forward(params, z: np.ndarray):
    """g(z, alpha); pullback: dJ/dz = G g'(z), dJ/dalpha sums G min(0, z) down to alpha's shape."""
    alpha = params["alpha"]

    def pullback(g):
        g_alpha = sum_to_shape(g * np.where(z > 0, 0.0, z), np.shape(alpha))
        return {"alpha": g_alpha}, g * np_rectify_slope(z, alpha)

    return np_rectify(z, alpha), pullback


def prelu_rop(params, z: np.ndarray, v, r_z: np.ndarray):
    """R{h} and the R-pullback, whose curvature is the cross term between z and alpha (module docstring)."""
    alpha, v_alpha = params["alpha"], v["alpha"]
    slope, negative = np_rectify_slope(z, alpha), z <= 0

    def pullback(g, r_g):
        grads = ({"alpha": sum_to_shape(g * np.where(negative, z, 0.0), np.shape(alpha))}, g * slope)
        r_g_alpha = sum_to_shape(np.where(negative, r_g * z + g * r_z, 0.0), np.shape(alpha))
        return grads, ({"alpha": r_g_alpha}, r_g * slope + np.where(negative, g * v_alpha, 0.0))

    return np_rectify(z, alpha), r_z * slope + np.where(negative, v_alpha * z, 0.0), pullback


PRELU_REFERENCE = Reference(
    prelu_forward, kinks=lambda params, z: float(np.min(np.abs(z), initial=np.inf)), rop=prelu_rop
)


__all__ = ["AbsRect", "LeakyReLU", "PReLU", "ReLU", "np_rectify", "np_rectify_slope", "rectify"]
