"""Do purenet's value checks cost a compiled train step anything when they are off?

Value checks (labels in range, targets in the loss's domain, finite values)
read concrete values; under ``jax.jit`` they are skipped at trace time unless
``pn.checked`` compiles them in.  So the claim "a compiled step with checks off
costs nothing extra" is a claim about the compiled program: this script
prints, for peers.py's small MLP (784-256-256-10, batch 128, adam), the
number of operations in the optimized HLO of ``pn.make_train_step``'s step and
a hash of its text, for each loss.  Run it on two checkouts (before and after
a change) and compare: the same hash means the same program, op for op.

    PYTHONPATH=<checkout> python benchmarks/checks_cost.py
"""

from __future__ import annotations

import hashlib
import json
import re

import jax
import jax.numpy as jnp
import optax

import purenet as pn

LOSSES = {
    "softmax_cross_entropy": (pn.softmax_cross_entropy, lambda: jnp.zeros((128,), jnp.int32)),
    "multiclass_hinge": (pn.multiclass_hinge, lambda: jnp.zeros((128,), jnp.int32)),
    "mean_squared_error": (pn.mean_squared_error, lambda: jnp.zeros((128, 10))),
}


def optimized_hlo(loss, targets) -> str:
    model = pn.serial(pn.Dense(256), pn.ReLU(), pn.Dense(256), pn.ReLU(), pn.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 784))
    optimizer = optax.adam(1e-3)
    step = pn.make_train_step(model, loss, optimizer, donate=False)
    state = pn.TrainState(params, optimizer.init(params), jnp.array(True))
    lowered = step.lower(state, jnp.zeros((128, 784)), targets, jax.random.PRNGKey(1))
    text = re.sub(r"metadata=\{[^}]*\}", "", lowered.compile().as_text())
    # Keep the program (its computations and instructions), not the table of source files, which
    # names each checkout's own path.
    return "\n".join(line for line in text.splitlines() if " = " in line or line.startswith(("ENTRY", "%")))


def main() -> None:
    rows = {}
    for name, (loss, targets) in LOSSES.items():
        text = optimized_hlo(loss, targets())
        ops = sum(1 for line in text.splitlines() if " = " in line)
        rows[name] = {"ops": ops, "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
    print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(), "steps": rows}, indent=1))


if __name__ == "__main__":
    main()
