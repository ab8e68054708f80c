"""Hessian-vector product over gradient cost, forward-over-reverse against reverse-over-reverse.

The targets (issue: curvature): on the MLPs of ../shared/BENCHMARKS.md an HVP
costs at most 2.3x a gradient at large sizes (what raw JAX reaches: 2.26x on
the H200), and 8 HVPs batched with ``jax.vmap`` cost less than 8 single ones.

One process, every contender jit-compiled on the same params and batch,
softmax cross-entropy on ReLU MLPs, float32 or (``--dtype bfloat16``) params
and inputs cast to bfloat16:

  grad               jax.grad of the loss
  raw jax hvp        jax.jvp(jax.grad(loss)), written out by hand
  purenet hvp f/r    purenet.hvp, forward over reverse (the default)
  purenet hvp r/r    purenet.hvp, reverse over reverse
  8 single / 8 batched   purenet.hvp called 8 times, against one purenet.batched_hvp of 8

Sizes: small 784-256-256-10 b128; medium 1024x4 -> 10 b1024; large
4096x4 -> 4096 b4096 (seconds per product on a 2-core CPU: there its repeats
are capped at 3 and the batched pair is skipped).  Usage:

    python benchmarks/curvature.py [--sizes small medium large] [--dtype float32|bfloat16]
                                   [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import interleaved_medians, record_header, save_json

import purenet as pn

SIZES = {  # name: (input width, hidden widths, outputs, batch)
    "small": (784, (256, 256), 10, 128),
    "medium": (1024, (1024,) * 4, 10, 1024),
    "large": (4096, (4096,) * 4, 4096, 4096),
}


def mlp(hidden: tuple, outputs: int) -> pn.Layer:
    layers = []
    for width in hidden:
        layers += [pn.Dense(width), pn.ReLU()]
    return pn.serial(*layers, pn.Dense(outputs))


def contenders(size: str, batched: bool, dtype: str) -> dict:
    """Timed thunks for one size, each blocking on its result."""
    inputs, hidden, outputs, batch = SIZES[size]
    model = mlp(hidden, outputs)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    _, params = model.init(keys[0], (-1, inputs))
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    x = jax.random.normal(keys[1], (batch, inputs), dtype)
    y = jax.random.randint(keys[2], (batch,), 0, outputs)
    flat, unflatten = pn.flatten_params(params)
    v = unflatten(jax.random.normal(keys[3], flat.shape, flat.dtype))
    vs = jax.tree_util.tree_map(lambda a: jnp.stack([a * (i + 1) for i in range(8)]), v)

    def loss(p):
        return pn.softmax_cross_entropy(model.apply(p, x), y)

    grad = jax.jit(jax.grad(loss))
    raw_hvp = jax.jit(lambda p, u: jax.jvp(jax.grad(loss), (p,), (u,))[1])
    hvp_fr = jax.jit(lambda p, u: pn.hvp(loss, p, u))
    hvp_rr = jax.jit(lambda p, u: pn.hvp(loss, p, u, method="reverse_over_reverse"))
    batched_hvp = jax.jit(lambda p, us: pn.batched_hvp(loss, p, us))
    block = jax.block_until_ready
    thunks = {
        "grad": lambda: block(grad(params)),
        "raw jax hvp": lambda: block(raw_hvp(params, v)),
        "purenet hvp f/r": lambda: block(hvp_fr(params, v)),
        "purenet hvp r/r": lambda: block(hvp_rr(params, v)),
    }
    if batched:
        singles = [jax.tree_util.tree_map(lambda a, i=i: a[i], vs) for i in range(8)]
        thunks["8 single hvps"] = lambda: block([hvp_fr(params, u) for u in singles])
        thunks["8 batched hvps"] = lambda: block(batched_hvp(params, vs))
    return thunks, pn.count_params(params)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "medium"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="also write the figures to this path")
    args = parser.parse_args(argv)

    record = record_header() | {"device": str(jax.devices()[0].device_kind), "dtype": args.dtype, "sizes": {}}
    print(f"{record['machine']}; {record['device']}; JAX {jax.__version__}, {args.dtype}")
    on_cpu = jax.default_backend() == "cpu"
    for size in args.sizes:
        slow = size == "large" and on_cpu
        repeats = min(args.repeats, 3) if slow else args.repeats
        thunks, count = contenders(size, batched=not slow, dtype=args.dtype)
        figures = interleaved_medians(thunks, repeats, warmup_rounds=1 if slow else 3)
        ratios = {
            "hvp f/r / grad": figures["purenet hvp f/r"] / figures["grad"],
            "hvp r/r / grad": figures["purenet hvp r/r"] / figures["grad"],
            "raw hvp / grad": figures["raw jax hvp"] / figures["grad"],
        }
        if "8 batched hvps" in figures:
            ratios["8 batched / 8 single"] = figures["8 batched hvps"] / figures["8 single hvps"]
        record["sizes"][size] = {
            "params": count,
            "repeats": repeats,
            "median_seconds": figures,
            "ratios": ratios,
        }
        print(f"\n{size}: {SIZES[size]}, {count:,} params, medians over {repeats}")
        for name, seconds in figures.items():
            print(f"  {name:18s} {seconds * 1e3:10.2f} ms")
        for name, ratio in ratios.items():
            print(f"  {name:22s} {ratio:6.2f}x")
    save_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
