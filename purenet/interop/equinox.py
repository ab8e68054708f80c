"""``EquinoxModel``: a purenet model as an Equinox module, its params the module's arrays.

The ``Layer`` is a static field (hashable by identity) and the params tree a
field of arrays, so ``eqx.filter_jit``, ``eqx.filter_grad`` and
``eqx.filter_vmap`` treat the params as the module's trainable leaves.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from purenet.core import Layer
from purenet.interop.base import initial_params


class EquinoxModel(eqx.Module):
    """A purenet ``Layer`` and its params as an Equinox module.

    Args:
      model: the purenet network.
      input_shape: its input shape (batch axis ``-1``) to initialize it with ``key``.
      key: the PRNG key for that init.
      params: or params already built; with ``input_shape`` too, checked against ``init``'s.
    """

    params: Any
    model: Layer = eqx.field(static=True)

    def __init__(self, model: Layer, input_shape: Any = None, *, key: Any = None, params: Any = None):
        self.params = initial_params("EquinoxModel", model, input_shape, params, key)
        self.model = model

    def __call__(self, x: Any, *, key: Any = None, train: bool = False) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)``."""
        return self.model.apply(self.params, x, key=key, train=train)
