"""Telling lost precision apart from a wrong derivation.

A check runs in float64, but a function can still compute part of itself in
lower precision: a constant captured in a closure (``A = jnp.asarray(A_np)``
outside the function stays float32), or a cast inside it.  Its derivative is
then right only to about float32's rounding, so a correct derivation fails a
1e-10 comparison at ~1e-8, which is not the user's slip.

This module reads the function's jaxpr (traced at the float64 point) and
names every floating value of less than 64 bits that enters it: captured
constants (with their shape, dtype and the line that first uses them) and
casts down to a narrower float.  The diagnosis then calls a failure
*precision* when such a source exists and every disagreement is within
what the narrowest dtype allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class PrecisionSource(NamedTuple):
    """Where a value narrower than float64 enters a function checked in float64.

    ``cast``: the function computes in the narrow dtype (its finite
    differences are then noisy too); otherwise a rounded constant (the
    function is computed exactly, on slightly different numbers).
    """

    description: str
    dtype: np.dtype
    cast: bool = False

    def __str__(self) -> str:
        return self.description


def _where(eqn: Any) -> str:
    """``file.py:12 (fn)`` for an equation, or its primitive's name where JAX keeps no source."""
    try:
        from jax._src import source_info_util  # the one place JAX exposes an equation's source line

        return f"{eqn.primitive.name} at {source_info_util.summarize(eqn.source_info)}"
    except Exception:  # a JAX without it: the primitive alone still says what happened
        return eqn.primitive.name


def _narrow(dtype: Any) -> bool:
    # jnp.issubdtype knows bfloat16, which NumPy's does not count as floating.
    return jnp.issubdtype(dtype, jnp.floating) and np.dtype(dtype).itemsize < 8


def _sub_jaxprs(eqn: Any) -> Iterator[Any]:
    """The jaxprs nested in an equation (pjit, custom_vjp, scan, cond, while, remat)."""
    stack = list(eqn.params.values())
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(value)
        elif hasattr(value, "eqns"):
            yield value, [None] * len(value.constvars)
        elif hasattr(value, "jaxpr") and hasattr(value, "consts"):
            yield value.jaxpr, value.consts


def _exact(const: Any) -> bool:
    """Integer-valued (ones, masks, an identity): such a constant lost nothing to rounding."""
    try:
        values = np.asarray(const, np.float64)
    except (TypeError, ValueError):
        return False
    return bool(np.all(values == np.round(values)))


def _scan(jaxpr: Any, consts: Any, found: list[PrecisionSource]) -> None:
    for var, const in zip(jaxpr.constvars, consts):
        if _narrow(var.aval.dtype) and not _exact(const):
            user = next((e for e in jaxpr.eqns if any(v is var for v in e.invars)), None)
            shape, dtype = tuple(var.aval.shape), np.dtype(var.aval.dtype)
            used = "" if user is None else f", used first by {_where(user)}"
            found.append(
                PrecisionSource(f"a {dtype} constant of shape {shape} captured by the function{used}", dtype)
            )
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type" and _narrow(eqn.params["new_dtype"]):
            source = np.dtype(eqn.invars[0].aval.dtype)
            if not _narrow(source) and np.issubdtype(source, np.floating):
                dtype = np.dtype(eqn.params["new_dtype"])
                found.append(PrecisionSource(f"a cast from {source} to {dtype}: {_where(eqn)}", dtype, True))
        for sub, sub_consts in _sub_jaxprs(eqn):
            _scan(sub, sub_consts, found)


def precision_sources(fn: Callable, *args: Any) -> tuple[PrecisionSource, ...]:
    """The narrower-than-float64 values entering ``fn(*args)`` (traced in float64), deduplicated."""
    with jax.enable_x64(True):
        closed = jax.make_jaxpr(fn)(*args)
    found: list[PrecisionSource] = []
    _scan(closed.jaxpr, closed.consts, found)
    unique = {source.description: source for source in found}
    return tuple(unique.values())


def precision_bound(sources: tuple[PrecisionSource, ...]) -> float:
    """The relative disagreement the narrowest source can explain: 1000 of its epsilons, at most 1e-2.

    A correct derivation of a function rounded to float32 agrees to about
    float32's epsilon times the conditioning; 1000 epsilons leave room for
    that, and a slip in a derivation is far larger (O(1) relative).
    """
    if not sources:
        return 0.0
    return min(1e3 * max(float(jnp.finfo(source.dtype).eps) for source in sources), 1e-2)


__all__ = ["PrecisionSource", "precision_bound", "precision_sources"]
