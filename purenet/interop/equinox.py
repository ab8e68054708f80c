"""``EquinoxModel``: a purenet model as an Equinox module, its params the module's arrays.

The ``Layer`` is a static field (hashable by identity) and the params tree a
field of arrays, so ``eqx.filter_jit``, ``eqx.filter_grad`` and
``eqx.filter_vmap`` treat the params as the module's trainable leaves.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from purenet.core import ConfigError, Layer
from purenet.interop.base import apply_with_key_hint, call_mode, initial_params, training

OWNER = "EquinoxModel"


class EquinoxModel(eqx.Module):
    """A purenet ``Layer`` and its params as an Equinox module.

    The mode follows Equinox: ``eqx.nn.inference_mode(module, value)`` sets
    ``inference`` as it does for ``eqx.nn.Dropout``; a call's ``train=``
    overrides it.  With neither set, a call without a key evaluates, as
    ``model.apply`` does, and a call with a key is refused: in Equinox a key
    usually means training, in purenet it does not, so the module does not
    guess.

    Args:
      model: the purenet network.
      input_shape: its input shape (batch axis ``-1``) to initialize it with ``key``.
      key: the PRNG key for that init.
      params: or params already built; with ``input_shape`` too, checked against ``init``'s.
      inference: the mode when a call gives no ``train`` (None: unset, as above).
    """

    params: Any
    model: Layer = eqx.field(static=True)
    inference: bool | None = None

    def __init__(self, model: Layer, input_shape: Any = None, *, key: Any = None, params: Any = None,
                 inference: bool | None = None):  # fmt: skip
        self.params = initial_params(OWNER, model, input_shape, params, key)
        self.model = model
        self.inference = inference

    def __call__(self, x: Any, *, key: Any = None, train: Any = None) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)``, the mode as the class docstring says."""
        if train is None and self.inference is None and key is not None:
            raise ConfigError(
                OWNER,
                "a key came with no mode: pass train=True (dropout draws from the key) or train=False, "
                "or set the mode with eqx.nn.inference_mode(module, value)",
            )
        train = call_mode(train, training(OWNER, "inference", self.inference))
        # Under plain jax.jit the inference flag is traced, so both modes compile and training needs a key.
        hint = "give key=..., or under a transformation use eqx.filter_jit, which keeps the flag static"
        params = self.params
        return apply_with_key_hint(OWNER, hint, lambda: self.model.apply(params, x, key=key, train=train))
