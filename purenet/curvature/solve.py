"""Conjugate gradients on a curvature operator.

``cg_solve`` solves (A + lambda I) x = g by conjugate gradients (Hestenes and
Stiefel 1952; Nocedal and Wright, "Numerical Optimization", Algorithm 5.2);
with A the Hessian or the Gauss-Newton matrix and g the gradient, -x is the
damped Newton step of Hessian-free optimization (Martens 2010, "Deep
learning via Hessian-free optimization"), which ``hessian_free.py`` takes
with Levenberg-Marquardt damping (section 4.1) and CG warm starts (section 4.5).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError
from purenet.curvature.base import Params, check_vector, require_finite, tree_axpy, tree_vdot
from purenet.curvature.operator import CurvatureOperator, compiled, require_operator
from purenet.shapes import require_positive_int
from purenet.validate import is_traced, require_number


class CGResult(NamedTuple):
    """The solution of (A + damping I) x = b by conjugate gradients.

    Attributes:
      x: the solution, in the params' structure.
      residual_norm: ||b - (A + damping I) x||, recomputed with one more product.
      relative_residual: residual_norm / ||b||.
      converged: whether relative_residual <= tol.
      iterations: the CG iterations run (one product each), from 0 (``x0``
        already solves the system) to ``maxiter`` (the cap was reached).
    """

    x: Params
    residual_norm: jax.Array
    relative_residual: jax.Array
    converged: jax.Array
    iterations: jax.Array


def _cg_loop(matvec, b, x0, tol, maxiter) -> tuple[Params, jax.Array]:
    """Unpreconditioned CG (Nocedal and Wright, Algorithm 5.2) from ``x0``; returns (x, iterations).

    It is ``jax.scipy.sparse.linalg.cg``'s loop (the same recurrences, the
    same stop: ||r_k|| <= tol ||b|| on the recurrence's residual, or k =
    maxiter), written out because jax's cg does not report k.
    """
    threshold = tol**2 * tree_vdot(b, b)

    def keep_going(state):
        _, _, gamma, _, k = state
        return (gamma > threshold) & (k < maxiter)

    def iteration(state):
        x, r, gamma, p, k = state
        product = matvec(p)
        alpha = gamma / tree_vdot(p, product)  # gamma = r_k . r_k
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, product, r)
        gamma_next = tree_vdot(r, r)
        return x, r, gamma_next, tree_axpy(gamma_next / gamma, p, r), k + 1

    r0 = jax.tree_util.tree_map(jnp.subtract, b, matvec(x0))
    state = (x0, r0, tree_vdot(r0, r0), r0, jnp.asarray(0, jnp.int32))
    x, _, _, _, iterations = jax.lax.while_loop(keep_going, iteration, state)
    return x, iterations


def cg_and_product(op, b, x0, damping, tol, maxiter) -> tuple[CGResult, Params]:
    """The CG result and A x (undamped), the product the true residual needed anyway."""
    x0 = jax.tree_util.tree_map(jnp.zeros_like, b) if x0 is None else x0
    if maxiter is None:  # jax's cg's default cap: 10 P
        maxiter = 10 * sum(leaf.size for leaf in jax.tree_util.tree_leaves(b))
    damped = lambda v: tree_axpy(damping, v, op._unchecked_matvec(v))  # noqa: E731
    # As jax's cg: a custom linear solve, so derivatives of x come from the solution, not the loop.
    x, iterations = jax.lax.custom_linear_solve(
        damped, b, lambda a, rhs: _cg_loop(a, rhs, x0, tol, maxiter), symmetric=True, has_aux=True
    )
    product = op._unchecked_matvec(x)
    residual = jax.tree_util.tree_map(jnp.subtract, b, tree_axpy(damping, x, product))
    residual_norm = jnp.sqrt(tree_vdot(residual, residual))
    b_norm = jnp.sqrt(tree_vdot(b, b))
    relative = residual_norm / jnp.maximum(b_norm, jnp.finfo(residual_norm.dtype).tiny)
    # CG stops at tol relative to ||b|| on its own recurrence; allow rounding in the recomputed one.
    converged = relative <= tol * 1.01
    return CGResult(x, residual_norm, relative, converged, iterations), product


def _cg_result(op, b, x0, damping, tol, maxiter) -> CGResult:
    result = cg_and_product(op, b, x0, damping, tol, maxiter)[0]
    return _honest(result, _arguments_valid(b, x0, damping, tol))


def _arguments_valid(b, x0, damping, tol) -> jax.Array:
    """Whether b and x0 are finite, damping finite >= 0 and tol in (0, 1), as one traced flag.

    ``cg_solve`` refuses each of these on the host; under a user's jit the
    values are traced and cannot be read there, so the flag travels with the result.
    """
    leaves = jax.tree_util.tree_leaves((b, x0))  # x0 None: no leaves
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    damping_ok = jnp.isfinite(damping) & (damping >= 0)
    return finite & damping_ok & (tol > 0) & (tol < 1)


def _honest(result: CGResult, valid: jax.Array) -> CGResult:
    """``result`` with x and the residuals NaN and ``converged`` False where the arguments were not valid.

    A NaN b makes CG's stop test false at once, so without this x would come
    back exactly x0 (0) and look like an answer; a negative damping would
    report convergence on an indefinite system.
    """
    spoil = lambda a: jnp.where(valid, a, jnp.nan).astype(a.dtype)  # noqa: E731
    return result._replace(
        x=jax.tree_util.tree_map(spoil, result.x),
        residual_norm=spoil(result.residual_norm),
        relative_residual=spoil(result.relative_residual),
        converged=result.converged & valid,
    )


def cg_solve(
    op: CurvatureOperator,
    b: Params,
    *,
    damping: float = 0.0,
    tol: float = 1e-5,
    maxiter: int | None = None,
    x0: Params | None = None,
) -> CGResult:
    """Solve (A + damping I) x = b by conjugate gradients (Hestenes and Stiefel 1952).

    The loop is Nocedal and Wright's Algorithm 5.2 with the stopping rule of
    ``jax.scipy.sparse.linalg.cg``, which it replaces so that the result can
    report how many iterations (products with A) it took.

    With A the Hessian or GGN and b the gradient, -x is the damped Newton
    step of Hessian-free optimization (Martens 2010, section 4).  CG needs
    A + damping I positive definite: use the GGN, or enough damping.

    Args:
      op: a ``CurvatureOperator``.
      b: the right-hand side, in the params' structure.
      damping: lambda >= 0, the Levenberg-Marquardt term: a Python or NumPy
        real, or a 0-d integer or floating array (a ``HessianFreeState``'s own damping).
      tol: relative residual ||r|| / ||b|| at which CG stops, in (0, 1).
      maxiter: the most CG iterations (default 10 P, jax's own).
      x0: a warm start (Martens 2010 section 4.5 starts from the last step).

    Returns:
      A ``CGResult``; check ``converged``.  Under your own ``jax.jit`` the
      arguments are traced and cannot be refused here: a non-finite ``b`` or
      ``x0``, a negative or non-finite damping, or a tol outside (0, 1) then
      gives x (every leaf) and the residuals NaN and ``converged`` False.

    Raises:
      ConfigError: ``op`` not a ``CurvatureOperator``; a damping, tol or maxiter out of range.
      ParamsError: ``b`` or ``x0`` not shaped like the params (names the first mismatching leaf).
      NonFiniteCurvatureError: ``b``, ``x0`` or the solution holds NaN or inf.
    """
    op = require_operator("cg_solve", op)
    check_vector("cg_solve", "b", b, op.params)
    require_finite("cg_solve", "b", b)
    if x0 is not None:
        check_vector("cg_solve", "x0", x0, op.params)
        require_finite("cg_solve", "x0", x0)  # before the solve, so a NaN start is not blamed on x
    damping, tol, maxiter = cg_arguments("cg_solve", damping, tol, maxiter)
    result = compiled(op, _cg_result, "maxiter")(op, b, x0, damping, tol, maxiter)
    require_finite("cg_solve", "x", result.x, "the solution x is not finite (NaN or inf) here")
    require_finite(
        "cg_solve",
        "residual",
        result.residual_norm,
        "CG's residual is not finite (NaN or inf): the curvature products are not finite at these "
        "params and data",
    )
    return result


def cg_arguments(
    where: str, damping: Any, tol: Any, maxiter: Any, prefix: str = ""
) -> tuple[float, float, int | None]:
    """Damping lambda finite >= 0, tolerance in (0, 1), an iteration cap >= 1 (or None)."""
    damping = real_scalar(where, "damping", damping, low=0.0)
    tol = real_scalar(where, f"{prefix}tol", tol, low=0.0, low_open=True)
    if not is_traced(tol) and tol >= 1:
        # The tolerance is relative to ||b||: x = 0 already has ||r|| = ||b||, so CG would stop at once.
        raise ConfigError(
            where,
            f"{prefix}tol must be < 1 (a residual relative to ||b||, met by x = 0 before any "
            f"iteration), got {tol!r}",
        )
    if maxiter is not None:
        maxiter = require_positive_int(where, f"{prefix}maxiter", maxiter)
    return damping, tol, maxiter


def real_scalar(where: str, name: str, value: Any, **bounds: Any) -> float | jax.Array:
    """A Python or NumPy real, or a 0-d integer or floating array (read as its value), range-checked.

    The value read is checked by ``require_number``.

    A traced 0-d array (a damping inside a user's jit) cannot be read and is
    returned as is; ``cg_solve`` then reports a bad one in its result.

    Args:
      where: the function checking, for the message.
      name: the argument's name, for the message.
      value: the argument.
      **bounds: ``require_number``'s range (``low``, ``low_open``, ...).
    """
    if isinstance(value, (np.ndarray, jax.Array)):
        # np.array(1) is the number 1, as the Python 1 that is accepted; a bool array is not a number.
        real = jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        if np.ndim(value) != 0 or not real:
            raise ConfigError(
                where,
                f"{name} must be a real number or a 0-d integer or floating array, got an array of "
                f"shape {tuple(np.shape(value))} ({value.dtype})",
            )
        if is_traced(value):
            return value
        value = float(value) if jnp.issubdtype(value.dtype, jnp.floating) else int(value)
    return require_number(where, name, value, **bounds)
