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

from purenet.errors import ConfigError, InputTypeError, ParamsError, describe_tree, dtype_kind

CONTRACT = "apply(params, x, *, key=None, train=False) -> y"


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
            dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
            if dtype_kind(dtype) != "floating":
                raise ParamsError(
                    owner,
                    f"init built a leaf of dtype {dtype}; params must be floating point "
                    "(does an initializer return integers?)",
                    leaf=jax.tree_util.keystr(path),
                )
        return result

    checked._purenet_checked = True  # type: ignore[attr-defined]
    return checked


def check_key(owner: str, key: Any, argument: str = "key") -> jax.Array:
    """A JAX PRNG key (``jax.random.PRNGKey(n)``'s uint32 pair or a typed ``jax.random.key(n)``), returned."""
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
        got = f"an array of shape {tuple(key.shape)} ({key.dtype})"
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
        # Both modes are traced; the device runs the one train selects (see the module docstring).
        return jax.lax.cond(
            train,
            lambda: apply(params, x, key=key, train=True),
            lambda: apply(params, x, key=key, train=False),
        )

    run._purenet_contract = True  # type: ignore[attr-defined]
    return run
