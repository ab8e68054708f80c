"""``NNXModel``: a purenet model as a Flax NNX module, one ``nnx.Param`` per params leaf.

``nnx.Optimizer(module, tx, wrt=nnx.Param)`` and ``nnx.jit``/``nnx.grad``
see each leaf as a parameter of its own (one ``nnx.Param`` holding a whole
tree would be a single leaf to optax, whose states then fail to line up).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from purenet.core import Layer
from purenet.interop.base import initial_params


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


class NNXModel(nnx.Module):
    """A purenet ``Layer`` and its params inside Flax NNX.

    Args:
      model: the purenet network.
      input_shape: its input shape (batch axis ``-1``) to initialize it with ``rngs.params()``.
      params: or params already built (e.g. by ``model.init`` or ``pn.fit``); with
        ``input_shape`` too, they are checked against what ``init`` builds.
      rngs: ``nnx.Rngs``: its ``params`` stream initializes, its ``dropout`` stream
        (or default) feeds ``train=True`` calls given no ``key``.

    Example: ``NNXModel(pn.serial(pn.Dense(64), pn.ReLU(), pn.Dense(10)), (-1, 784), rngs=nnx.Rngs(0))``.
    """

    def __init__(self, model: Layer, input_shape: Any = None, *, params: Any = None, rngs: Any = None):
        key = rngs.params() if rngs is not None and params is None else None
        tree = initial_params("NNXModel", model, input_shape, params, key)
        self.model = model
        self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, tree))
        self.rngs = rngs

    def __call__(self, x: Any, *, key: Any = None, train: bool = False) -> jax.Array:
        """``model.apply(params, x, key=key, train=train)``, the key drawn from ``rngs`` if not given."""
        if train is True and key is None and self.rngs is not None:
            key = self.rngs.dropout()
        return self.model.apply(self.to_params(), x, key=key, train=train)

    def to_params(self) -> Any:
        """The params as purenet's plain tree (its layout, arrays as leaves)."""
        return jax.tree_util.tree_map(lambda v: v[...], self.params, is_leaf=_is_variable)
