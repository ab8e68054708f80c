"""``LinenModel``: a purenet model as a Flax linen module, its params one entry of the params collection."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from purenet.core import Layer, check_like
from purenet.interop.base import (
    apply_with_key_hint,
    as_shape,
    call_mode,
    initial_params,
    may_train,
    params_template,
    shape_of,
    training,
)

OWNER = "LinenModel"
PARAMS_NAME = "purenet"  # variables["params"][PARAMS_NAME] is purenet's params tree


class LinenModel(nn.Module):
    """A purenet ``Layer`` inside Flax linen: ``init`` builds, ``apply`` runs ``layer.apply``.

    ``variables = module.init(rng, x)`` holds purenet's params tree, in its
    documented layout, at ``variables["params"]["purenet"]``;
    ``module.wrap(params)`` wraps params built elsewhere.  Every call checks
    the params against what ``init`` builds for the input (naming the first
    wrong leaf) before Flax's own shape check.  The mode is the call's
    ``train=``, else ``not deterministic`` if that attribute is set, else
    evaluation; in training mode without a ``key`` the dropout key comes from
    the ``"dropout"`` rng stream
    (``module.apply(variables, x, train=True, rngs={"dropout": k})``), as
    ``nn.Dropout``'s does, when the call has one.

    Attributes:
      model: the purenet network.
      input_shape: its input shape, batch axis ``-1``; None: read off each input, its first axis the
        batch (as ``nn.Dense`` reads its input; under ``jax.vmap`` give it).
      deterministic: the module's mode when a call gives no ``train`` (None: evaluation).
    """

    model: Layer
    input_shape: Any = None
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: Any, *, key: Any = None, train: Any = None) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)`` with the module's params."""
        input_shape = as_shape(self.input_shape) if self.input_shape is not None else shape_of(x)
        if self.has_variable("params", PARAMS_NAME):  # refused by name before Flax's unnamed shape check
            owner = f"{OWNER} (for inputs of shape {input_shape})"  # the input may be what is wrong
            template = params_template(self.model, input_shape)
            check_like(self.get_variable("params", PARAMS_NAME), template, layer=owner)
        params = self.param(PARAMS_NAME, self._init, input_shape)
        train = call_mode(train, training(OWNER, "deterministic", self.deterministic))
        if key is None and may_train(train) and self.has_rng("dropout"):
            key = self.make_rng("dropout")
        hint = 'give key=..., or rngs={"dropout": key} to the apply'
        return apply_with_key_hint(OWNER, hint, lambda: self.model.apply(params, x, key=key, train=train))

    def _init(self, rng: jax.Array, input_shape: Any) -> Any:
        return initial_params(OWNER, self.model, input_shape, None, rng)

    def wrap(self, params: Any) -> dict:
        """Linen variables holding params built by purenet (``model.init``, ``pn.fit``), checked if it can.

        With ``input_shape`` set, ``params`` are checked against what
        ``init`` builds now, naming the first wrong leaf; without it, at the
        first call.
        """
        if self.input_shape is not None:
            params = initial_params(OWNER, self.model, self.input_shape, params, None)
        return {"params": {PARAMS_NAME: params}}
