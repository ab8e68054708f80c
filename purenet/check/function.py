"""``check_function``: verify the hand-derived derivative of any function of pytrees.

Where ``check_gradients`` checks a network's cost and ``check_layer`` one
layer, this checks a plain function ``f(*args)`` (a loss of your own,
``logsumexp(A x)``, a function of several pytrees), scalar- or array-valued:

* scalar f: your ``grad(*args)`` against ``jax.grad`` and finite differences;
* array f: your ``vjp(*args, g_out)`` for a random cotangent ``g_out``, as the
  gradient of s(args) = sum(f(args) * g_out), against ``jax.vjp`` and
  finite differences (``torch.autograd.gradcheck``'s fast mode does the same
  with random projections);
* neither given: JAX's own derivative (a ``custom_vjp`` rule inside f, say)
  against finite differences, as ``jax.test_util.check_grads`` does.

All in float64 copies of ``args`` whether or not x64 is on globally, with
the same probing and report as the other checks.  A check that fails because
f computes part of itself in float32 (a captured constant, a cast) says so
rather than blaming the derivation (``purenet.check.precision``).

Second order (torch's ``gradgradcheck``, with a third opinion): for scalar f
and a seeded random direction v, the Hessian-vector product H v is the
gradient of s(args) = <grad f(args), v>, so the same engine checks your
``hvp(*args, v)`` against ``jax.grad`` of s (reverse over reverse) and
finite differences of ``jax.grad`` f along the probes; with no ``hvp``
given (``second_order=True``), JAX's own second derivative against finite
differences (a ``custom_jvp`` rule's derivative, say).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.check.diagnose import diagnose
from purenet.check.engine import finish, leaf_names, three_way, tolerances
from purenet.check.precision import PrecisionSource, precision_sources
from purenet.check.report import GradientReport
from purenet.core import ConfigError, InputTypeError, check_like, describe_tree, dtype_kind
from purenet.shapes import as_float64
from purenet.validate import require_finite


def check_function(
    f: Callable,
    args: Any,
    *,
    grad: Callable | None = None,
    vjp: Callable | None = None,
    hvp: Callable | None = None,
    second_order: bool = False,
    reference_rtol: float = 1e-10,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    eps: float = 1e-5,
    max_coordinates: int = 64,
    directions: int = 16,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradientReport:
    """Check a hand-derived gradient or VJP of ``f(*args)`` against JAX and finite differences.

    Args:
      f: a function of one or more pytrees of floating arrays, written in
        ``jax.numpy``; scalar- or array-valued (any pytree of arrays).
      args: its positional arguments, a tuple (one array may be passed
        alone; one tuple-valued argument must be wrapped: ``((a, b),)``).
      grad: for scalar f, ``grad(*args)``: the gradient, like the argument
        for one argument, a tuple of one gradient per argument for several.
        In NumPy or JAX; it receives NumPy float64 arrays.
      vjp: for array f, ``vjp(*args, g_out) -> gradients`` (as ``grad``
        returns them) for a cotangent ``g_out`` shaped like f's output.
      hvp: for scalar f, ``hvp(*args, v) -> H v`` (as ``grad`` returns
        gradients; ``v`` is shaped like the argument, or a tuple like
        ``args`` for several): checks the second order (module docstring).
      second_order: check JAX's second derivative of f without an ``hvp``.
      reference_rtol: as for ``check_gradients``.
      rtol: as for ``check_gradients``.
      atol: as for ``check_gradients``.
      eps: as for ``check_gradients``.
      max_coordinates: as for ``check_gradients``.
      directions: as for ``check_gradients``.
      seed: as for ``check_gradients``.
      raise_on_failure: as for ``check_gradients``.

    Returns:
      A ``GradientReport`` with one row per argument leaf, named after f's
      parameters (``A``, ``x['w']``); raises ``GradientCheckError`` on failure.

    Examples:
      d/dw (w sin w) = sin w + w cos w, by hand; dropping the product rule's
      first term is caught:

      >>> import jax.numpy as jnp, numpy as np
      >>> import purenet as pn
      >>> def f(w):
      ...     return jnp.sum(w * jnp.sin(w))
      >>> w = np.array([0.5, -1.0, 2.0])
      >>> pn.check_function(f, w, grad=lambda w: np.sin(w) + w * np.cos(w)).passed
      True
      >>> report = pn.check_function(f, w, grad=lambda w: w * np.cos(w), raise_on_failure=False)
      >>> report.passed, report.verdict
      (False, 'derivation')
    """
    if not isinstance(second_order, bool):
        raise ConfigError("check_function", f"second_order must be True or False, got {second_order!r}")
    order = "[second order]" if second_order or hvp is not None else ""
    subject = f"check_function{order}({getattr(f, '__name__', type(f).__name__)})"
    tol = tolerances(subject, reference_rtol, rtol, atol, eps, max_coordinates, directions, seed)
    args = _arguments(subject, f, args)
    _require_derivative(subject, grad, vjp, hvp)
    if second_order and (grad is not None or vjp is not None):
        raise ConfigError(
            subject, "second_order=True checks H v (give hvp=); check grad= or vjp= in a call of its own"
        )
    if order:
        return finish(_check_second_order(subject, f, args, hvp, tol), raise_on_failure)
    return finish(_check_first_order(subject, f, args, grad, vjp, tol), raise_on_failure)


def _check_first_order(subject: str, f: Callable, args: tuple, grad, vjp, tol) -> GradientReport:
    """The user's gradient (scalar f) or VJP (array f) against JAX and finite differences."""
    rng = np.random.default_rng(tol.seed)
    with jax.enable_x64(True):
        args64 = tuple(as_float64(args))
        output = _output_shapes(subject, f, args64, grad)
        scalar_output = _is_scalar(output)
        data = np.float64(1.0) if scalar_output else _cotangent(output, rng)
        reference_side = None
        if grad is not None:
            reference_side = (_as_gradients(subject, grad(*args64), args64, "grad"), None)
        elif vjp is not None:
            reference_side = (_as_gradients(subject, vjp(*args64, data), args64, "vjp"), None)
        scalar = _function_scalar(f, scalar_output)
        return _compared(subject, scalar, args64, data, _names(f, args64), reference_side, tol)


def _compared(subject: str, scalar: Callable, args: tuple, data, names, reference_side, tol, **report_fields):
    """The three-way comparison, diagnosed: on failure, narrow results and casts looked for first."""
    report = three_way(subject, scalar, args, data, names, reference_side, np.inf, tol)
    report = dataclasses.replace(report, **report_fields)
    sources = ()
    if not report.passed:
        given = () if reference_side is None else reference_side[0]
        sources = _narrow_results(given, names) + precision_sources(lambda a, d: scalar(a, d)[0], args, data)
    return diagnose(report, (), sources)


def _check_second_order(subject: str, f: Callable, args: tuple, hvp: Callable | None, tol) -> GradientReport:
    """H v of scalar f as the gradient of s = <grad f, v>: your hvp vs JAX vs finite differences."""
    rng = np.random.default_rng(tol.seed)
    with jax.enable_x64(True):
        args64 = tuple(as_float64(args))
        output = _output_shapes(subject, f, args64, None)
        if not _is_scalar(output):
            raise ConfigError(
                subject, f"f returns {describe_tree(output)}: a second-order check needs a scalar f"
            )
        if not any(np.size(leaf) for leaf in jax.tree_util.tree_leaves(args64)):
            raise ConfigError(subject, "args hold no entries: a check of nothing cannot pass")
        v = tuple(_cotangent(arg, rng) for arg in args64)
        reference_side = None
        if hvp is not None:
            given = hvp(*args64, v[0] if len(args64) == 1 else v)
            reference_side = (_as_gradients(subject, given, args64, "hvp"), None)
        scalar = _directional_derivative(f)
        names = _names(f, args64)
        return _compared(
            subject, scalar, args64, v, names, reference_side, tol, quantity="Hessian-vector product"
        )


def _directional_derivative(f: Callable) -> Callable:
    """``(args, v) -> (<grad f, v>, f)`` at args: its gradient is H v; never cached (f may read globals)."""

    def scalar(args, v):
        value, grads = jax.value_and_grad(lambda a: _scalar_leaf(f(*a)))(args)
        products = jax.tree_util.tree_map(lambda g, d: jnp.sum(g * d), grads, v)
        return sum(jax.tree_util.tree_leaves(products)), value

    return scalar


def _scalar_leaf(y: Any) -> jax.Array:
    return jnp.reshape(jax.tree_util.tree_leaves(y)[0], ())


def _arguments(subject: str, f: Callable, args: Any) -> tuple:
    """``args`` as a tuple of pytrees of finite floating arrays; anything else refused by name."""
    if not callable(f):
        raise ConfigError(subject, f"f must be a function, got {describe_tree(f)}")
    args = args if type(args) is tuple else (args,)  # a namedtuple is one argument, not the arguments
    if not args:
        raise ConfigError(subject, "args is empty: a function of nothing has no derivative to check")
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        where = f"args{jax.tree_util.keystr(path)}"
        kind = _kind(leaf)
        if kind != "floating":
            got = (
                describe_tree(leaf)
                if kind is None
                else f"dtype {getattr(leaf, 'dtype', None) or np.asarray(leaf).dtype}"
            )
            raise InputTypeError(
                subject, f"{where} must be a floating array (every argument is differentiated), got {got}"
            )
    for i, arg in enumerate(args):
        if not jax.tree_util.tree_leaves(arg):
            raise InputTypeError(
                subject, f"args[{i}] holds no array to differentiate, got {describe_tree(arg)}"
            )
    require_finite(subject, "args", args)
    return args


def _kind(leaf: Any) -> str | None:
    """The leaf's dtype kind ("floating", ...), or None for what is not an array (a PRNG key included)."""
    if not _array_like(leaf):
        return None
    try:
        return dtype_kind(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype)
    except TypeError:  # an extended dtype such as a typed PRNG key
        return None


def _array_like(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") or (isinstance(leaf, (float, int, list)) and not isinstance(leaf, bool))


def _require_derivative(
    subject: str, grad: Callable | None, vjp: Callable | None, hvp: Callable | None
) -> None:
    given = [name for name, fn in (("grad", grad), ("vjp", vjp), ("hvp", hvp)) if fn is not None]
    if len(given) > 1:
        raise ConfigError(
            subject, f"give one of grad= (scalar f), vjp= (array f) or hvp= (scalar f), got {given}"
        )
    for name, fn in (("grad", grad), ("vjp", vjp), ("hvp", hvp)):
        if fn is not None and not callable(fn):
            raise ConfigError(subject, f"{name} must be a function, got {describe_tree(fn)}")


def _output_shapes(subject: str, f: Callable, args: tuple, grad: Callable | None) -> Any:
    """f's output shapes (traced once, never run); a non-floating output, or grad for an array f, refused."""
    try:
        out = jax.eval_shape(f, *args)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as error:
        raise InputTypeError(
            subject,
            f"f must be written in jax.numpy (it is traced to be differentiated): {type(error).__name__}",
        ) from None
    leaves = jax.tree_util.tree_leaves(out)
    if not leaves:
        raise InputTypeError(subject, f"f must return arrays, got {describe_tree(out)}")
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise InputTypeError(subject, f"f must return floating arrays, got dtype {leaf.dtype}")
    if grad is not None and not _is_scalar(out):
        raise ConfigError(subject, f"f returns {describe_tree(out)}, not a scalar: give its vjp=, not grad=")
    return out


def _is_scalar(output: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(output)
    return len(leaves) == 1 and leaves[0].shape == ()


def _cotangent(output: Any, rng: np.random.Generator) -> Any:
    """A standard normal cotangent shaped like f's output (seeded, so a check is repeatable)."""
    return jax.tree_util.tree_map(lambda y: rng.standard_normal(y.shape), output)


def _as_gradients(subject: str, given: Any, args: tuple, name: str) -> tuple:
    """The user's gradients as a tuple like ``args``, checked (tree, shapes, dtype kinds) by name."""
    if len(args) == 1:
        check_like(given, args[0], layer=subject, what=f"{name}'s result")
        return (given,)
    if isinstance(given, list):
        given = tuple(given)
    check_like(given, args, layer=subject, what=f"{name}'s result (one gradient per argument)")
    return given


def _function_scalar(f: Callable, scalar_output: bool) -> Callable:
    """``(args, g_out) -> (value, output)``: f itself, or the projection sum(f(args) * g_out).

    Built afresh for every check, never cached: a plain function often reads
    a global or a closure (the next notebook cell's data), which a compiled
    and cached f would keep at its first value.
    """

    def scalar(args, g_out):
        y = f(*args)
        if scalar_output:  # one scalar leaf, possibly inside a dict or tuple
            return _scalar_leaf(y) * g_out, y
        products = jax.tree_util.tree_map(lambda y_i, g_i: jnp.sum(y_i * g_i), y, g_out)
        return sum(jax.tree_util.tree_leaves(products)), y

    return scalar


def _narrow_results(gradients: Any, names: list[str]) -> tuple[PrecisionSource, ...]:
    """The user's gradient leaves computed below float64 (a float32 derivation rounds like one)."""
    return tuple(
        PrecisionSource(f"your derivative returned {np.dtype(leaf.dtype)} for {name}", np.dtype(leaf.dtype))
        for name, leaf in zip(names, jax.tree_util.tree_leaves(gradients))
        if hasattr(leaf, "dtype")
        and jnp.issubdtype(leaf.dtype, jnp.floating)
        and np.dtype(leaf.dtype).itemsize < 8
    )


def _names(f: Callable, args: tuple) -> list[str]:
    """Leaf names after f's parameters (``A``, ``x['w']``), or ``args[i]`` where there are none."""
    try:
        parameters = [
            p.name
            for p in inspect.signature(f).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    if len(parameters) < len(args):
        parameters = [f"args[{i}]" for i in range(len(args))]
    return [name for arg, prefix in zip(args, parameters) for name in leaf_names(arg, prefix)]


__all__ = ["check_function"]
