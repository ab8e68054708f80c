"""Back-propagation's speed-versus-memory trade: remat on a 64-deep stack, memory and step time.

The book's section 6.5.7 notes that back-propagation stores every
intermediate of the forward pass to avoid recomputing it.  ``remat`` on
``repeat`` and ``serial`` stores only the input of each segment of blocks and
recomputes the segment when the backward pass reaches it (Chen et al. 2016).
The target (issue: benchmarks): activation memory cut at least 4x for at most
1.4x the step time.

The stack: ``depth`` residual blocks ``x + W2 relu(W1 x + b1) + b2`` of width
``width``, softmax cross-entropy, Adam.  For each way of building it
(``repeat(block, 64)``, ``serial(*64 blocks)``) and each remat setting
(False; 1: every block recomputed alone; 8: segments of sqrt(64); True: the
library's choice, segments of 4 = the divisor of 64 nearest sqrt(64 / 2.25)):

  activation MiB   the gradient's compiled temporary memory (XLA's memory
                   analysis of jit(value_and_grad)): the activations it holds
  saved MiB        what the forward pass keeps for the backward pass, as JAX
                   sees it (jax.vjp's residuals, less the params)
  step MiB         the whole train step's peak (arguments + outputs +
                   temporaries - aliased)
  ms               median train step time (purenet.make_train_step)

Usage:

    python benchmarks/remat.py [--depth 64] [--width 512] [--batch 4096] [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from common import interleaved_medians, peak_bytes, record_header, save_json

import purenet as pn

SETTINGS = {"none": False, "each block": 1, "segments of 8": 8, "remat=True": True}


def block(width: int) -> pn.Layer:
    return pn.residual(pn.serial(pn.Dense(width), pn.ReLU(), pn.Dense(width)))


def stack(kind: str, depth: int, width: int, remat) -> pn.Layer:
    if kind == "repeat":
        return pn.repeat(block(width), depth, remat=remat)
    return pn.serial(*(block(width) for _ in range(depth)), remat=remat)


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def figures(model: pn.Layer, width: int, x, y) -> tuple[dict, callable]:
    """Memory figures of one model, and a thunk taking one train step."""
    _, params = model.init(jax.random.PRNGKey(0), (-1, width))

    def loss(p):
        return pn.softmax_cross_entropy(model.apply(p, x), y)

    gradient = jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis()
    residuals = jax.jit(lambda p: jax.vjp(loss, p)[1]).lower(params).compile().memory_analysis()
    param_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
    optimizer = optax.adam(1e-3)
    step = pn.make_train_step(model, pn.softmax_cross_entropy, optimizer)
    box = {"state": pn.TrainState(params, optimizer.init(params), jnp.array(True))}
    key = jax.random.PRNGKey(1)
    stats = step.lower(box["state"], x, y, key).compile().memory_analysis()

    def run():
        box["state"], out = step(box["state"], x, y, key)
        return jax.block_until_ready((box["state"], out))

    return {
        "activation_mib": mib(gradient.temp_size_in_bytes),
        "saved_mib": mib(residuals.output_size_in_bytes - param_bytes),
        "step_peak_mib": mib(peak_bytes(stats)),
    }, run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--width", type=int, help="default: 512 on a GPU, 256 on a CPU")
    parser.add_argument("--batch", type=int, help="default: 4096 on a GPU, 512 on a CPU")
    parser.add_argument("--kinds", nargs="+", choices=["repeat", "serial"], default=["repeat", "serial"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this path")
    args = parser.parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    width = args.width or (256 if on_cpu else 512)
    batch = args.batch or (512 if on_cpu else 4096)
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, width))
    y = jax.random.randint(jax.random.PRNGKey(3), (batch,), 0, width)

    record = record_header() | {
        "device": str(jax.devices()[0].device_kind),
        "depth": args.depth,
        "width": width,
        "batch": batch,
        "kinds": {},
    }
    print(f"{record['machine']}; {record['device']}; JAX {jax.__version__}")
    print(f"{args.depth} residual blocks of width {width}, batch {batch}, float32, Adam")
    for kind in args.kinds:
        rows, thunks = {}, {}
        for name, remat in SETTINGS.items():
            rows[name], thunks[name] = figures(stack(kind, args.depth, width, remat), width, x, y)
        for name, seconds in interleaved_medians(thunks, args.repeats).items():
            rows[name]["ms"] = seconds * 1e3
        base = rows["none"]
        for r in rows.values():
            r["activation_cut"] = base["activation_mib"] / r["activation_mib"]
            r["time_ratio"] = r["ms"] / base["ms"]
        record["kinds"][kind] = rows
        print(f"\n{kind}(..., remat=...)")
        print(
            f"  {'':14s} {'activation MiB':>14s} {'saved MiB':>10s} {'step MiB':>9s}"
            f" {'ms':>9s} {'cut':>6s} {'time':>6s}"
        )
        for name, r in rows.items():
            print(
                f"  {name:14s} {r['activation_mib']:14.1f} {r['saved_mib']:10.1f} {r['step_peak_mib']:9.1f}"
                f" {r['ms']:9.2f} {r['activation_cut']:5.1f}x {r['time_ratio']:5.2f}x"
            )
    save_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
