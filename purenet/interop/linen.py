"""``LinenModel``: a purenet model as a Flax linen module, its params one entry of the params collection."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from purenet.core import ConfigError, Layer
from purenet.interop.base import initial_params

PARAMS_NAME = "purenet"  # variables["params"][PARAMS_NAME] is purenet's params tree


class LinenModel(nn.Module):
    """A purenet ``Layer`` inside Flax linen: ``init`` builds, ``apply`` runs ``layer.apply``.

    ``variables = module.init(rng, x)`` holds purenet's params tree, in its
    documented layout, at ``variables["params"]["purenet"]``;
    ``LinenModel.variables(params)`` wraps params built elsewhere.
    ``train=True`` without a ``key`` draws one from the ``"dropout"`` rng
    stream (``module.apply(variables, x, train=True, rngs={"dropout": k})``),
    as ``nn.Dropout`` does.

    Attributes:
      model: the purenet network.
      input_shape: its input shape, batch axis ``-1``.
    """

    model: Layer
    input_shape: tuple

    @nn.compact
    def __call__(self, x: Any, *, key: Any = None, train: bool = False) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)`` with the module's params."""
        params = self.param(PARAMS_NAME, self._init)
        if train is True and key is None:
            key = self.make_rng("dropout")
        return self.model.apply(params, x, key=key, train=train)

    def _init(self, rng: jax.Array) -> Any:
        if self.input_shape is None:
            raise ConfigError("LinenModel", "input_shape is needed to init the model's params")
        return initial_params("LinenModel", self.model, self.input_shape, None, rng)

    @staticmethod
    def variables(params: Any) -> dict:
        """Linen variables holding params built by purenet (``model.init``, ``pn.fit``)."""
        return {"params": {PARAMS_NAME: params}}
