"""Shared fixtures: a fixed PRNG key; float32 matmuls at full precision.

On GPUs XLA's default float32 matmul precision is TF32 (10-bit mantissa), a
speed choice for training; the tests compare layers against NumPy at float32
tolerances, so they ask for the full precision everywhere (a no-op on CPU).

The suite compiles thousands of small programs and runs each a few times,
so on a CPU compiling is most of its time. It compiles as purenet's checks
do (``purenet.check.engine.jit_for_checks``): LLVM's optimizations and XLA's
fusion emitters off, which halves the suite's time (measured: the curvature,
book-example and Lanczos tests 2.0x faster). Arithmetic stays IEEE (no fast
math either way); a sum may round in another order, which the tests'
tolerances allow, and tests that demand bit-identical results compare two
programs compiled alike. To run the suite as XLA compiles by default, set
``PURENET_TEST_XLA_DEFAULTS=1``.
"""

import importlib.metadata
import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
if tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2]) >= (0, 5):
    FAST_COMPILE_FLAGS += " --xla_cpu_use_fusion_emitters=false"  # an older XLA dies on the unknown flag
if not os.environ.get("PURENET_TEST_XLA_DEFAULTS"):
    # Read when the XLA backend starts (first use), so setting it here reaches every test and subprocess.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
