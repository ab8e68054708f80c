"""The names the curvature modules share: the params alias, the HVP methods, the error, the checks.

Every other module of ``purenet.curvature`` imports from here and nothing
here imports from them, so the package's imports run one way:

    base <- products <- operator <- eigen <- density <- plotting
                                 <- trace
                                 <- solve <- hessian_free

Vectors are flattened in ``jax.tree_util`` leaf order
(``jax.flatten_util.ravel_pytree``): the rows and columns of ``hessian``,
of ``CurvatureOperator.to_dense``, and every Krylov basis use that order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from purenet.core import ConfigError, ParamsError, PurenetError, ShapeError, check_like, describe_tree
from purenet.shapes import require_positive_int
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

    Examples:
      >>> import jax.numpy as jnp
      >>> import purenet as pn
      >>> flat, unflatten = pn.flatten_params({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
      >>> print(flat)  # leaf order: "b" before "w"
      [0. 0. 1. 1. 1. 1.]
      >>> unflatten(flat)["w"].shape
      (2, 2)
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not hasattr(leaf, "dtype") and not isinstance(leaf, (int, float)):
            raise ParamsError(
                "flatten_params",
                f"expected a pytree of arrays, got {describe_tree(leaf)}",
                jax.tree_util.keystr(path),
            )
    return ravel_pytree(params)


# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def require_finite(where: str, what: str, tree: Any, message: str | None = None) -> None:
    """Raise naming the first leaf of ``tree`` (named ``what``) holding NaN or inf; skipped under a trace."""
    if not _is_concrete(tree):
        return
    # Concrete values inside a user's jit (cg_solve's b, say): evaluate now, not as a traced flag.
    with jax.ensure_compile_time_eval():
        path = first_nonfinite_leaf(tree)
    if path is not None:
        message = message or f"{what} must be finite, but this leaf holds NaN or inf"
        raise NonFiniteCurvatureError(where, message, path, root=what)


def _template(tree: Any, drop: int = 0) -> Any:
    """``tree``'s shapes (less ``drop`` leading axes) and dtypes.

    The template names each leaf's shape and dtype explicitly, whatever
    ``tree`` holds (arrays, Python scalars, tracers).
    """
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a)[drop:], jnp.result_type(a)), tree
    )


def check_vector(where: str, what: str, tree: Any, params: Params, *, stacked: bool = False) -> int | None:
    """Check a curvature vector against the params by the one tree check, ``purenet.core.check_like``.

    The same containers all the way down, then every leaf's shape and dtype
    kind (a floating vector for floating params); the error names the first
    mismatching path in ``what``, what was expected there and what came.

    Args:
      where: the function checking, for the message (``"hvp"``, ``"hessian operator"``).
      what: the vector's name, the root of the path in the message (``"v"``, ``"vs"``, ``"b"``).
      tree: the vector.
      params: the params it must be shaped like.
      stacked: ``tree`` holds vectors stacked on a leading axis of every leaf.

    Returns:
      How many vectors are stacked when ``stacked``, else ``None``.
    """
    template = _template(params)
    if not stacked:
        return check_like(tree, template, layer=where, what=what)
    try:
        return check_like(tree, template, layer=where, what=what, leading=True)
    except ParamsError as error:
        if error.message.startswith("every leaf of"):  # the leaves disagree on their leading axis
            _locate_stack_mismatch(where, what, tree, template)
        raise


def _locate_stack_mismatch(where: str, what: str, tree: Any, template: Any) -> None:
    """The leaves of ``tree`` disagree on their leading axis: raise at the first leaf at fault.

    One vector where a stack was due has the params' own leading axes; say so.
    Otherwise the leaves whose length differs from the most common one are at fault.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if leaves and _is_like(tree, template):
        path, leaf = leaves[0]
        shape = tuple(np.shape(leaf))
        expected = f"(n, {', '.join(map(str, shape))})" if shape else "(n,)"
        raise ParamsError(
            where,
            f"expected shape {expected}, n vectors stacked on a leading axis, got {shape}: "
            "a single vector shaped like the params",
            jax.tree_util.keystr(path),
            what,
        ) from None
    lengths = [np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(tree) if np.ndim(leaf)]
    if lengths:
        count = collections.Counter(lengths).most_common(1)[0][0]
        check_like(tree, template, layer=where, what=what, leading=count)


def _is_like(tree: Any, template: Any) -> bool:
    try:
        check_like(tree, template, layer="")
    except ParamsError:
        return False
    return True


def require_finite_result(where: str, tree: Any) -> None:
    """A product (or a quantity built from products) must be finite: the README promises a raise."""
    require_finite(
        where,
        "the result",
        tree,
        "the result is not finite (NaN or inf): the loss or its derivatives are not finite at these "
        "params and data",
    )


def scalar_valued(where: str, f: Callable) -> Callable:
    """``f`` refusing, at trace time, an output that is not one scalar (a curvature needs a loss)."""

    def checked(*args: Any) -> jax.Array:
        value = f(*args)
        if jnp.shape(value) != ():
            raise ShapeError(
                where,
                f"f must return a scalar (a loss), got an output of shape {jnp.shape(value)}; "
                "reduce it first, e.g. with jnp.mean",
            )
        return value

    return checked


def check_data(where: str, data: Any, batch_size: int | None) -> int | None:
    """Check an operator's dataset, whose leaves share a leading axis over examples; return the batch size.

    The batch size defaults to all the examples.
    """
    if data is None:
        if batch_size is not None:
            raise ConfigError(where, "batch_size is only meaningful together with data")
        return None
    n = check_like(data, _template(data, drop=1), layer=where, what="data", leading=True)
    if n == 0:
        raise ConfigError(where, "data holds no examples")
    require_finite(where, "data", data)
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
