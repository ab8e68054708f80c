"""The Layer contract, checked when a Layer is built, and ``train`` under ``jax.jit``.

Every layer's pair is called the same way by every combinator::

    init(key, input_shape)                      -> (output_shape, params)
    apply(params, x, *, key=None, train=False)  -> y

``init`` is wrapped to refuse a malformed key and to check that it returns
``(shape, floating params)``: an initializer returning integers would
otherwise give integer params that run until ``jax.grad`` fails deep
inside JAX.

A user's apply that cannot take ``key=`` and ``train=`` would otherwise fail
deep inside ``serial`` with Python's "unexpected keyword argument"; it is
refused when the Layer is built instead, naming the contract.

``train`` picks a Python branch (dropout draws or passes through), so it
must be known while tracing.  ``jax.jit(model.apply)`` traces keyword
arguments too, which would make ``train`` an abstract boolean: the wrapped
apply then traces both modes and selects one with ``lax.cond`` on the
device, so ``jax.jit(model.apply)(params, x, key=key, train=True)`` works
as written.  Passing ``train`` as a static argument
(``jax.jit(model.apply, static_argnames="train")``) compiles only the mode
asked for and is the faster choice; it gives the same numbers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.errors import (
    ConfigError,
    InputTypeError,
    MissingKeyError,
    ParamsError,
    PurenetError,
    describe_tree,
    dtype_kind,
)

CONTRACT = "apply(params, x, *, key=None, train=False) -> y"
TRACED_TRAIN = "under jax.jit (or another transformation) train arrives traced and both modes are compiled"
ONE_MODE = 'Pass key=..., or compile one mode: jax.jit(model.apply, static_argnames="train")'


def checked_init(owner: str, init: Callable) -> Callable:
    """``init`` refusing a malformed key, and checking that it returns ``(shape, floating params)``."""
    if getattr(init, "_purenet_checked", False):
        return init

    @functools.wraps(init)
    def checked(key, input_shape):
        check_key(owner, key)
        result = init(key, input_shape)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ConfigError(owner, f"init must return (output_shape, params), got {describe_tree(result)}")
        for path, leaf in jax.tree_util.tree_flatten_with_path(result[1])[0]:
            _require_floating_leaf(owner, jax.tree_util.keystr(path), leaf)
        return result

    checked._purenet_checked = True  # type: ignore[attr-defined]
    return checked


def _require_floating_leaf(owner: str, leaf_path: str, leaf: Any) -> None:
    """Refuse a params leaf that is not a floating-point array or number (an int, a string, an object)."""
    if hasattr(leaf, "dtype"):
        dtype = leaf.dtype
    elif isinstance(leaf, (bool, int, float, complex)):
        dtype = np.result_type(leaf)
    else:
        raise ParamsError(
            owner, f"init built a leaf of type {type(leaf).__name__}; params must be floating-point arrays",
            leaf=leaf_path,
        )  # fmt: skip
    if dtype_kind(dtype) != "floating":
        raise ParamsError(
            owner,
            f"init built a leaf of dtype {dtype}; params must be floating point "
            "(does an initializer return integers?)",
            leaf=leaf_path,
        )


def raw_key_shape() -> tuple:
    """The shape of a raw uint32 key under the PRNG implementation in use: (2,) for threefry, (4,) for rbg."""
    return _key_data_shape(jax.config.jax_default_prng_impl)


@functools.cache
def _key_data_shape(impl: str) -> tuple:
    # Keyed on the implementation's name: jax caches traces without the config, so it is passed explicitly.
    return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape)


def check_key(owner: str, key: Any, argument: str = "key") -> jax.Array:
    """A JAX PRNG key (``jax.random.PRNGKey(n)``'s uint32 data or a typed ``jax.random.key(n)``), returned.

    A raw key's shape follows ``jax_default_prng_impl`` (``(2,)`` for the
    default threefry, ``(4,)`` for ``rbg``), as ``jax.random`` reads it.
    """
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == raw_key_shape():
            return key
        got = f"an array of shape {tuple(key.shape)} ({key.dtype})"
        if key.dtype == np.uint32:  # the right kind of array, the wrong implementation's shape
            impl = jax.config.jax_default_prng_impl
            got += f"; a raw key is uint32 of shape {raw_key_shape()} under {impl}"
    else:
        got = f"{key!r} ({type(key).__name__})"
    raise InputTypeError(
        owner, f"{argument} must be a PRNG key such as jax.random.PRNGKey(0) or jax.random.key(0), got {got}"
    )


def check_apply_signature(owner: str, apply: Callable) -> None:
    """Refuse, naming the contract, an ``apply`` that cannot be called as combinators call it."""
    try:
        signature = inspect.signature(apply)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read, calls will tell
        return
    try:
        signature.bind(None, None, key=None, train=False)
    except TypeError as error:
        raise ConfigError(
            owner,
            f"apply must follow the Layer contract {CONTRACT}; "
            f"{getattr(apply, '__name__', 'it')}{signature} cannot be called so ({error}). "
            "Add `*, key=None, train=False` (or `**kwargs`) to its signature: "
            "combinators pass both to every child",
        ) from None


def train_flag(owner: str, train: Any) -> bool | jax.Array:
    """``train`` as a Python bool, or the traced boolean scalar it is under a transformation."""
    if isinstance(train, bool):
        return train
    is_bool_scalar = np.shape(train) == () and getattr(train, "dtype", None) == np.bool_
    if isinstance(train, jax.core.Tracer):
        if is_bool_scalar:
            return train
    elif isinstance(train, (np.bool_, np.ndarray, jax.Array)) and is_bool_scalar:
        return bool(train)
    got = f"{train!r} ({type(train).__name__})"
    if hasattr(train, "shape"):
        got = f"an array of shape {tuple(train.shape)} ({train.dtype})"
    raise ConfigError(owner, f"train must be a bool (True while training), got {got}")


def contract_apply(owner: str, apply: Callable) -> Callable:
    """``apply`` checked against the contract, with a traced ``train`` resolved by ``lax.cond``."""
    if getattr(apply, "_purenet_contract", False):
        return apply
    check_apply_signature(owner, apply)

    @functools.wraps(apply)
    def run(params, x, *, key=None, train=False):
        train = train_flag(owner, train)
        if isinstance(train, bool):
            return apply(params, x, key=key, train=train)
        return _both_modes(owner, apply, params, x, key, train)

    run._purenet_contract = True  # type: ignore[attr-defined]
    return run


def _both_modes(owner: str, apply: Callable, params: Any, x: Any, key: Any, train: jax.Array) -> jax.Array:
    """Trace both modes and let the device run the one a traced ``train`` selects (``lax.cond``).

    Both branches must trace: training mode with the key given (a dropout
    layer needs one even when ``train`` will be False on the device), and
    both with the same output shapes and dtypes.  Failing either is refused
    naming ``owner`` and the way out (a key, or ``train`` static).
    """
    try:
        return jax.lax.cond(
            train,
            lambda: apply(params, x, key=key, train=True),
            lambda: apply(params, x, key=key, train=False),
        )
    except MissingKeyError as error:
        needs_key = f"{TRACED_TRAIN}; training mode needs a PRNG key ({error}). {ONE_MODE}"
        raise MissingKeyError(owner, needs_key) from error
    except TypeError as error:
        if isinstance(error, PurenetError) or not (key is None or "branches" in str(error)):
            raise
        raise ConfigError(
            owner,
            f"{TRACED_TRAIN}; both must trace{' with key=None' if key is None else ''} and return the same "
            f"shapes and dtypes, and they did not ({type(error).__name__}: {error}). {ONE_MODE}",
        ) from error
