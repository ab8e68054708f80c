"""One bounded cache of compiled functions, shared by fit, evaluate, the checks and curvature.

``jax.jit`` caches compiled code per function object, so a second call
compiles nothing only if it reaches the *same* function object.  Every
builder of a jit-compiled function in purenet (the training loop, the
evaluator, the checks' JAX side, the curvature products of a model) is
wrapped in ``cached``: called again with the same (hashable) arguments, such
as the same model, loss and optimizer, it returns the function it built
before, whose compiled code JAX still holds.

The cache is one least-recently-used table of at most ``MAX_ENTRIES``
builders' results, so a long session that builds many models does not keep
them all alive.  Arguments that cannot be hashed (a regularizer holding
arrays, say) are built afresh each time, which is correct, only slower.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

MAX_ENTRIES = 64

Builder = TypeVar("Builder", bound=Callable[..., Any])

_entries: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_lock = threading.Lock()


def cached(builder: Builder) -> Builder:
    """Memoize ``builder(*args)`` in the one bounded cache, keyed by the builder and its arguments."""

    @functools.wraps(builder)
    def build(*args: Any) -> Any:
        key = (builder, args)
        try:
            hash(key)
        except TypeError:
            return builder(*args)
        with _lock:
            if key in _entries:
                _entries.move_to_end(key)
                return _entries[key]
        built = builder(*args)
        with _lock:
            _entries[key] = built
            while len(_entries) > MAX_ENTRIES:
                _entries.popitem(last=False)
        return built

    return build  # type: ignore[return-value]


def clear() -> None:
    """Forget every cached function (their compiled code is then freed by JAX when unreferenced)."""
    with _lock:
        _entries.clear()


def size() -> int:
    """How many built functions the cache holds now."""
    return len(_entries)


__all__ = ["MAX_ENTRIES", "cached", "clear", "size"]
