"""Reference backprop and R-operator against JAX: the cost of hand-derived derivatives in NumPy float64.

The targets: the reference gradient of a 1-million-parameter MLP at batch
256 takes under a second on one CPU core (i.e. it is vectorized over the
batch, with no Python loop over examples), and its reference
Hessian-vector product, by the hand-derived R-operator, under 2 seconds.

One process, pinned to one core for every contender (CPU affinity set, and
BLAS threads set to 1, before NumPy and JAX load), the same MLP 784-1024-256-10 with ReLU
(1,068,810 parameters), softmax cross-entropy, batch 256:

  reference (Algorithm 6.2)   purenet.reference_gradient: the composed bprop
  textbook (Algorithm 6.4)    purenet.textbook_mlp_gradient: the book's loop
  jax.grad f64 / f32          jit-compiled jax.grad of the same cost
  reference HVP (R-operator)  purenet.reference_hvp: Pearlmutter's R-forward and R-backward
  reference GGN product       purenet.reference_ggn_vp
  JAX HVP f64 / f32           jit-compiled jax.jvp of jax.grad (forward over reverse)

Medians over --repeats runs after one warm-up.  Usage:

    python benchmarks/reference.py [--repeats 30] [--batch 256] [--json out.json]
"""

from __future__ import annotations

import os

# One core for everyone: pin the process (XLA's thread pool ignores the BLAS
# variables), and keep NumPy's BLAS single-threaded too.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import median_seconds, record_header, save_json  # noqa: E402

import purenet as pn  # noqa: E402


def jax_grad_fn(model, params, x, y, dtype):
    with jax.enable_x64(dtype == "float64"):
        cast = lambda a: jax.numpy.asarray(a, dtype)  # noqa: E731
        p, xs = jax.tree_util.tree_map(cast, params), cast(x)
        grad = jax.jit(jax.grad(lambda q: pn.softmax_cross_entropy(model.apply(q, xs), y)))

        def run():
            with jax.enable_x64(dtype == "float64"):
                jax.block_until_ready(grad(p))

        return run


def jax_hvp_fn(model, params, x, y, v, dtype):
    with jax.enable_x64(dtype == "float64"):
        cast = lambda a: jax.numpy.asarray(a, dtype)  # noqa: E731
        p, d, xs = jax.tree_util.tree_map(cast, params), jax.tree_util.tree_map(cast, v), cast(x)
        cost = lambda q: pn.softmax_cross_entropy(model.apply(q, xs), y)  # noqa: E731
        hvp = jax.jit(lambda q, w: jax.jvp(jax.grad(cost), (q,), (w,))[1])

        def run():
            with jax.enable_x64(dtype == "float64"):
                jax.block_until_ready(hvp(p, d))

        return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", help="also write the figures to this path")
    args = parser.parse_args(argv)

    model = pn.serial(pn.Dense(1024), pn.ReLU(), pn.Dense(256), pn.ReLU(), pn.Dense(10))
    params = pn.shapes.as_float64(model.init(jax.random.PRNGKey(0), (-1, 784))[1])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((args.batch, 784)), rng.integers(0, 10, args.batch)
    loss = pn.softmax_cross_entropy

    v = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), params)
    contenders = {
        "reference (Algorithm 6.2, composed)": lambda: pn.reference_gradient(model, params, x, y, loss),
        "textbook (Algorithms 6.3-6.4)": lambda: pn.textbook_mlp_gradient(model, params, x, y, loss),
        "jax.grad, jit, float64": jax_grad_fn(model, params, x, y, "float64"),
        "jax.grad, jit, float32": jax_grad_fn(model, params, x, y, "float32"),
        "reference HVP (R-operator)": lambda: pn.reference_hvp(model, params, x, y, loss, v),
        "reference GGN product": lambda: pn.reference_ggn_vp(model, params, x, y, loss, v),
        "JAX HVP (jvp of grad), jit, float64": jax_hvp_fn(model, params, x, y, v, "float64"),
        "JAX HVP (jvp of grad), jit, float32": jax_hvp_fn(model, params, x, y, v, "float32"),
    }
    figures = {name: median_seconds(fn, args.repeats) for name, fn in contenders.items()}
    count = pn.count_params(params)
    record = record_header("run pinned to one") | {
        "model": f"MLP 784-1024-256-10 ReLU, {count:,} params, batch {args.batch}",
        "median_seconds": figures,
        "target": "reference gradient under 1 s, reference HVP under 2 s",
        "target_met": figures["reference (Algorithm 6.2, composed)"] < 1.0
        and figures["reference HVP (R-operator)"] < 2.0,
    }
    print(f"{record['model']}; medians over {args.repeats} runs, one CPU core")
    fastest = min(figures.values())
    for name, seconds in figures.items():
        print(f"  {name:40s} {seconds * 1e3:9.1f} ms   {seconds / fastest:5.1f}x the fastest")
    verdict = "met" if record["target_met"] else "MISSED"
    print(f"target: reference gradient under 1 s and reference HVP under 2 s: {verdict}")
    save_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
