"""purenet's errors, and how they name where in a model (or another tree) they arose.

Every error names who refused (a layer, a loss, a function), where (a params
path, an argument and its leaf path), what was expected and what came.  The
records and the one tree check that raise most of them are in
``purenet.core``, which re-exports everything here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp

# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class PurenetError(Exception):
    """Base of purenet's errors: names the layer and where in the model it sits.

    ``path`` is the position in the params tree (and so in the model), built
    outward as the error passes up through combinators: ``params[1]['block']``.
    ``root`` names the tree the path runs in (``params``, or ``v``, or
    ``g_params returned by the reference``).
    """

    def __init__(self, layer: str, message: str, leaf: str = "", root: str = "params"):
        super().__init__(message)
        self.layer = layer
        self.message = message
        self.leaf = leaf
        self.root = root
        self.path: list[str] = []

    def __str__(self) -> str:
        place = "".join(self.path)
        if self.root == "params":
            where = place + self.leaf
            if not where:
                return f"{self.layer}: {self.message}"
            return f"{self.layer} at params{where}: {self.message}"
        # Another tree (a gradient, a vector): its own path, after the layer's place in the model if any.
        inside = f"{self.root}{self.leaf}"
        return f"{self.layer} at {f'params{place}, ' if place else ''}{inside}: {self.message}"


class ShapeError(PurenetError, ValueError):
    """An input of the wrong rank or width, at init or at apply."""


class ParamsError(PurenetError, ValueError):
    """A params tree (or another tree that must match one) that does not fit."""


class ConfigError(PurenetError, ValueError):
    """A layer built with an argument out of range (a size below 1, say)."""


class MissingKeyError(ConfigError):
    """A stochastic layer (dropout) called in training mode without the PRNG key it draws from."""


class InputTypeError(PurenetError, TypeError):
    """An input of the wrong dtype: integers where floats are needed."""


class MissingReferenceError(PurenetError, TypeError):
    """A layer or loss without the hand-derived reference a check or reference pass needs."""


@contextlib.contextmanager
def located(step: str) -> Iterator[None]:
    """Prefix ``step`` (``"[2]"``, ``"['block']"``) to the path of any error raised inside."""
    try:
        yield
    except PurenetError as error:
        error.path.insert(0, step)
        raise


# --------------------------------------------------------------------------
# The one tree check
# --------------------------------------------------------------------------


def dtype_kind(dtype: Any) -> str:
    """``"floating"``, ``"complex"``, ``"integer"``, ``"bool"`` or ``"other"`` (bfloat16 is floating)."""
    for kind, base in (("floating", jnp.floating), ("complex", jnp.complexfloating)):
        if jnp.issubdtype(dtype, base):
            return kind
    if jnp.issubdtype(dtype, jnp.integer):
        return "integer"
    return "bool" if jnp.issubdtype(dtype, jnp.bool_) else "other"


def is_container(node: Any) -> bool:
    return node is None or isinstance(node, (Mapping, list, tuple))


def describe_tree(tree: Any) -> str:
    """A short description of a tree node for error messages."""
    if tree is None:
        return "None"
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return f"a {type(tree).__name__}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of {len(tree)} entries"
    if isinstance(tree, Mapping):
        return f"a dict with keys {sorted(map(str, tree))}"
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return f"an array of shape {tuple(tree.shape)} ({tree.dtype})"
    return f"a {type(tree).__name__}"
