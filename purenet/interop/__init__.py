"""A purenet model inside Flax NNX, Flax linen or Equinox code (``pip install "purenet[interop]"``).

Each adapter holds a purenet ``Layer`` and its params the way the host
library holds a module's weights, and calls ``layer.apply`` unchanged, so
the numbers are purenet's and the host's optimizers, transformations and
checkpointing apply:

================  =============================================  ==========================================
adapter           params live in                                 train with
================  =============================================  ==========================================
``NNXModel``      one ``nnx.Param`` per leaf                     ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
``LinenModel``    ``variables["params"]["purenet"]``             optax on ``variables["params"]``
``EquinoxModel``  the module's ``params`` field (arrays)         ``eqx.filter_jit``/``eqx.filter_grad``
================  =============================================  ==========================================

The adapters are imported on first use, so a user with only Equinox
installed can use ``EquinoxModel``; a missing library raises
``MissingExtraError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from purenet.interop.base import MissingExtraError

_ADAPTERS = {
    "NNXModel": ("purenet.interop.nnx", "flax"),
    "LinenModel": ("purenet.interop.linen", "flax"),
    "EquinoxModel": ("purenet.interop.equinox", "equinox"),
}

# What `from purenet.interop import *` takes: the adapters whose host library is installed.
_INSTALLED = sorted(name for name, (_, library) in _ADAPTERS.items() if importlib.util.find_spec(library))
__all__ = ["MissingExtraError", *_INSTALLED]


def __getattr__(name: str) -> Any:
    """Import an adapter's module when the adapter is first asked for (PEP 562)."""
    if name not in _ADAPTERS:
        raise AttributeError(f"module 'purenet.interop' has no attribute {name!r}")
    module, library = _ADAPTERS[name]
    if importlib.util.find_spec(library) is None:
        raise MissingExtraError(
            f"purenet.interop.{name}",
            f"needs {library}, which is not installed: pip install 'purenet[interop]'",
        )
    return getattr(importlib.import_module(module), name)
