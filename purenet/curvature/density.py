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

from purenet.core import ConfigError, ShapeError
from purenet.curvature.base import NonFiniteCurvatureError, flatten_params
from purenet.curvature.eigen import initial_state, krylov_sizes, lanczos_step, tridiagonal
from purenet.curvature.operator import CurvatureOperator, compiled, require_host_call, require_operator
from purenet.shapes import require_positive_int
from purenet.validate import DataError, is_traced, require_number


class SpectralDensity(NamedTuple):
    """The eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, section 2).

    For each probe v (unit norm), m Lanczos steps give a Gauss quadrature
    ``sum_i weights_i delta(t - nodes_i)`` of the measure v^T delta(t - A) v;
    the density is their mean over probes.

    A hand-built density is checked where it is read (``moment``,
    ``default_sigma``, ``evaluate``, ``plot_spectral_density``), not when
    built, since jax rebuilds this pytree with placeholders and tracers:
    nodes and weights of one shape (probes, m), finite, weights >= 0 with
    each probe's row summing to 1 (Golub and Meurant 1994: the weights of a
    Gauss quadrature of a probability measure), and ``dim`` a positive integer.

    Attributes:
      nodes: (probes, m) Ritz values.
      weights: (probes, m) squared first components of T's eigenvectors; each row sums to 1.
      dim: P, so that ``dim * moment(1)`` estimates the trace.
    """

    nodes: jax.Array
    weights: jax.Array
    dim: int

    def moment(self, power: int) -> float:
        """The estimate of tr(A^power) / P; exact in expectation for power < 2m.

        Args:
          power: a non-negative integer p.
        """
        nodes, weights = checked_density("SpectralDensity.moment", self)
        power = int(require_number("SpectralDensity.moment", "power", power, low=0, integer=True))
        return float(np.mean(np.sum(weights * nodes**power, axis=1)))

    def default_sigma(self) -> float:
        """Gaussian width for ``evaluate``: 1% of the spectrum's range (at least 1e-6)."""
        return _default_sigma(checked_density("SpectralDensity.default_sigma", self)[0])

    def evaluate(self, grid: Any, sigma: float | None = None) -> np.ndarray:
        """The density smoothed by a Gaussian of width ``sigma``, at the points of ``grid``.

        Args:
          grid: a non-empty 1-d array of finite points.
          sigma: the Gaussian's width, > 0; default ``default_sigma()``.
        """
        nodes, weights = checked_density("SpectralDensity.evaluate", self)
        sigma = _default_sigma(nodes) if sigma is None else sigma
        sigma = require_number("SpectralDensity.evaluate", "sigma", sigma, low=0.0, low_open=True)
        grid = _grid(grid)
        weights = weights.reshape(-1) / nodes.shape[0]  # the mean over probes
        with np.errstate(over="ignore"):  # far from a node (or a tiny sigma) the kernel is exp(-inf) = 0
            distance = ((grid - nodes.reshape(-1)) / sigma) ** 2
        kernel = np.exp(-0.5 * distance) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ weights


def _default_sigma(nodes: np.ndarray) -> float:
    return max(0.01 * float(nodes.max() - nodes.min()), 1e-6)


def checked_density(where: str, density: SpectralDensity, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A density's (nodes, weights) as float64 (probes, m) arrays, refused by field if they cannot be one.

    Args:
      where: the function reading the density, for the message.
      density: the ``SpectralDensity``.
      name: how the message calls the density (``"densities['a']"``); fields are ``name.nodes``.
    """
    prefix, label = (f"{name}.", name) if name else ("", "the density")
    nodes, weights = (
        _field(where, prefix + field, getattr(density, field)) for field in ("nodes", "weights")
    )
    if nodes.ndim != 2 or nodes.size == 0:
        raise ShapeError(
            where,
            f"{prefix}nodes must have shape (probes, m) with probes, m >= 1, got shape {nodes.shape}"
            + (" (one probe is shape (1, m))" if nodes.ndim == 1 else ""),
        )
    if weights.shape != nodes.shape:
        raise ShapeError(where, f"{prefix}weights must have nodes' shape {nodes.shape}, got {weights.shape}")
    for field, values in (("nodes", nodes), ("weights", weights)):
        if not np.all(np.isfinite(values)):
            raise DataError(where, f"{label} holds NaN or inf in its {field}")
    with np.errstate(over="ignore"):  # the overflow is what is being checked
        span = nodes.max() - nodes.min()
    if not np.isfinite(span):  # a range no float64 grid or width can cover
        raise DataError(
            where, f"the nodes of {label} span [{nodes.min():g}, {nodes.max():g}], a range that overflows"
        )
    _check_weights(where, prefix, weights, getattr(density.weights, "dtype", np.float64))
    checked_dim(where, prefix + "dim", density.dim)
    return nodes, weights


def checked_dim(where: str, field: str, dim: Any) -> int:
    """A density's P as an int: a positive Python or NumPy integer, or a concrete 0-d integer array.

    A checkpoint round trip, ``tree_map(np.asarray, density)`` or
    ``jnp.asarray`` turn the int into a 0-d array: the same P, so accepted.

    Args:
      where: the function reading the density, for the message.
      field: how the message names the field (``"dim"``, ``"densities['a'].dim"``).
      dim: the value.
    """
    if is_traced(dim):
        raise ConfigError(where, f"{field} is traced: a SpectralDensity is read on the host, outside jax.jit")
    if isinstance(dim, (np.ndarray, jax.Array)) and dim.ndim == 0 and jnp.issubdtype(dim.dtype, jnp.integer):
        dim = int(dim)  # bool arrays are not integer-typed, so they stay refused below
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(where, f"{field} must be a positive integer (P), got {dim!r}")
    return int(dim)


def _field(where: str, field: str, value: Any) -> np.ndarray:
    """One field as a concrete float64 array; a tracer (read inside jit) or a non-number is refused."""
    if is_traced(value):
        raise ConfigError(where, f"{field} is traced: a SpectralDensity is read on the host, outside jax.jit")
    try:
        return np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ConfigError(where, f"{field} must be an array of reals, got {value!r:.80}") from None


def _check_weights(where: str, prefix: str, weights: np.ndarray, dtype: Any) -> None:
    """Weights >= 0, each probe's row summing to 1 within rounding of the dtype they were computed in."""
    if weights.min() < 0:
        raise DataError(
            where, f"{prefix}weights must be >= 0 (Gauss quadrature weights), got {weights.min():g}"
        )
    sums = weights.sum(axis=1)
    eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else np.finfo(np.float64).eps
    # Each row is the squared first components of an orthogonal matrix's columns: 1 up to rounding.
    tolerance = max(1e-3, 8 * eps * weights.shape[1])
    if np.any(np.abs(sums - 1) > tolerance):
        raise DataError(
            where,
            f"each probe's {prefix}weights must sum to 1 (a quadrature of a unit vector's measure), "
            f"got sums from {sums.min():g} to {sums.max():g}",
        )


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

    Raises:
      ConfigError: num_probes or num_iterations out of range, or a call
        inside ``jax.jit`` (the loop's flags are read on the host).
    """
    op = require_operator("spectral_density", op)
    require_host_call("spectral_density", op, key=key)
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
