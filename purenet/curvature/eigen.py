"""Extreme eigenpairs of a curvature operator by Lanczos with full reorthogonalization.

Golub and Van Loan, Matrix Computations, 4th ed., section 10.1: the
three-term recurrence builds an orthonormal Krylov basis Q and a tridiagonal
T = Q^T A Q whose eigenvalues (the Ritz values) converge to A's extreme
eigenvalues first.  Every step is reorthogonalized against the whole basis
(section 10.3.1), and the loop stops once each wanted Ritz pair meets the
residual estimate ``beta_j |s_{j,i}| <= tol |theta_i|``; the residuals
reported (and ``converged``) are then recomputed from the stored products,
since in float32 the estimate falls far below the truth.  The loop is a
device-resident ``lax.while_loop`` over flattened parameter vectors
(``jax.flatten_util.ravel_pytree``), with pytrees in and out.

The recurrence (``initial_state``, ``lanczos_step``, ``tridiagonal``) is
shared with stochastic Lanczos quadrature in ``density``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from purenet.core import ConfigError
from purenet.curvature.base import (
    NonFiniteCurvatureError,
    Params,
    check_vector,
    flatten_params,
    require_finite,
)
from purenet.curvature.operator import CurvatureOperator, compiled, require_host_call, require_operator
from purenet.shapes import require_positive_int

# --------------------------------------------------------------------------
# The recurrence
# --------------------------------------------------------------------------


class LanczosState(NamedTuple):
    """The Lanczos loop's carry."""

    basis: jax.Array  # (m + 1, P); rows beyond the current step are zero
    alphas: jax.Array  # (m,) diagonal of T
    betas: jax.Array  # (m,) betas[j] couples basis rows j and j + 1
    step: jax.Array  # how many steps are done
    norm: jax.Array  # running max of ||A q_j||, the scale for breakdown
    finite: jax.Array  # every product so far was finite
    converged: jax.Array
    products: jax.Array  # (m, P): the raw products A q_j, for true residuals; (0, P) where not kept


def _orthogonalize(basis: jax.Array, vectors: jax.Array) -> jax.Array:
    """One Gram-Schmidt pass: the rows of ``vectors`` projected off the rows of ``basis``.

    The rows go together so that the pass reads the basis, the loop's
    largest buffer, once for all of them: on a CPU that read is the cost.
    """
    return vectors - (basis.T @ (basis @ vectors.T)).T


def lanczos_step(matvec: Callable, key: jax.Array, state: LanczosState) -> LanczosState:
    """One step of Lanczos with full reorthogonalization; restarts on breakdown.

    The three-term recurrence removes the large components along q_j and
    q_{j-1} first, so that one full Gram-Schmidt pass over the basis then
    keeps it orthogonal to working precision (Golub and Van Loan, 10.3.1).
    """
    j = state.step
    q = state.basis[j]
    w = matvec(q)
    finite = state.finite & jnp.all(jnp.isfinite(w))
    w = w_raw = jnp.where(finite, w, 0.0)
    alpha = jnp.vdot(q, w)
    norm = jnp.maximum(state.norm, jnp.linalg.norm(w))
    previous_beta = jnp.where(j > 0, state.betas[j - 1], 0.0)
    w = w - alpha * q - previous_beta * state.basis[j - 1]
    # Breakdown: the Krylov space is invariant.  T is then block diagonal, and
    # a fresh direction orthogonal to the basis starts the next block.
    fresh = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
    w, fresh = _orthogonalize(state.basis, jnp.stack([w, fresh]))
    beta = jnp.linalg.norm(w)
    tiny = jnp.finfo(w.dtype).tiny
    broke = beta <= 10 * jnp.finfo(w.dtype).eps * jnp.maximum(norm, tiny)
    fresh = fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny)
    next_q = jnp.where(broke, fresh, w / jnp.maximum(beta, tiny))
    products = state.products
    if products.shape[0]:  # static: lanczos keeps them, density's quadrature does not
        products = products.at[j].set(w_raw)
    return state._replace(
        products=products,
        basis=state.basis.at[j + 1].set(next_q),
        alphas=state.alphas.at[j].set(alpha),
        betas=state.betas.at[j].set(jnp.where(broke, 0.0, beta)),
        step=j + 1,
        norm=norm,
        finite=finite,
    )


def initial_state(start: jax.Array, capacity: int, keep_products: bool = False) -> LanczosState:
    """A state with room for ``capacity`` steps, whose first basis vector is ``start`` normalized.

    ``keep_products`` keeps every raw product A q_j (another ``capacity`` x P
    numbers), from which ``lanczos`` computes the Ritz pairs' true residuals.
    """
    basis = jnp.zeros((capacity + 1, start.size), start.dtype).at[0].set(start / jnp.linalg.norm(start))
    zeros = jnp.zeros(capacity, start.dtype)
    scalar = jnp.array(0.0, start.dtype)
    products = jnp.zeros((capacity if keep_products else 0, start.size), start.dtype)
    return LanczosState(
        basis, zeros, zeros, jnp.array(0), scalar, jnp.array(True), jnp.array(False), products
    )


@functools.partial(jax.jit, static_argnames=("capacity",))
def _grow(state: LanczosState, *, capacity: int) -> LanczosState:
    """The same state with room for ``capacity`` steps (zero rows and entries appended)."""
    extra = capacity - state.alphas.shape[0]
    return state._replace(
        products=jnp.pad(state.products, ((0, extra), (0, 0))),
        basis=jnp.pad(state.basis, ((0, extra), (0, 0))),
        alphas=jnp.pad(state.alphas, (0, extra)),
        betas=jnp.pad(state.betas, (0, extra)),
    )


def tridiagonal(alphas: jax.Array, betas: jax.Array, steps: jax.Array, pad: jax.Array) -> jax.Array:
    """T of the first ``steps`` steps, padded to full size with ``pad`` on the diagonal (decoupled)."""
    m = alphas.shape[0]
    active = jnp.arange(m) < steps
    diagonal = jnp.where(active, alphas, pad)
    off = jnp.where(jnp.arange(m - 1) < steps - 1, betas[:-1], 0.0)
    return jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)


def krylov_sizes(
    where: str, dim: int, k: int, iterations: int | None, argument: str = "max_iterations"
) -> tuple[int, int]:
    """Check k and the iteration count against the dimension; the default count is min(P, max(10 k, 100))."""
    k = require_positive_int(where, "k", k)
    if k > dim:
        raise ConfigError(where, f"k must be at most the number of parameters ({dim}), got k={k}")
    if iterations is None:
        return k, min(dim, max(10 * k, 100))
    iterations = require_positive_int(where, argument, iterations)
    if not k <= iterations <= dim:
        raise ConfigError(
            where,
            f"{argument} must lie between k={k} and the number of parameters {dim}, got {iterations}",
        )
    return k, iterations


# --------------------------------------------------------------------------
# Ritz pairs and the stopping rule
# --------------------------------------------------------------------------


def _ritz(state: LanczosState, k: int, largest: bool):
    """The k wanted Ritz values, their coordinates in the basis, and residual bounds beta_j |s_{j,i}|."""
    m = state.alphas.shape[0]
    steps = state.step
    active = jnp.arange(m) < steps
    # Gershgorin bounds every Ritz value; pad the inactive block beyond it, on the side not wanted.
    radius = jnp.max(jnp.where(active, jnp.abs(state.alphas) + 2 * state.betas, 0.0))
    pad = -(2 * radius + 1) if largest else 2 * radius + 1
    values, vectors = jnp.linalg.eigh(tridiagonal(state.alphas, state.betas, steps, pad))
    order = jnp.argsort(-values if largest else values)[:k]
    values, vectors = values[order], vectors[:, order]
    last = jnp.take(vectors, steps - 1, axis=0)
    residuals = jnp.abs(jnp.take(state.betas, steps - 1) * last)
    return values, vectors, residuals


class Eigenpairs(NamedTuple):
    """Ritz pairs from ``lanczos``.

    Attributes:
      values: (k,) eigenvalues, largest first for ``which="top"``, smallest first for ``"bottom"``.
      vectors: the eigenvectors as a pytree of the params' structure, each
        leaf stacked on a leading axis of k; unit norm over the whole tree.
      residuals: (k,) the true residuals ||A y_i - theta_i y_i||, with A y_i
        formed from the products the loop computed (a fresh product differs
        only by the product's own rounding); a bound on each value's error.
      iterations: the Lanczos steps (= products) taken.
      converged: whether every true residual met ``tol`` before ``max_iterations``.
      estimates: (k,) the recurrence's residual estimates beta_j |s_{j,i}|,
        which the loop stops on.  In exact arithmetic they equal
        ``residuals``; in float32 they can fall far below them (2e-14
        against 1e-6 measured), which is why ``converged`` reads the true ones.
    """

    values: jax.Array
    vectors: Params
    residuals: jax.Array
    iterations: int
    converged: bool
    estimates: jax.Array


def _start_vector(where: str, op: CurvatureOperator, v0: Params | None) -> jax.Array | None:
    """``v0`` flattened after its checks, or None: the compiled run then draws the start itself."""
    if v0 is None:
        return None
    check_vector(where, "v0", v0, op.params)
    require_finite(where, "v0", v0)
    flat, _ = flatten_params(op.params)
    start = flatten_params(v0)[0].astype(flat.dtype)
    if not bool(jnp.any(start != 0)):
        raise ConfigError(where, "v0 must not be the zero vector")
    return start


def _converged(values: jax.Array, residuals: jax.Array, tol, norm: jax.Array | None = None) -> jax.Array:
    """Every residual within ``tol`` of its value (values near 0 measured against the largest).

    With ``norm`` (||A||, for true residuals): an eigenvalue at the rounding
    level of ||A|| (a zero of a low-rank operator) is converged once its
    residual is too, since no smaller one is computable in the dtype.
    """
    eps = jnp.finfo(values.dtype).eps
    scale = jnp.maximum(jnp.abs(values), eps ** (2 / 3) * jnp.max(jnp.abs(values)))
    within = residuals <= tol * scale
    if norm is not None:
        rounding = 100 * eps * norm
        within = within | ((jnp.abs(values) <= rounding) & (residuals <= rounding))
    return jnp.all(within)


def _lanczos_loop(op, state, key, tol, *, k, largest):
    """Continue Lanczos until converged (by the recurrence's estimates), non-finite, or out of room."""
    matvec = op.flat_matvec()
    capacity = state.alphas.shape[0]

    def keep_going(state):
        return (state.step < capacity) & state.finite & ~state.converged

    def step(state):
        state = lanczos_step(matvec, key, state)
        values, _, estimates = _ritz(state, k, largest)
        return state._replace(converged=(state.step >= k) & _converged(values, estimates, tol))

    return jax.lax.while_loop(keep_going, step, state)


def _summary(op, state, tol, *, k, largest):
    """The Ritz pairs, unflattened, with true residuals from the stored products: all on the device."""
    values, coordinates, estimates = _ritz(state, k, largest)
    vectors = coordinates.T @ state.basis[:-1]
    images = coordinates.T @ state.products  # A y_i = sum_j s_ji A q_j
    residuals = jnp.linalg.norm(images - values[:, None] * vectors, axis=1)
    _, unflatten = flatten_params(op.params)
    converged = state.converged & _converged(values, residuals, tol, state.norm)
    return values, jax.vmap(unflatten)(vectors), residuals, estimates, converged


def _first_run(op, start, key, tol, *, k, largest, capacity):
    """From the start vector (drawn here from ``key`` when None) to the Ritz pairs, in one compiled call."""
    start_key, restart_key = jax.random.split(key)
    if start is None:
        flat, _ = flatten_params(op.params)
        start = jax.random.normal(start_key, flat.shape, flat.dtype)
    state = initial_state(start, capacity, keep_products=True)
    state = _lanczos_loop(op, state, restart_key, tol, k=k, largest=largest)
    return state, _summary(op, state, tol, k=k, largest=largest)


def _continued_run(op, state, key, tol, *, k, largest):
    restart_key = jax.random.split(key)[1]
    state = _lanczos_loop(op, state, restart_key, tol, k=k, largest=largest)
    return state, _summary(op, state, tol, k=k, largest=largest)


def _run_growing(op, start, key, tol, *, k, largest, max_iterations):
    """Run in a basis that doubles as needed: each step reads the whole basis, so keep it short.

    Each capacity compiles once (and is cached), so there are at most
    log2(max_iterations) compilations per loss function; a run that fits
    its first basis (16 steps, or 2k) is one compiled call and one transfer
    of its flags.  A non-finite product stops the run and is raised, naming the step.
    """
    capacity = min(max_iterations, max(2 * k, 16))
    first = compiled(op, _first_run, "k", "largest", "capacity")
    state, summary = first(op, start, key, tol, k=k, largest=largest, capacity=capacity)
    while True:
        finite, converged, steps = jax.device_get((state.finite, state.converged, state.step))
        if not finite:
            raise NonFiniteCurvatureError(
                "lanczos", f"the {op.kind}-vector product was not finite at step {int(steps)}"
            )
        if converged or capacity >= max_iterations:
            return summary, int(steps)
        capacity = min(2 * capacity, max_iterations)
        state = _grow(state, capacity=capacity)
        state, summary = compiled(op, _continued_run, "k", "largest")(
            op, state, key, tol, k=k, largest=largest
        )


def lanczos(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: str = "top",
    tol: float = 1e-6,
    max_iterations: int | None = None,
    key: jax.Array | None = None,
    v0: Params | None = None,
) -> Eigenpairs:
    """The k largest (``"top"``) or smallest (``"bottom"``) eigenpairs of a curvature operator.

    Lanczos with full reorthogonalization (Golub and Van Loan, section 10.1)
    as jit-compiled ``lax.while_loop``s on the device, in a basis of 16
    vectors that doubles whenever it fills; a run that fits the first basis
    (start vector, loop and Ritz pairs) is one compiled call.  It stops once
    every wanted Ritz pair's residual estimate beta_j |s_{j,i}| is at most
    ``tol * |theta_i|``, or after ``max_iterations`` products, and then
    reports the true residuals ||A y - theta y|| (an error bound on theta_i;
    the actual error is usually the square of it over the spectral gap),
    which ``converged`` reads.  Memory: up to 2 max_iterations x P numbers
    (the basis and the products, kept for the true residuals).

    Args:
      op: a ``CurvatureOperator``.
      k: how many eigenpairs, 1 <= k <= P.
      which: ``"top"`` (largest, algebraically) or ``"bottom"`` (smallest).
      tol: relative residual at which to stop.
      max_iterations: the most products, k <= max_iterations <= P; default
        ``min(P, max(10 k, 100))``.
      key: PRNG key for the start vector and for restarts after breakdown.
        Default ``PRNGKey(0)``: deterministic, so the same call gives the same
        eigenpairs every time, as a measurement (a test, a sharpness curve)
        wants; converged values hardly depend on the start.  Pass other keys
        to see how much they do at a loose ``tol``.
      v0: a start vector in the params' structure instead of a random one.

    Returns:
      ``Eigenpairs``; check ``converged`` (or ``residuals``) before trusting
      a value to ``tol``.  In float32 the true residuals cannot fall much
      below 1e-7 ||A||, so a smaller ``tol`` ends unconverged: ask in
      float64.  A residual bound says that *some* eigenvalue lies that
      close, not that it is the k-th largest: with a loose ``tol`` an early
      Ritz value can still be short of the top one.

    Raises:
      ConfigError: k or max_iterations out of range, an unknown ``which``, or
        a call inside ``jax.jit`` (traced params, data, key or v0).
      ParamsError: a ``v0`` not shaped like the params (names the first mismatching leaf).
      NonFiniteCurvatureError: a product held NaN or inf (names the step).
    """
    op = require_operator("lanczos", op)
    require_host_call("lanczos", op, key=key, v0=v0)
    k, max_iterations = krylov_sizes("lanczos", op.dim, k, max_iterations)
    if which not in ("top", "bottom"):
        raise ConfigError("lanczos", f"which must be 'top' or 'bottom', got {which!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    start = _start_vector("lanczos", op, v0)
    (values, vectors, residuals, estimates, converged), steps = _run_growing(
        op, start, key, tol, k=k, largest=which == "top", max_iterations=max_iterations
    )
    return Eigenpairs(values, vectors, residuals, steps, bool(converged), estimates)
