"""Mixed precision: parameters kept in float32, the network computed in bfloat16 or float16.

A ``Policy`` names three dtypes (Micikevicius et al. 2018, "Mixed precision
training"):

    param_dtype    the master copy of the params and the optimizer's state (float32)
    compute_dtype  what every layer multiplies and adds in (bfloat16 or float16)
    output_dtype   what the network hands the loss (float32), so that the
                   log-sum-exp of a softmax and the mean over a batch are summed
                   at full precision

``mixed_precision(model, policy)`` is a combinator: its ``apply`` casts the
params and a floating input to the compute dtype, runs the model, and casts
the output to the output dtype.  Because the casts sit inside ``apply``,
``jax.grad`` carries the gradient back through them and returns it in the
params' float32: the optimizer never sees a bfloat16 number.  Every purenet
layer computes in the dtype of its input and params (tests/test_precision.py
checks each one's jaxpr for a silent float32 op).

float16 has 5 exponent bits: small gradients underflow to zero.  A policy's
``loss_scale`` multiplies the loss before differentiation and divides the
gradients after it (a static loss scale); with ``fit(..., on_nonfinite="skip")``
an overflowing step is skipped rather than applied.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import NO_INIT_POLICY, ConfigError, Layer

FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


class Policy(NamedTuple):
    """The dtypes of mixed-precision training (see the module docstring)."""

    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    output_dtype: str = "float32"
    loss_scale: float = 1.0


def policy(compute_dtype: str = "bfloat16", *, loss_scale: float | None = None) -> Policy:
    """The usual policy: float32 params and loss, ``compute_dtype`` inside the network.

    ``loss_scale`` defaults to 1 for bfloat16 (float32's exponent range) and
    to 2**12 for float16.
    """
    if loss_scale is None:
        loss_scale = 2.0**12 if compute_dtype == "float16" else 1.0
    return check_policy(Policy(compute_dtype=compute_dtype, loss_scale=loss_scale))


def check_policy(p: Any) -> Policy:
    """Return ``p`` if it is a valid ``Policy``; raise naming the field otherwise."""
    if not isinstance(p, Policy):
        raise ConfigError("policy", f"expected a purenet.Policy, got {type(p).__name__}")
    for field in ("param_dtype", "compute_dtype", "output_dtype"):
        value = getattr(p, field)
        if _dtype_name(value) not in FLOAT_DTYPES:
            raise ConfigError("policy", f"{field} must be one of {FLOAT_DTYPES}, got {value!r}")
    if not (np.isfinite(p.loss_scale) and p.loss_scale > 0):
        raise ConfigError("policy", f"loss_scale must be a positive finite number, got {p.loss_scale!r}")
    return p


def _dtype_name(value: Any) -> str | None:
    """The canonical name of a dtype given as a string or type, or ``None`` for something that is not one."""
    if value is None:  # jnp.dtype(None) is the default float: not a choice the user made
        return None
    try:
        return str(np.dtype(jnp.dtype(value)))
    except (TypeError, ValueError):
        return None


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Cast every floating leaf of ``tree`` to ``dtype``; integer leaves (labels, keys) pass through."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree_util.tree_map(cast, tree)


def mixed_precision(model: Layer, p: Policy | None = None) -> Layer:
    """``model`` computed under policy ``p`` (default ``policy("bfloat16")``).

    ``init`` returns params in ``p.param_dtype``; ``apply`` computes in
    ``p.compute_dtype`` and returns ``p.output_dtype``.  The reference
    (``model.reference``) is the model's own: it runs in float64 whatever
    the policy.  The wrapped model has no init policy of its own: the
    initializers were settled when ``model`` was built.
    """
    if not isinstance(model, Layer):
        raise ConfigError("mixed_precision", f"expected a purenet Layer, got {type(model).__name__}")
    p = check_policy(policy() if p is None else p)

    def init(key, input_shape):
        out_shape, params = model.init(key, input_shape)
        return out_shape, cast_floating(params, p.param_dtype)

    def apply(params, x, *, key=None, train=False):
        outputs = model.apply(
            cast_floating(params, p.compute_dtype), cast_floating(x, p.compute_dtype), key=key, train=train
        )
        return cast_floating(outputs, p.output_dtype)

    return model.replace(
        init=init,
        apply=apply,
        name=f"mixed_precision({model.name}, {p.compute_dtype})",
        children=model.children,  # the params tree is the model's own: transparent to the reference
        init_policy=NO_INIT_POLICY,
    )


__all__ = ["Policy", "cast_floating", "check_policy", "mixed_precision", "policy"]
