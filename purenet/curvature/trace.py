"""Stochastic trace estimators of a curvature operator: Hutchinson and Hutch++.

- Hutchinson (1989, "A stochastic estimator of the trace of the influence
  matrix for Laplacian smoothing splines"): tr(A) = E[z^T A z] for
  Rademacher z.
- Hutch++ (Meyer, Musco, Musco and Woodruff 2021, "Hutch++: optimal
  stochastic trace estimation", Algorithm 1): the trace of a low-rank sketch
  exactly, plus Hutchinson on the rest, so that the error falls as
  1/num_matvecs instead of 1/sqrt(num_matvecs) on a quickly decaying spectrum.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from purenet.core import ConfigError
from purenet.curvature.base import NonFiniteCurvatureError, flatten_params
from purenet.curvature.operator import CurvatureOperator, compiled, require_host_call, require_operator
from purenet.shapes import require_positive_int


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
      value: the estimate of tr(A).
      standard_error: its standard error from the spread of the probes
        (Hutchinson), or of the residual part's probes (Hutch++).
      num_matvecs: the products spent.
    """

    value: float
    standard_error: float
    num_matvecs: int


def _standard_error(forms: jax.Array) -> float:
    """The standard error of the mean of the probes' quadratic forms (inf for a single probe)."""
    count = forms.shape[0]
    return float(jnp.std(forms, ddof=1)) / math.sqrt(count) if count > 1 else math.inf


def _require_finite_products(where: str, op: CurvatureOperator, *values: jax.Array) -> None:
    if not all(bool(jnp.all(jnp.isfinite(value))) for value in values):
        raise NonFiniteCurvatureError(where, f"a {op.kind}-vector product was not finite")


def _quadratic_forms(op, probes):
    matvec = op.flat_matvec()
    return jax.vmap(lambda z: jnp.vdot(z, matvec(z)))(probes)


def hutchinson_trace(
    op: CurvatureOperator, *, num_probes: int = 100, key: jax.Array | None = None
) -> TraceEstimate:
    """tr(A) ~ mean of z^T A z over Rademacher probes z (Hutchinson 1989).

    Unbiased, with variance 2 sum_{i != j} A_ij^2 per probe.
    The probes' products run vectorized (``jax.vmap``): memory num_probes x P.

    Args:
      op: a ``CurvatureOperator``.
      num_probes: how many Rademacher probes (= products).
      key: PRNG key for the probes.  Default ``PRNGKey(0)``: deterministic,
        so the same call gives the same estimate every time, which is what a
        measurement wants.  Pass fresh keys for independent estimates:
        repeating a call with the default key draws the same probes, so
        averaging such calls does not shrink the error.

    Returns:
      A ``TraceEstimate`` with the probes' standard error.

    Raises:
      ConfigError: a count out of range, or a call inside ``jax.jit`` (the
        estimate is returned as Python floats, read on the host).
    """
    op = require_operator("hutchinson_trace", op)
    require_host_call("hutchinson_trace", op, key=key)
    num_probes = require_positive_int("hutchinson_trace", "num_probes", num_probes)
    flat, _ = flatten_params(op.params)
    key = jax.random.PRNGKey(0) if key is None else key
    probes = jax.random.rademacher(key, (num_probes, flat.size), dtype=flat.dtype)
    forms = compiled(op, _quadratic_forms)(op, probes)
    _require_finite_products("hutchinson_trace", op, forms)
    return TraceEstimate(float(jnp.mean(forms)), _standard_error(forms), num_probes)


def _hutchpp(op, sketch, probes):
    matmat = jax.vmap(op.flat_matvec())
    basis, _ = jnp.linalg.qr(matmat(sketch.T).T)  # (P, s): an orthonormal basis of range(A S)
    top = jnp.trace(basis.T @ matmat(basis.T).T)
    deflated = probes - basis @ (basis.T @ probes)
    forms = jnp.sum(deflated * matmat(deflated.T).T, axis=0)
    return top, forms


def hutchpp_trace(
    op: CurvatureOperator, *, num_matvecs: int = 99, key: jax.Array | None = None
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021, Algorithm 1): exact trace on a low-rank sketch plus Hutchinson on the rest.

    With s = num_matvecs // 3: Q = orth(A S) for a Rademacher S of s columns
    gives tr(Q^T A Q) exactly, and Hutchinson with the remaining
    num_matvecs - 2 s probes, projected off Q, estimates the rest.  For a
    matrix with quickly decaying eigenvalues (a network's Hessian) the error
    falls as 1/num_matvecs rather than Hutchinson's 1/sqrt(num_matvecs).

    Args:
      op: a ``CurvatureOperator``.
      num_matvecs: the products to spend, at least 3.
      key: PRNG key for the sketch and the probes.  Default ``PRNGKey(0)``:
        deterministic, as for ``hutchinson_trace``; pass fresh keys for
        independent estimates.

    Returns:
      A ``TraceEstimate``; its standard error is that of the residual part.

    Raises:
      ConfigError: a count out of range, or a call inside ``jax.jit`` (the
        estimate is returned as Python floats, read on the host).
    """
    op = require_operator("hutchpp_trace", op)
    require_host_call("hutchpp_trace", op, key=key)
    num_matvecs = require_positive_int("hutchpp_trace", "num_matvecs", num_matvecs)
    if num_matvecs < 3:
        raise ConfigError("hutchpp_trace", f"num_matvecs must be at least 3, got {num_matvecs}")
    flat, _ = flatten_params(op.params)
    sketch_size = min(num_matvecs // 3, flat.size)
    probe_count = num_matvecs - 2 * sketch_size
    key = jax.random.PRNGKey(0) if key is None else key
    sketch_key, probe_key = jax.random.split(key)
    sketch = jax.random.rademacher(sketch_key, (flat.size, sketch_size), dtype=flat.dtype)
    probes = jax.random.rademacher(probe_key, (flat.size, probe_count), dtype=flat.dtype)
    top, forms = compiled(op, _hutchpp)(op, sketch, probes)
    _require_finite_products("hutchpp_trace", op, top, forms)
    return TraceEstimate(float(top + jnp.mean(forms)), _standard_error(forms), num_matvecs)
