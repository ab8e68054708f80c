"""``NNXModel``: a purenet model as a Flax NNX module, one ``nnx.Param`` per params leaf.

``nnx.Optimizer(module, tx, wrt=nnx.Param)`` and ``nnx.jit``/``nnx.grad``
see each leaf as a parameter of its own (one ``nnx.Param`` holding a whole
tree would be a single leaf to optax, whose states then fail to line up).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from purenet.core import InputTypeError, Layer
from purenet.interop.base import apply_with_key_hint, call_mode, initial_params, may_train, training

OWNER = "NNXModel"


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def _values(tree: Any) -> Any:
    """``tree`` with every ``nnx.Variable`` replaced by its value (an array, or a shape under eval_shape)."""
    return jax.tree_util.tree_map(lambda v: v.get_value() if _is_variable(v) else v, tree,
                                  is_leaf=_is_variable)


def _stream(rngs: Any, name: str) -> Any:
    """``rngs``'s stream ``name``, or its default stream, or None if it has neither."""
    if rngs is None:
        return None
    for stream in (name, "default"):
        if stream in rngs:
            return getattr(rngs, stream)
    return None


class NNXModel(nnx.Module):
    """A purenet ``Layer`` and its params inside Flax NNX.

    The mode follows NNX: ``module.train()`` and ``module.eval()`` (or a
    parent's) set ``deterministic`` as they do for ``nnx.Dropout``; a call's
    ``train=`` overrides it; with neither, a call evaluates, as
    ``model.apply`` does.  In training mode the dropout key is ``key=``, or
    drawn from ``rngs``' ``dropout`` stream (or its default stream).  Under
    a transformation use ``nnx.jit``/``nnx.grad``, which carry ``rngs``'
    state; ``jax.jit`` cannot update it.

    Args:
      model: the purenet network.
      input_shape: its input shape (batch axis ``-1``) to initialize it with ``rngs``' params stream.
      params: or params already built (e.g. by ``model.init``, ``pn.fit`` or another NNXModel's
        ``to_params()``); with ``input_shape`` too, they are checked against what ``init`` builds.
      rngs: ``nnx.Rngs``: its ``params`` (or default) stream initializes, its ``dropout``
        (or default) stream feeds training-mode calls given no ``key``.

    Example: ``NNXModel(pn.serial(pn.Dense(64), pn.ReLU(), pn.Dense(10)), (-1, 784), rngs=nnx.Rngs(0))``.
    """

    def __init__(self, model: Layer, input_shape: Any = None, *, params: Any = None, rngs: Any = None):
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            got = type(rngs).__name__
            raise InputTypeError(OWNER, f"rngs must be an nnx.Rngs such as nnx.Rngs(0), got {got}")
        key = None
        if params is None and input_shape is not None and rngs is not None:
            stream = _stream(rngs, "params")
            if stream is None:
                raise InputTypeError(OWNER, "rngs has neither a 'params' nor a default stream to init from")
            key = stream()
        tree = initial_params(OWNER, model, input_shape, _values(params), key, "rngs (an nnx.Rngs)")
        self.model = model
        self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, tree))
        self.rngs = rngs
        self.deterministic: bool | None = None  # set by .train() / .eval(), as on nnx.Dropout

    def __call__(self, x: Any, *, key: Any = None, train: Any = None) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)``, the mode and key as the class docstring says."""
        train = call_mode(train, training(OWNER, "deterministic", self.deterministic))
        dropout = _stream(self.rngs, "dropout")
        if key is None and dropout is not None and may_train(train):
            key = dropout()
        hint = "give key=..., or rngs=nnx.Rngs(dropout=...) to the NNXModel"
        params = self.to_params()
        return apply_with_key_hint(OWNER, hint, lambda: self.model.apply(params, x, key=key, train=train))

    def to_params(self) -> Any:
        """The params as purenet's plain tree (its layout, arrays as leaves)."""
        return _values(self.params)
