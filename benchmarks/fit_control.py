"""Does training-loop control cost the fused loop anything?  fit's ms per step, before and after.

Issue 18 asks that callbacks, the learning rate in the history and per-step
losses add no host sync per step.  This runs ``fit``'s fused loop (the small
MLP of benchmarks/peers.py: 784-256-256-10, batch 128, Adam, 256 steps per
epoch, one dispatch each) in fresh processes, alternating between the trees
given, so drift hits all alike:

  plain      fit as before: no callbacks, a plain optax.adam
  controlled (the trees that have it) EarlyStopping on the training loss,
             KeepCheckpoints of the last epoch, a function callback,
             optax.inject_hyperparams(adam) on a cosine schedule (the learning
             rate recorded) and step_losses=True

Per-step time is the median over epochs 2.. of ``history["seconds"]`` / 256
(the first epoch compiles).  Usage (nothing else running):

    python benchmarks/fit_control.py --tree before=/path/to/old/tree --tree after=. \
        [--rounds 4] [--json benchmarks/fit_control_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, tempfile
import jax, numpy as np, optax
import purenet as pn

variant = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((128 * 256, 784)).astype(np.float32)
y = rng.integers(0, 10, 128 * 256)
model = pn.serial(pn.Dense(256), pn.ReLU(), pn.Dense(256), pn.ReLU(), pn.Dense(10))
_, params = model.init(jax.random.PRNGKey(0), (-1, 784))
kwargs = dict(optimizer=optax.adam(1e-3))
if variant == "controlled":
    schedule = optax.cosine_decay_schedule(1e-3, decay_steps=6 * 256)
    kwargs = dict(
        optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=schedule), step_losses=True,
        callbacks=[pn.EarlyStopping("loss", patience=100), pn.KeepCheckpoints(tempfile.mkdtemp(), last=1),
                   lambda epoch, history, state: None],
    )
result = pn.fit(model, params, x, y, loss=pn.softmax_cross_entropy, epochs=6, batch_size=128,
                key=jax.random.PRNGKey(3), progress=False, **kwargs)
print(json.dumps([s / 256 for s in result.history["seconds"][1:]]))
"""


def run(tree: str, variant: str) -> list[float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, variant], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="label=path of a purenet tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, path in trees.items():
            variants = ["plain"] + (["controlled"] if label != "before" else [])
            for variant in variants:
                samples.setdefault(f"{label} {variant}", []).extend(run(path, variant))
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    for name, ms in medians.items():
        print(f"{name:20s} {ms:.3f} ms/step  ({len(samples[name])} epochs)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"ms_per_step": medians, "samples_s": samples}, handle, indent=1)


if __name__ == "__main__":
    main()
