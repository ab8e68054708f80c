"""What the adapters share: the missing-extra error, their params, and the mode and key of a call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError, Layer, MissingKeyError, PurenetError, check_key, check_like


class MissingExtraError(PurenetError, ImportError):
    """An adapter asked for whose host library (flax, equinox) is not installed."""


def initial_params(owner: str, model: Any, input_shape: Any, params: Any, key: Any, key_name: str = "key",
                   ) -> Any:  # fmt: skip
    """The params an adapter starts from: ``params`` as given, or ``model.init(key, input_shape)``'s.

    Given both ``input_shape`` and ``params``, the params are checked against
    what ``init`` would build (``check_like``), naming the first wrong leaf.
    Leaves become JAX arrays: a Python float would be a static field to
    Equinox (never trained) and no array at all to ``nnx.Param``.
    """
    if not isinstance(model, Layer):
        raise ConfigError(owner, f"model must be a purenet Layer, got {type(model).__name__}")
    if input_shape is None:
        if params is None:
            raise ConfigError(owner, "give input_shape (to init the model) or params (to wrap), got neither")
    elif params is None:
        params = model.init(check_key(owner, key, key_name), input_shape)[1]
    else:
        check_like(params, params_template(model, as_shape(input_shape)), layer=owner)
    return jax.tree_util.tree_map(jnp.asarray, params)


@functools.lru_cache(maxsize=64)
def params_template(model: Layer, input_shape: tuple) -> Any:
    """The shapes and dtypes ``model.init`` builds for ``input_shape`` (traced, not run; cached)."""
    return jax.eval_shape(lambda key: model.init(key, input_shape), jax.random.PRNGKey(0))[1]


def as_shape(shape: Any) -> Any:
    """A shape (or nested shapes, for several inputs) as hashable tuples."""
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return tuple(as_shape(part) for part in shape)
    return tuple(shape) if isinstance(shape, (list, tuple)) else shape


def shape_of(x: Any) -> Any:
    """The input shape ``init`` takes for the input ``x``: its batch axis ``-1`` (a tuple of inputs: each).

    The first axis is read as the batch, as purenet reads it (a 1-d ``x`` is
    a batch of scalars): under ``jax.vmap``, where each call sees one
    example, give the module its ``input_shape``.
    """
    if isinstance(x, (list, tuple)):
        return tuple(shape_of(part) for part in x)
    return (-1, *np.shape(x)[1:])


def call_mode(train: Any, switch: bool | None) -> Any:
    """The mode of a call: ``train`` if given, else what the host's switch says, else evaluation.

    ``switch`` is the host's own train/eval state, already read as "training"
    (``not deterministic`` for Flax, ``not inference`` for Equinox), or
    None where the user never set it.
    """
    if train is not None:
        return train
    return False if switch is None else switch


def training(owner: str, name: str, flag: Any) -> Any:
    """The host's switch read as "training": ``not flag`` (``deterministic``, ``inference``), None if unset.

    A flag that ``jax.jit`` traced (Equinox's ``inference`` is a leaf of the
    module) stays a traced boolean, which the Layer contract resolves.
    Anything but None, a bool or a boolean scalar is refused naming the
    attribute: ``0`` or ``"no"`` would otherwise be read by truthiness.
    """
    if flag is None:
        return None
    if isinstance(flag, (bool, np.bool_)):
        return not flag
    if np.shape(flag) == () and getattr(flag, "dtype", None) == np.bool_:
        return jnp.logical_not(flag)
    raise ConfigError(owner, f"{name} must be True, False or None (unset), got {flag!r}")


def may_train(train: Any) -> bool:
    """Whether a call may run in training mode: anything but a concrete False (a traced flag may)."""
    if isinstance(train, (bool, np.bool_)):
        return bool(train)
    return not (isinstance(train, (np.ndarray, jax.Array)) and not isinstance(train, jax.core.Tracer)
                and np.shape(train) == () and not bool(train))


def apply_with_key_hint(owner: str, hint: str, run: Callable[[], Any]) -> Any:
    """``run()``, a missing dropout key refused naming the adapter and where its key comes from."""
    try:
        return run()
    except MissingKeyError as error:
        raise MissingKeyError(owner, f"{error}; {hint}") from error
