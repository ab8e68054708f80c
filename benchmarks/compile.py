"""Compile time of ``repeat(block, n)`` against the same n blocks unrolled in a ``serial``.

``repeat`` stacks the copies' params and runs them under ``lax.scan``, so
tracing and XLA see the block once; an unrolled stack is traced and compiled
n times over.  The target (issue: benchmarks): ``repeat`` at n = 128 compiles
within 1.5x of n = 4.  The anchor (../shared/BENCHMARKS.md, raw JAX): an
unrolled loop 0.17 -> 0.54 s from 4 to 128, a scan flat at ~0.25 s.

The block is the anchor's: ``x + tanh(x W + b)`` of width 128.  For each n,
jit(grad) of a mean-squared loss is traced, lowered and compiled from a fresh
function (so no cache helps); the median over ``--repeats`` builds is the
figure.  Usage:

    python benchmarks/compile.py [--depths 4 16 64 128] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from common import record_header, save_json

import purenet as pn

WIDTH, BATCH = 128, 64


def block() -> pn.Layer:
    return pn.residual(pn.serial(pn.Dense(WIDTH), pn.Tanh()))


def build(kind: str, depth: int) -> pn.Layer:
    return pn.repeat(block(), depth) if kind == "repeat" else pn.serial(*(block() for _ in range(depth)))


def compile_seconds(kind: str, depth: int) -> dict:
    """Seconds to trace + lower, and to compile, jit(grad) of a fresh loss over the stack."""
    model = build(kind, depth)
    _, params = model.init(jax.random.PRNGKey(0), (-1, WIDTH))
    x = jnp.ones((BATCH, WIDTH))

    def loss(p, x):  # a new function object per call: jax's caches cannot serve it
        return jnp.mean(model.apply(p, x) ** 2)

    start = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(params, x)
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {"trace_lower": traced - start, "compile": done - traced, "total": done - start}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", nargs="+", type=int, default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this path")
    args = parser.parse_args(argv)

    record = record_header() | {"device": str(jax.devices()[0].device_kind), "kinds": {}}
    print(f"{record['machine']}; {record['device']}; JAX {jax.__version__}")
    compile_seconds("repeat", 2)  # warm jax's own one-time imports and backend start-up
    for kind in ("repeat", "serial"):
        rows = {}
        for depth in args.depths:
            runs = [compile_seconds(kind, depth) for _ in range(args.repeats)]
            rows[depth] = {part: statistics.median(r[part] for r in runs) for part in runs[0]}
        first = rows[args.depths[0]]["total"]
        for r in rows.values():
            r["vs_first"] = r["total"] / first
        record["kinds"][kind] = rows
    print(f"\njit(grad) seconds (trace+lower / compile / total), residual tanh blocks of width {WIDTH}")
    print(f"  {'n':>4s} {'repeat':>28s} {'unrolled serial':>28s}")
    for depth in args.depths:
        cells = []
        for kind in ("repeat", "serial"):
            r = record["kinds"][kind][depth]
            cells.append(
                f"{r['trace_lower']:.2f} / {r['compile']:.2f} / {r['total']:.2f} ({r['vs_first']:.1f}x)"
            )
        print(f"  {depth:4d} {cells[0]:>28s} {cells[1]:>28s}")
    save_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
