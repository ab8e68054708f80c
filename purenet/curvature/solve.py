"""Conjugate gradients on a curvature operator, and the Hessian-free optimization step built on it.

``cg_solve`` solves (A + lambda I) x = g by conjugate gradients (Hestenes and
Stiefel 1952; Nocedal and Wright, "Numerical Optimization", Algorithm 5.2);
with A the Hessian or the Gauss-Newton matrix and g the gradient, -x is the
damped Newton step of Hessian-free optimization (Martens 2010, "Deep
learning via Hessian-free optimization"), which ``make_hessian_free_step``
takes with Levenberg-Marquardt damping (section 4.1) and CG warm starts
(section 4.5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from purenet.compiled import cached
from purenet.core import ConfigError, Layer
from purenet.curvature.base import (
    METHODS,
    Params,
    check_vector,
    require_finite,
    tree_axpy,
    tree_vdot,
)
from purenet.curvature.operator import CurvatureOperator, compiled, model_functions
from purenet.shapes import require_positive_int
from purenet.validate import require_number


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


def _cg(op, b, x0, damping, tol, maxiter) -> tuple[CGResult, Params]:
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
    return _cg(op, b, x0, damping, tol, maxiter)[0]


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
      damping: lambda >= 0, the Levenberg-Marquardt term.
      tol: relative residual ||r|| / ||b|| at which CG stops.
      maxiter: the most CG iterations (default 10 P, jax's own).
      x0: a warm start (Martens 2010 section 4.5 starts from the last step).

    Returns:
      A ``CGResult``; check ``converged``.

    Raises:
      ParamsError: ``b`` or ``x0`` not shaped like the params (names the first mismatching leaf).
      NonFiniteCurvatureError: ``b`` or the solution holds NaN or inf.
    """
    check_vector("cg_solve", "b", b, op.params)
    require_finite("cg_solve", "b", b)
    if x0 is not None:
        check_vector("cg_solve", "x0", x0, op.params)
    damping, tol, maxiter = _cg_arguments("cg_solve", damping, tol, maxiter)
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


def _cg_arguments(
    where: str, damping: Any, tol: Any, maxiter: Any, prefix: str = ""
) -> tuple[float, float, int | None]:
    """Damping lambda finite >= 0, tolerance finite > 0, an iteration cap >= 1 (or None)."""
    damping = require_number(where, "damping", damping, low=0.0)
    tol = require_number(where, f"{prefix}tol", tol, low=0.0, low_open=True)
    if maxiter is not None:
        maxiter = require_positive_int(where, f"{prefix}maxiter", maxiter)
    return damping, tol, maxiter


class HessianFreeState(NamedTuple):
    """What a Hessian-free step carries: the params, the damping and the last CG solution (a warm start)."""

    params: Params
    damping: jax.Array
    direction: Params


class HessianFreeInfo(NamedTuple):
    """What one Hessian-free step did.

    Attributes:
      loss: the cost before the step.
      new_loss: the cost at the proposed point.
      reduction_ratio: rho = (new_loss - loss) / (predicted change by the quadratic model).
      accepted: whether the step lowered the cost (otherwise the params stay).
      cg_relative_residual: how well CG solved its system.
      cg_iterations: the CG iterations (curvature products) the solve took.
    """

    loss: jax.Array
    new_loss: jax.Array
    reduction_ratio: jax.Array
    accepted: jax.Array
    cg_relative_residual: jax.Array
    cg_iterations: jax.Array


def make_hessian_free_step(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    *,
    curvature: str = "ggn",
    cg_tol: float = 1e-4,
    cg_maxiter: int = 50,
) -> tuple[Callable, Callable]:
    """A jit-compiled damped Newton step by CG (Hessian-free optimization, Martens 2010).

    Each step solves (A + lambda I) d = g by ``cg_solve`` from the last d,
    proposes theta - d, keeps it only if the cost falls, and adapts lambda by
    the Levenberg-Marquardt rule of section 4.1: times 2/3 when the reduction
    ratio rho > 3/4, times 3/2 when rho < 1/4.

    Args:
      model: the network.
      loss: its mean loss ``loss(outputs, targets)``.
      curvature: ``"ggn"`` (positive semi-definite, Martens' choice) or ``"hessian"``.
      cg_tol: CG's relative tolerance per step.
      cg_maxiter: CG's iteration cap per step.

    Returns:
      ``(init, step)``: ``init(params, damping=1.0) -> HessianFreeState`` and
      ``step(state, x, y) -> (state, HessianFreeInfo)``.  The same arguments
      give the same pair again (purenet's bounded cache), so a second call
      compiles nothing.
    """
    if curvature not in ("hessian", "ggn"):
        raise ConfigError(
            "make_hessian_free_step", f"curvature must be 'hessian' or 'ggn', got {curvature!r}"
        )
    _, cg_tol, cg_maxiter = _cg_arguments("make_hessian_free_step", 0.0, cg_tol, cg_maxiter, prefix="cg_")
    return _hessian_free_pair(model, loss, curvature, cg_tol, cg_maxiter)


def _init_hessian_free(params: Params, damping: float = 1.0) -> HessianFreeState:
    require_finite("make_hessian_free_step", "params", params)
    damping = require_number("make_hessian_free_step", "damping", damping, low=0.0)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return HessianFreeState(params, jnp.asarray(damping, jnp.result_type(float)), zeros)


@cached
def _hessian_free_pair(model, loss, curvature, cg_tol, cg_maxiter) -> tuple[Callable, Callable]:
    functions = model_functions(model, loss, None)
    if curvature == "ggn":
        kind, losses, method = "ggn", (functions.outputs, functions.loss), None
    else:
        kind, losses, method = "hessian", (functions.cost,), METHODS[0]

    @jax.jit
    def step(state: HessianFreeState, x, y) -> tuple[HessianFreeState, HessianFreeInfo]:
        batch = (x, y)
        value, grads = jax.value_and_grad(functions.cost)(state.params, batch)
        op = CurvatureOperator(kind, losses, state.params, batch, x.shape[0], method)
        solved, curvature_times_step = _cg(op, grads, state.direction, state.damping, cg_tol, cg_maxiter)
        proposal = jax.tree_util.tree_map(jnp.subtract, state.params, solved.x)
        new_value = functions.cost(proposal, batch)
        # The quadratic model's change for the step -d: -g.d + d.(A d) / 2 (undamped A, as Martens).
        predicted = -tree_vdot(grads, solved.x) + 0.5 * tree_vdot(solved.x, curvature_times_step)
        rho = (new_value - value) / jnp.where(predicted < 0, predicted, -jnp.finfo(value.dtype).tiny)
        accepted = jnp.isfinite(new_value) & (new_value < value)
        damping = jnp.where(rho > 0.75, state.damping * 2 / 3, state.damping)
        damping = jnp.where((rho < 0.25) | ~accepted, damping * 1.5, damping)
        keep = lambda new, old: jnp.where(accepted, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep, proposal, state.params)
        direction = jax.tree_util.tree_map(keep, solved.x, state.direction)
        info = HessianFreeInfo(value, new_value, rho, accepted, solved.relative_residual, solved.iterations)
        return HessianFreeState(params, damping, direction), info

    return _init_hessian_free, step
