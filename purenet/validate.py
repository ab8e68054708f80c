"""Value checks: a bad value is refused by name where it is concrete, through checkify where traced.

purenet's policy (README, "What purenet refuses"):

* **Where a value is concrete** (an eager call; every host-side entry point
  such as ``fit``, ``evaluate``, the checks, the Krylov methods, checkpoint
  save and load), a value outside its domain raises a ``DataError`` (or the
  error the caller names) saying who refused it, which argument, what was
  expected and what came.
* **Under a trace** (``jax.jit``, ``jax.grad`` of that value, ``vmap``), shapes
  and dtypes are still checked at trace time, but values cannot be read.
  Inside ``checked(fn)`` (or ``with checking():`` under your own
  ``jax.experimental.checkify.checkify``), the same checks become
  ``checkify.check``s compiled into the function; outside, they cost nothing
  and are skipped, so a compiled train step with checks off is unchanged.

``require`` is the one place that choice is made; the helpers below it state
the domains purenet's functions share (class labels, probabilities, finite
values, PRNG keys, constructor numbers).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from purenet.core import ConfigError, InputTypeError, PurenetError, ShapeError, check_key

_CHECKING = contextvars.ContextVar("purenet_checking", default=False)


class DataError(PurenetError, ValueError):
    """A value outside its domain: a label out of range, a target outside [0, 1], NaN, an empty batch."""


def is_traced(*values: Any) -> bool:
    """Whether any leaf of ``values`` is a JAX tracer (its value cannot be read here)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


@contextlib.contextmanager
def checking() -> Iterator[None]:
    """Compile purenet's value checks as ``checkify.check``s while tracing inside this block.

    For use under your own ``jax.experimental.checkify.checkify``; ``checked``
    does both for you.
    """
    token = _CHECKING.set(True)
    try:
        yield
    finally:
        _CHECKING.reset(token)


def checks_compiled() -> bool:
    """Whether traced value checks are being compiled (inside ``checked`` or ``checking``)."""
    return _CHECKING.get()


def require(
    owner: str, ok: Any, message: str, *, error: type[PurenetError] = DataError, **values: Any
) -> None:
    """Refuse unless every entry of the boolean ``ok`` holds.

    ``message`` may name ``values`` as ``{name}`` fields (arrays, formatted when
    the check fails).  Concrete: raises ``error(owner, message)``.  Traced:
    a ``checkify.check`` inside ``checked``/``checking``, else nothing.
    """
    if is_traced(ok, values):
        if checks_compiled():
            checkify.check(jnp.all(ok), f"{owner}: {message}", **values)
        return
    if not bool(np.all(np.asarray(ok))):
        shown = {name: _show(value) for name, value in values.items()}
        raise error(owner, message.format(**shown))


def _show(value: Any) -> str:
    array = np.asarray(value)
    return str(array.item()) if array.size == 1 else np.array2string(array, threshold=8)


def checked(fn: Callable) -> Callable:
    """``fn`` jit-compiled with purenet's value checks compiled in (``jax.experimental.checkify``).

    The returned function runs ``fn`` and raises a ``DataError`` quoting the
    first failed check (who refused what), where the plain ``jax.jit(fn)``
    would return a NaN or a wrong number.  Call it directly: it compiles
    ``fn`` itself (a second ``jax.jit`` around it is refused).  Under your
    own trace, use ``checkify.checkify`` with ``with purenet.checking():``.

    Example::

        loss = pn.checked(lambda p, x, y: pn.softmax_cross_entropy(model.apply(p, x), y))
        loss(params, x, labels)   # DataError if a label is outside [0, classes)
    """

    def traced(*args: Any, **kwargs: Any) -> Any:
        with checking():
            return fn(*args, **kwargs)

    compiled = jax.jit(checkify.checkify(traced, errors=checkify.user_checks))

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if is_traced(args, kwargs):
            raise ConfigError(
                "checked",
                "a checked function compiles itself and raises on the host; call it outside "
                "jax.jit/grad/vmap, or use jax.experimental.checkify.checkify(fn) inside "
                "`with purenet.checking():` there",
            )
        error, out = compiled(*args, **kwargs)
        message = error.get()
        if message is not None:
            raise DataError("checked", message.removesuffix(" (`check` failed)"))
        return out

    return run


# --------------------------------------------------------------------------
# The domains purenet's functions share
# --------------------------------------------------------------------------


def require_nonempty(owner: str, argument: str, x: Any) -> None:
    """An array with at least one entry (a static, trace-time check)."""
    if np.size(x) == 0:
        shape = tuple(np.shape(x))
        raise ShapeError(owner, f"{argument} is empty (shape {shape}); expected at least one entry")


def _array_module(*values: Any) -> Any:
    """NumPy for concrete values, jax.numpy for traced ones.

    Why: an eager ``jnp`` reduction compiles once per new shape and dtype, and
    the checks run on every host-side call with ever-new shapes (a check of
    a random network reads each of its leaves), so NumPy keeps them cheap.
    """
    return jnp if is_traced(values) else np


def _dtype_of(x: Any) -> Any:
    """The dtype of an array, tracer or array-like (a list, a Python number)."""
    dtype = getattr(x, "dtype", None)
    return dtype if dtype is not None else np.asarray(x).dtype


def _skipped(*values: Any) -> bool:
    """Traced values whose checks are not being compiled: there is nothing to compute."""
    return is_traced(values) and not checks_compiled()


def require_finite(owner: str, argument: str, x: Any, *, error: type[PurenetError] = DataError) -> None:
    """Every entry of a floating array (or every leaf of a tree) finite: no NaN, no infinity."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        if _skipped(leaf) or not jnp.issubdtype(_dtype_of(leaf), jnp.inexact):
            continue
        xp = _array_module(leaf)
        finite = xp.isfinite(xp.asarray(leaf))
        where = f"{argument}{jax.tree_util.keystr(path)}"
        require(
            owner,
            finite,
            f"{where} must be finite, got {{count}} non-finite entries (NaN or infinity)",
            error=error,
            count=xp.sum(~finite),
        )


def require_class_labels(owner: str, labels: Any, classes: int, argument: str = "labels") -> None:
    """Integer labels in [0, classes), never wrapped as an index would wrap them."""
    if not jnp.issubdtype(_dtype_of(labels), jnp.integer):
        raise InputTypeError(owner, f"expected integer class {argument}, got dtype {_dtype_of(labels)}")
    if np.size(labels) == 0 or _skipped(labels):
        return
    xp = _array_module(labels)
    labels = xp.asarray(labels)
    require(
        owner,
        (labels >= 0) & (labels < classes),
        f"{argument} must be class indices in [0, {classes}) for outputs of {classes} classes, "
        "got values from {low} to {high}",
        low=xp.min(labels),
        high=xp.max(labels),
    )


def require_in_interval(owner: str, argument: str, x: Any, low: float, high: float) -> None:
    """Every entry of ``x`` in the closed interval [low, high] (NaN fails)."""
    if np.size(x) == 0 or _skipped(x):
        return
    xp = _array_module(x)
    x = xp.asarray(x)
    require(
        owner,
        (x >= low) & (x <= high),
        f"{argument} must lie in [{low:g}, {high:g}], got values from {{low}} to {{high}} (or NaN)",
        low=xp.min(x),
        high=xp.max(x),
    )


def require_distributions(owner: str, argument: str, p: Any, tolerance: float = 1e-4) -> None:
    """Probability rows: entries >= 0 summing to 1 along the last axis, within ``tolerance``."""
    if np.size(p) == 0 or _skipped(p):
        return
    require_in_interval(owner, argument, p, 0.0, 1.0)
    xp = _array_module(p)
    sums = xp.sum(np.asarray(p, np.float64) if xp is np else p, axis=-1)  # float64: exact for any input dtype
    require(
        owner,
        xp.abs(sums - 1.0) <= tolerance,
        f"each row of {argument} must sum to 1 (class probabilities), got sums from {{low}} to {{high}}",
        low=xp.min(sums),
        high=xp.max(sums),
    )


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """ " in [0, 1)", " >= 0", " <= 1" or "" for the bounds a number must keep."""
    if math.isfinite(low) and math.isfinite(high):
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isfinite(low):
        return f" {'>' if low_open else '>='} {low:g}"
    if math.isfinite(high):
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def require_number(
    owner: str,
    argument: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """A constructor's number: a real (or integer) Python/NumPy scalar, finite, in range; returned."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    kind = "an integer" if integer else "a finite real number"
    wanted = kind + _range_text(low, high, low_open, high_open)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
        raise ConfigError(owner, f"{argument} must be {wanted}, got {value!r} ({type(value).__name__})")
    number = int(value) if integer else float(value)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if not math.isfinite(number) or below or above:
        raise ConfigError(owner, f"{argument} must be {wanted}, got {value!r}")
    return number


require_key = check_key  # the key check lives beside Layer, whose init uses it
