"""Shared fixtures: a fixed PRNG key; float32 matmuls at full precision.

On GPUs XLA's default float32 matmul precision is TF32 (10-bit mantissa), a
speed choice for training; the tests compare layers against NumPy at float32
tolerances, so they ask for the full precision everywhere (a no-op on CPU).
"""

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
