"""Pytree helpers shared by training and curvature: finiteness checks that cost one host sync."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def leaf_finite_flags(tree: Any) -> jax.Array:
    """One boolean per leaf of ``tree``: True where the leaf holds no NaN or inf (traceable)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.ones((0,), bool)
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def all_finite(tree: Any) -> jax.Array:
    """A scalar boolean: True when no leaf of ``tree`` holds a NaN or an inf (traceable)."""
    return jnp.all(leaf_finite_flags(tree))


_jit_leaf_finite_flags = jax.jit(leaf_finite_flags)


def first_nonfinite_leaf(tree: Any) -> str | None:
    """The key path of the first leaf of ``tree`` holding a NaN or inf, or None when all are finite.

    The flags of every leaf are computed in one compiled call and fetched in
    one device-to-host transfer: checking leaf by leaf costs a round trip per
    leaf, which on a GPU is ten times the Hessian-vector product being checked.
    """
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    flags = np.asarray(_jit_leaf_finite_flags(tree))
    bad = np.flatnonzero(~flags)
    return jax.tree_util.keystr(paths[bad[0]]) if bad.size else None
