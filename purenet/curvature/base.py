"""The names the curvature modules share: the params alias, the HVP methods, the error, the checks.

Every other module of ``purenet.curvature`` imports from here and nothing
here imports from them, so the package's imports run one way:

    base <- products <- operator <- eigen <- density <- plotting
                                 <- trace
                                 <- solve

Vectors are flattened in ``jax.tree_util`` leaf order
(``jax.flatten_util.ravel_pytree``): the rows and columns of ``hessian``,
of ``CurvatureOperator.to_dense``, and every Krylov basis use that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from purenet.core import ConfigError, ParamsError, PurenetError, require_positive_int
from purenet.trees import first_nonfinite_leaf

Params = Any
METHODS = ("forward_over_reverse", "reverse_over_reverse")


class NonFiniteCurvatureError(PurenetError, ArithmeticError):
    """A curvature product or its input held a NaN or an infinity."""


def flatten_params(params: Params) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
    """Ravel a params pytree into one vector, in ``jax.tree_util`` leaf order.

    Returns:
      ``(vector, unflatten)``, where ``unflatten(vector)`` rebuilds the tree
      (each leaf back in its own dtype).  This is the order of the rows and
      columns of ``hessian`` and of every flattened vector in this package.
    """
    return ravel_pytree(params)


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def require_finite(where: str, what: str, tree: Any) -> None:
    """Raise naming the first leaf of ``tree`` holding a NaN or inf (skipped under a trace)."""
    if not _is_concrete(tree):
        return
    path = first_nonfinite_leaf(tree)
    if path is not None:
        raise NonFiniteCurvatureError(where, f"{what} must be finite, but this leaf holds NaN or inf", path)


def check_like_params(where: str, what: str, params: Params, v: Any, batch: int | None = None) -> None:
    """Check that ``v`` has the params' tree structure and leaf shapes (after a leading ``batch`` axis)."""
    expected = jax.tree_util.tree_structure(params)
    got = jax.tree_util.tree_structure(v)
    if expected != got:
        raise ParamsError(where, f"{what} must have the params' tree structure {expected}, got {got}")
    for (path, p), leaf in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(v)):
        want = tuple(np.shape(p)) if batch is None else (batch, *np.shape(p))
        if tuple(np.shape(leaf)) != want:
            raise ParamsError(
                where,
                f"{what} must have shape {want} here, like the params"
                + ("" if batch is None else " with a leading axis of vectors")
                + f", got {tuple(np.shape(leaf))}",
                jax.tree_util.keystr(path),
            )


def leading_count(where: str, what: str, tree: Any) -> int:
    """The common length of the leading axis of every leaf of ``tree``."""
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(tree)}
    if len(counts) != 1 or None in counts:
        raise ParamsError(where, f"every leaf of {what} needs the same leading axis, got lengths {counts}")
    return counts.pop()


def check_data(where: str, data: Any, batch_size: int | None) -> int | None:
    """Check an operator's dataset and return the batch size (default: all examples)."""
    if data is None:
        if batch_size is not None:
            raise ConfigError(where, "batch_size is only meaningful together with data")
        return None
    n = leading_count(where, "data", data)
    if n == 0:
        raise ConfigError(where, "data holds no examples")
    return n if batch_size is None else require_positive_int(where, "batch_size", batch_size)


def check_method(where: str, method: str) -> str:
    """Return ``method`` if it is one of ``METHODS``, else raise a ConfigError."""
    if method not in METHODS:
        raise ConfigError(where, f"method must be one of {METHODS}, got {method!r}")
    return method


# --------------------------------------------------------------------------
# Tree arithmetic
# --------------------------------------------------------------------------


def tree_vdot(a: Params, b: Params) -> jax.Array:
    """The inner product of two trees of one structure, summed over every leaf."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_axpy(a: float | jax.Array, x: Params, y: Params) -> Params:
    """``a x + y`` leaf by leaf, in ``y``'s dtypes."""
    return jax.tree_util.tree_map(lambda xi, yi: yi + (a * xi).astype(yi.dtype), x, y)
