"""The eigenvalue density of a curvature operator by stochastic Lanczos quadrature (SLQ).

Golub and Meurant 1994 ("Matrices, moments and quadrature"): m Lanczos
steps from a unit vector v give the m-point Gauss quadrature of the measure
v^T delta(t - A) v, exact for polynomials of degree < 2m.  Averaged over
random probes, the quadratures estimate the whole spectral density, as
Ghorbani, Krishnan and Xiao (2019, "An investigation into neural net
optimization via Hessian eigenvalue density") do for network Hessians.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError
from purenet.curvature.base import NonFiniteCurvatureError, flatten_params
from purenet.curvature.eigen import initial_state, krylov_sizes, lanczos_step, tridiagonal
from purenet.curvature.operator import CurvatureOperator, compiled
from purenet.shapes import require_positive_int
from purenet.validate import require_number


class SpectralDensity(NamedTuple):
    """The eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, section 2).

    For each probe v (unit norm), m Lanczos steps give a Gauss quadrature
    ``sum_i weights_i delta(t - nodes_i)`` of the measure v^T delta(t - A) v;
    the density is their mean over probes.

    Attributes:
      nodes: (probes, m) Ritz values.
      weights: (probes, m) squared first components of T's eigenvectors; each row sums to 1.
      dim: P, so that ``dim * moment(1)`` estimates the trace.
    """

    nodes: jax.Array
    weights: jax.Array
    dim: int

    def moment(self, power: int) -> float:
        """The estimate of tr(A^power) / P; exact in expectation for power < 2m."""
        return float(jnp.mean(jnp.sum(self.weights * self.nodes**power, axis=1)))

    def default_sigma(self) -> float:
        """Gaussian width for ``evaluate``: 1% of the spectrum's range (at least 1e-6)."""
        return max(0.01 * float(jnp.max(self.nodes) - jnp.min(self.nodes)), 1e-6)

    def evaluate(self, grid: Any, sigma: float | None = None) -> np.ndarray:
        """The density smoothed by a Gaussian of width ``sigma``, at the points of ``grid``."""
        sigma = self.default_sigma() if sigma is None else sigma
        sigma = require_number("SpectralDensity.evaluate", "sigma", sigma, low=0.0, low_open=True)
        grid = _grid(grid)
        nodes = np.asarray(self.nodes, np.float64).reshape(-1)
        weights = np.asarray(self.weights, np.float64).reshape(-1) / self.nodes.shape[0]
        kernel = np.exp(-0.5 * ((grid - nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ weights


def _grid(grid: Any) -> np.ndarray:
    """The evaluation points: a non-empty one-dimensional array of finite reals, as a column."""
    try:
        points = np.asarray(grid, np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            "SpectralDensity.evaluate", f"grid must be an array of reals, got {grid!r:.80}"
        ) from None
    if points.ndim != 1 or points.size == 0 or not np.all(np.isfinite(points)):
        raise ConfigError(
            "SpectralDensity.evaluate",
            f"grid must be a non-empty 1-d array of finite points, got shape {points.shape}"
            + ("" if points.size == 0 or np.all(np.isfinite(points)) else " holding NaN or inf"),
        )
    return points[:, None]


def _quadrature(op: CurvatureOperator, starts: jax.Array, key: jax.Array, *, steps: int):
    """Each probe's Gauss quadrature: (nodes, weights, finite), stacked over the rows of ``starts``."""
    return compiled(op, _quadrature_loop, "steps")(op, starts, key, steps=steps)


def _quadrature_loop(op, starts, key, *, steps):
    matvec = op.flat_matvec()

    def one_probe(start, probe_key):
        state = initial_state(start, steps)
        state = jax.lax.fori_loop(0, steps, lambda _, s: lanczos_step(matvec, probe_key, s), state)
        nodes, vectors = jnp.linalg.eigh(tridiagonal(state.alphas, state.betas, state.step, 0.0))
        return nodes, vectors[0] ** 2, state.finite

    return jax.vmap(one_probe)(starts, jax.random.split(key, starts.shape[0]))


def spectral_density(
    op: CurvatureOperator,
    *,
    num_probes: int = 8,
    num_iterations: int | None = None,
    key: jax.Array | None = None,
) -> SpectralDensity:
    """The eigenvalue spectral density of a curvature operator by stochastic Lanczos quadrature.

    Ghorbani, Krishnan and Xiao (2019) run m = 90 steps from each of a few
    Gaussian probes; the probes run together, vectorized with ``jax.vmap``,
    so memory is num_probes x (num_iterations + 1) x P numbers.

    Args:
      op: a ``CurvatureOperator``.
      num_probes: independent random start vectors.
      num_iterations: Lanczos steps per probe, at most P; default min(P, 80).
      key: PRNG key for the probes.  Default ``PRNGKey(0)``: deterministic,
        so the same call gives the same density every time, which is what a
        measurement (a test, densities compared across training) wants.  Pass
        fresh keys for independent densities: repeating a call with the
        default key draws the same probes again.

    Returns:
      A ``SpectralDensity``; plot it with ``plot_spectral_density``.
    """
    num_probes = require_positive_int("spectral_density", "num_probes", num_probes)
    if num_iterations is None:
        num_iterations = min(op.dim, 80)
    _, steps = krylov_sizes("spectral_density", op.dim, 1, num_iterations, "num_iterations")
    key = jax.random.PRNGKey(0) if key is None else key
    probe_key, restart_key = jax.random.split(key)
    flat, _ = flatten_params(op.params)
    starts = jax.random.normal(probe_key, (num_probes, flat.size), flat.dtype)
    nodes, weights, finite = _quadrature(op, starts, restart_key, steps=steps)
    if not bool(jnp.all(finite)):
        raise NonFiniteCurvatureError("spectral_density", f"a {op.kind}-vector product was not finite")
    return SpectralDensity(nodes, weights, op.dim)
