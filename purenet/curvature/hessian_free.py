"""The Hessian-free optimization step (Martens 2010, "Deep learning via Hessian-free optimization").

Each step solves the damped Newton system (A + lambda I) d = g by ``cg_solve``'s
loop from the last d (section 4.5), proposes theta - d, keeps it only if the
cost falls, and adapts lambda by the Levenberg-Marquardt rule of section 4.1.

Martens' rule multiplies lambda by 2/3 or 3/2 and sets no bounds; on its own
it has two fixed points that stall training while looking like progress: 0
(0 x 3/2 = 0: every step is then rejected forever) and, on a converged
problem where every step is rejected, infinity (after a few hundred steps,
and then every new batch gives NaN).  So lambda is kept in ``DAMPING_RANGE``,
and a step whose predicted change is below the loss's rounding, which the
rule cannot judge, lowers lambda instead of raising it: otherwise a converged
problem drives lambda to the ceiling, where the steps on a new batch are too
short to measure and lambda never comes down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purenet.compiled import cached
from purenet.core import ConfigError, Layer, describe_tree
from purenet.curvature.base import METHODS, Params, require_finite, tree_vdot
from purenet.curvature.operator import CurvatureOperator, model_functions, require_labels
from purenet.curvature.solve import cg_and_product, cg_arguments, real_scalar
from purenet.validate import is_traced

WHERE = "make_hessian_free_step"
STEP = "hessian-free step"  # the ``step`` that make_hessian_free_step returns
# The floor and ceiling of lambda; the 3/2 and 2/3 factors of Martens' rule move it anywhere between.
DAMPING_RANGE = (1e-8, 1e8)


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
    ratio rho > 3/4, times 3/2 when rho < 1/4 (or the step is rejected),
    kept in ``DAMPING_RANGE`` = [1e-8, 1e8] so that neither factor stalls it
    at 0 or overflows it to infinity; a step whose predicted change is below
    the loss's rounding (100 eps |loss|), too short for rho to mean anything,
    counts as rho > 3/4.

    Args:
      model: the network, a purenet ``Layer``.
      loss: its mean loss, a callable ``loss(outputs, targets)``.
      curvature: ``"ggn"`` (positive semi-definite, Martens' choice) or ``"hessian"``.
      cg_tol: CG's relative tolerance per step, in (0, 1).
      cg_maxiter: CG's iteration cap per step.

    Returns:
      ``(init, step)``: ``init(params, damping=1.0) -> HessianFreeState``,
      damping in [1e-8, 1e8], and ``step(state, x, y) -> (state,
      HessianFreeInfo)``, which calls the jit-compiled step.  The same
      arguments give the same pair again (purenet's bounded cache), so a
      second call compiles nothing.

    Raises:
      ConfigError: ``model`` not a purenet ``Layer`` or ``loss`` not callable;
        from ``init``, a damping outside [1e-8, 1e8]; from
        ``step``, a state that is not ``init``'s ``HessianFreeState``.
      NonFiniteCurvatureError: from ``step``, ``x`` or ``y`` holding NaN or
        inf, or a loss that is not finite at the state's params.
      DataError: from ``step``, class labels ``y`` outside [0, classes).
    """
    _check_model_and_loss(model, loss)
    if curvature not in ("hessian", "ggn"):
        raise ConfigError(WHERE, f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    _, cg_tol, cg_maxiter = cg_arguments(WHERE, 0.0, cg_tol, cg_maxiter, prefix="cg_")
    return _hessian_free_pair(model, loss, curvature, cg_tol, cg_maxiter)


def _check_model_and_loss(model: Any, loss: Any) -> None:
    """A purenet Layer and a callable loss, checked here: the step would fail on them with bare errors."""
    if not isinstance(model, Layer):
        raise ConfigError(
            WHERE,
            "model must be a purenet Layer (pn.Dense, say), whose apply(params, x) the "
            f"step calls, got {describe_tree(model)}",
        )
    if not callable(loss):
        raise ConfigError(
            WHERE,
            "loss must be callable as loss(outputs, targets) -> scalar (pn.mean_squared_error, say), "
            f"got {describe_tree(loss)} ({loss!r:.40})",
        )


def _init_hessian_free(params: Params, damping: float = 1.0) -> HessianFreeState:
    require_finite(WHERE, "params", params)
    damping = _checked_damping(WHERE, "damping", damping)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return HessianFreeState(params, jnp.asarray(damping, jnp.result_type(float)), zeros)


def _checked_damping(where: str, name: str, damping: Any) -> float | jax.Array:
    """A finite damping >= 0 (the message every damping check gives), then within ``DAMPING_RANGE``."""
    damping = real_scalar(where, name, damping, low=0.0)
    low, high = DAMPING_RANGE
    # Compared as float32 bounds: the state holds lambda in float32, where 1e-8 rounds to just below 1e-8.
    if not is_traced(damping) and not float(np.float32(low)) <= damping <= float(np.float32(high)):
        raise ConfigError(
            where,
            f"{name} must lie in [{low:g}, {high:g}]: the Levenberg-Marquardt rule (Martens 2010, "
            f"section 4.1) scales it by 2/3 and 3/2, so 0 would never move; got {damping!r}",
        )
    return damping


@cached
def _hessian_free_pair(model, loss, curvature, cg_tol, cg_maxiter) -> tuple[Callable, Callable]:
    functions = model_functions(model, loss, None)
    if curvature == "ggn":
        kind, losses, method = "ggn", (functions.outputs, functions.loss), None
    else:
        kind, losses, method = "hessian", (functions.cost,), METHODS[0]

    @jax.jit
    def compiled_step(state: HessianFreeState, x, y) -> tuple[HessianFreeState, HessianFreeInfo]:
        batch = (x, y)
        value, grads = jax.value_and_grad(functions.cost)(state.params, batch)
        op = CurvatureOperator(kind, losses, state.params, batch, x.shape[0], method)
        solved, curvature_times_step = cg_and_product(
            op, grads, state.direction, state.damping, cg_tol, cg_maxiter
        )
        proposal = jax.tree_util.tree_map(jnp.subtract, state.params, solved.x)
        new_value = functions.cost(proposal, batch)
        # The quadratic model's change for the step -d: -g.d + d.(A d) / 2 (undamped A, as Martens).
        predicted = -tree_vdot(grads, solved.x) + 0.5 * tree_vdot(solved.x, curvature_times_step)
        rho = (new_value - value) / jnp.where(predicted < 0, predicted, -jnp.finfo(value.dtype).tiny)
        accepted = jnp.isfinite(new_value) & (new_value < value)
        damping = _adapted_damping(state.damping, rho, accepted, _measurable(predicted, value))
        keep = lambda new, old: jnp.where(accepted, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep, proposal, state.params)
        direction = jax.tree_util.tree_map(keep, solved.x, state.direction)
        info = HessianFreeInfo(value, new_value, rho, accepted, solved.relative_residual, solved.iterations)
        return HessianFreeState(params, damping, direction), info

    classes: dict = {}  # the model's class count per input feature shape, traced once each

    def step(state: HessianFreeState, x: Any, y: Any) -> tuple[HessianFreeState, HessianFreeInfo]:
        _check_state(state)
        require_finite(STEP, "x", x)
        require_finite(STEP, "y", y)
        require_labels(STEP, model, loss, state.params, x, y, classes)
        new_state, info = compiled_step(state, x, y)
        # A non-finite loss rejects every step and grows lambda forever: say so instead.
        require_finite(
            STEP,
            "loss",
            info.loss,
            "the loss is not finite (NaN or inf) at the state's params on this batch",
        )
        return new_state, info

    return _init_hessian_free, step


def _measurable(predicted: jax.Array, value: jax.Array) -> jax.Array:
    """Whether the model's predicted change is above the rounding of the loss, so that rho means something.

    Below it (a converged problem, or lambda so large that the step is
    shorter than the loss's resolution), new_loss - loss is rounding noise:
    Martens' rule would read it as a failed step and raise lambda forever,
    at the ceiling as at infinity, and the next batch could never move it.
    """
    return jnp.abs(predicted) > 100 * jnp.finfo(value.dtype).eps * jnp.abs(value)


def _adapted_damping(damping: jax.Array, rho: jax.Array, accepted: jax.Array, measurable: jax.Array):
    """Martens 2010, section 4.1: lambda x 2/3 when rho > 3/4, x 3/2 when rho < 1/4 or rejected; clipped.

    An unmeasurable change (``_measurable``) counts as a step too short to test: lambda x 2/3.
    Returns the new lambda, within ``DAMPING_RANGE``.
    """
    damping = jnp.where((rho > 0.75) | ~measurable, damping * 2 / 3, damping)
    damping = jnp.where(measurable & ((rho < 0.25) | ~accepted), damping * 1.5, damping)
    return jnp.clip(damping, *DAMPING_RANGE)


def _check_state(state: Any) -> None:
    """``state`` is the ``HessianFreeState`` from ``init`` (or the last step), with a damping in range."""
    if not isinstance(state, HessianFreeState):
        raise ConfigError(
            STEP,
            "state must be the HessianFreeState from init(params) or the last step, as in "
            f"step(state, x, y), got {describe_tree(state)}",
        )
    if not is_traced(state.damping):
        _checked_damping(STEP, "state.damping", np.asarray(state.damping))
