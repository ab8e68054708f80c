"""What the adapters share: the missing-extra error and building or checking a model's params."""

from __future__ import annotations

from typing import Any

import jax

from purenet.core import ConfigError, Layer, PurenetError, check_key, check_like


class MissingExtraError(PurenetError, ImportError):
    """An adapter asked for whose host library (flax, equinox) is not installed."""


def initial_params(owner: str, model: Any, input_shape: Any, params: Any, key: Any) -> Any:
    """The params an adapter starts from: ``params`` as given, or ``model.init(key, input_shape)``'s.

    Given both ``input_shape`` and ``params``, the params are checked against
    what ``init`` would build (``check_like``), naming the first wrong leaf.
    """
    if not isinstance(model, Layer):
        raise ConfigError(owner, f"model must be a purenet Layer, got {type(model).__name__}")
    if input_shape is None:
        if params is None:
            raise ConfigError(owner, "give input_shape (to init the model) or params (to wrap), got neither")
        return params
    if params is None:
        return model.init(check_key(owner, key, "key (or rngs)"), input_shape)[1]
    template = jax.eval_shape(lambda key: model.init(key, input_shape), jax.random.PRNGKey(0))[1]
    check_like(params, template, layer=owner)
    return params
