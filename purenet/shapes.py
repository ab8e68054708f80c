"""Checks on constructor arguments, input shapes and inputs; NumPy float64 helpers; keys.

Every check here runs at trace time, on static shapes and dtypes, so a
checked ``apply`` costs nothing once it is jit-compiled.  Params are checked
through ``purenet.core.check_like``, the one tree check, against the layout
each layer's own ``init`` builds (``check_params_like_init``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import (
    ConfigError,
    InitFn,
    InputTypeError,
    Layer,
    Params,
    ParamsError,
    PurenetError,
    Shape,
    ShapeError,
    check_key,
    check_like,
    describe_tree,
)

# --------------------------------------------------------------------------
# Checks on constructor arguments, shapes and inputs
# --------------------------------------------------------------------------


def require_positive_int(layer: str, argument: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(layer, f"{argument} must be an integer >= 1, got {value!r}")
    return int(value)


def require_initializers(layer: str, **initializers: Any) -> None:
    """Each given initializer a callable ``(key, shape, dtype) -> array`` as in ``jax.nn.initializers``.

    ``None`` means "the layer's default" and passes.
    """
    for argument, value in initializers.items():
        if value is not None and not callable(value):
            raise ConfigError(
                layer,
                f"{argument} must be an initializer (key, shape, dtype) -> array such as "
                f"jax.nn.initializers.zeros, got {value!r} ({type(value).__name__})",
            )


def is_shape(shape: Any) -> bool:
    """Whether ``shape`` is one shape (a tuple of ints/None) rather than a tuple of shapes."""
    return isinstance(shape, (tuple, list)) and all(
        d is None or (isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))) for d in shape
    )


def normalize_shape(layer: str, shape: Any) -> Shape:
    """Check one input shape and write its unknown (batch) axes as -1.

    Axis sizes are integers >= 0 (never bools), or -1/None for an unknown
    axis; -5 is not a batch axis but a typo, and is refused.
    """
    if not is_shape(shape) or len(shape) == 0:
        raise ShapeError(layer, f"expected an input shape such as (-1, features) of integers, got {shape!r}")
    normalized = tuple(-1 if d is None else int(d) for d in shape)
    if any(d < -1 for d in normalized):
        raise ShapeError(
            layer,
            f"expected an input shape of axis sizes >= 0, or -1 (None) for an unknown batch axis, "
            f"got {tuple(shape)!r}",
        )
    return normalized


def feature_width(layer: str, shape: Any, min_rank: int = 1) -> int:
    """Check an input shape at init and return its last (feature) axis."""
    shape = normalize_shape(layer, shape)
    if len(shape) < min_rank:
        raise ShapeError(layer, f"expected an input of rank >= {min_rank}, got shape {shape}")
    if shape[-1] < 1:
        raise ShapeError(
            layer,
            f"the feature (last) axis of the input must be a known size >= 1, got shape {shape}",
        )
    return shape[-1]


def with_width(shape: Shape, width: int) -> Shape:
    """``shape`` with its last axis replaced by ``width``."""
    return (*tuple(shape[:-1]), width)


def check_input(layer: str, x: Any, min_rank: int = 1) -> jax.Array:
    """Return ``x`` as an array after checking it is floating point of rank >= ``min_rank``."""
    refused = InputTypeError(layer, f"expected a floating-point array input, got {describe_tree(x)}")
    if x is None or isinstance(x, (str, bytes, Mapping)):
        raise refused
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError):
        raise refused from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputTypeError(
            layer,
            f"expected a floating-point input, got dtype {x.dtype}; "
            "cast it first, e.g. x.astype(jnp.float32)",
        )
    if x.ndim < min_rank:
        raise ShapeError(layer, f"expected an input of rank >= {min_rank}, got shape {x.shape}")
    return x


def check_no_params(layer: str, params: Params) -> None:
    """A parameter-free layer's params must be empty (``()``)."""
    if jax.tree_util.tree_leaves(params):
        raise ParamsError(
            layer,
            f"this layer has no parameters and expects (), got {describe_tree(params)}",
        )


def check_params(layer: str, params: Params, expected: Mapping[str, tuple], width: int | None = None) -> None:
    """Check a leaf layer's dict of params against the shapes its input width implies.

    ``width``, the input's feature width, is quoted in the message when given,
    since a wrong input and wrong params look alike from inside a layer.
    """
    template = {key: jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for key, shape in expected.items()}
    context = "" if width is None else f" for an input of width {width}"
    check_like(params, template, layer=layer, context=context)


@functools.lru_cache(maxsize=4096)
def _init_params_template(init: InitFn, width: int) -> Params:
    """The params ``init`` builds for inputs of feature width ``width``, as shapes and dtypes only."""
    return jax.eval_shape(lambda key: init(key, (-1, width))[1], jax.random.PRNGKey(0))


def check_params_like_init(layer: str, init: InitFn, params: Params, x: jax.Array) -> None:
    """Check a leaf layer's params against what its own ``init`` builds for ``x``'s feature width.

    The layout is stated once, in ``init``; ``apply`` derives it with
    ``jax.eval_shape`` (cached per width, so it costs one trace per layer and
    width) instead of restating it by hand.
    """
    width = x.shape[-1]
    template = _init_params_template(init, width)
    check_like(params, template, layer=layer, context=f" for an input of width {width}")


def check_sequence_params(layer: str, params: Params, count: int) -> tuple:
    """A combinator's params must be a tuple (or list) with one entry per child."""
    if not isinstance(params, (tuple, list)) or len(params) != count:
        raise ParamsError(
            layer,
            f"expected a tuple of {count} entries (one per child layer), got {describe_tree(params)}",
        )
    return tuple(params)


# --------------------------------------------------------------------------
# NumPy float64, for the reference
# --------------------------------------------------------------------------


def as_float64(tree: Any) -> Any:
    """A copy of a pytree with every floating leaf as a NumPy float64 array (integers kept)."""

    def convert(leaf):
        array = np.asarray(leaf)
        # jnp.issubdtype also knows bfloat16, which NumPy's does not count as floating.
        return array.astype(np.float64) if jnp.issubdtype(array.dtype, jnp.floating) else array

    return jax.tree_util.tree_map(convert, tree)


def sum_to_shape(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over its leading (batch) axes down to ``shape``: the gradient of a broadcast."""
    g = np.asarray(g)
    return g.reshape(-1, *shape).sum(axis=0) if shape else np.asarray(g.sum())


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def split_key(key: jax.Array | None, count: int, owner: str = "apply") -> list[jax.Array | None]:
    """Split an optional PRNG key into ``count`` keys (``None`` stays ``None``); refuse a malformed one."""
    if key is None:
        return [None] * count
    return list(jax.random.split(check_key(owner, key), count))


# --------------------------------------------------------------------------
# The contract between a child's init and its apply
# --------------------------------------------------------------------------


def _shape_of(x: Any) -> Any:
    """An input's shape, or a tuple of shapes for a tuple of inputs (after fan_out)."""
    if isinstance(x, (tuple, list)):
        return tuple(_shape_of(part) for part in x)
    return tuple(np.shape(x))


@functools.lru_cache(maxsize=4096)
def _promised_shape(init: InitFn, input_shape: Any) -> Any:
    """The output shape ``init`` promises for ``input_shape`` (shapes only: ``jax.eval_shape``)."""
    promised = []
    jax.eval_shape(lambda key: promised.append(init(key, input_shape)[0]), jax.random.PRNGKey(0))
    return promised[0]


def _fits(promised: Any, got: Any) -> bool:
    if is_shape(promised) and is_shape(got):
        return len(promised) == len(got) and all(p in (-1, None) or p == g for p, g in zip(promised, got))
    if isinstance(promised, (tuple, list)) and isinstance(got, tuple) and len(promised) == len(got):
        return all(_fits(p, g) for p, g in zip(promised, got))
    return False


def check_promised_shape(layer: Layer, x: Any, y: Any) -> None:
    """Refuse an ``apply`` whose output shape is not the one its ``init`` promised for ``x``.

    Checked at trace time (shapes only, cached per input shape), so a user's
    unit that changes its width fails here, naming itself, instead of
    surfacing as a wrong shape or as the next layer's params error.
    """
    input_shape = _shape_of(x)
    try:
        promised = _promised_shape(layer.init, input_shape)
    except PurenetError:  # an init that cannot state it for this input: nothing promised to hold it to
        return
    got = _shape_of(y)
    if not _fits(promised, got):
        raise ShapeError(
            layer.name,
            f"apply returned shape {got} for an input of shape {input_shape}, but init promised {promised}; "
            "a Layer's apply must return the shape its init states",
        )
