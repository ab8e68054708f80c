"""fit's fused loop, ms per step, for the purenet on PYTHONPATH: run it alternately on two trees to compare.

Usage: PYTHONPATH=<tree> python benchmarks/refactor_cpu/fit_per_step.py <label>
"""

import statistics
import sys

import jax
import numpy as np
import optax

import purenet as pn

rng = np.random.default_rng(0)
x = rng.standard_normal((128 * 256, 784)).astype(np.float32)
y = rng.integers(0, 10, 128 * 256)
model = pn.serial(pn.Dense(256), pn.ReLU(), pn.Dense(256), pn.ReLU(), pn.Dense(10))
_, params = model.init(jax.random.PRNGKey(0), (-1, 784))
per_step = []
for _ in range(3):
    result = pn.fit(
        model, params, x, y, loss=pn.softmax_cross_entropy, optimizer=optax.adam(1e-3), epochs=6,
        batch_size=128, key=jax.random.PRNGKey(3), progress=False,
    )  # fmt: skip
    per_step += [seconds / 256 for seconds in result.history["seconds"][1:]]
print(sys.argv[1], f"{statistics.median(per_step) * 1e3:.3f} ms/step", [f"{s * 1e3:.3f}" for s in per_step])
