"""purenet's train step against the libraries users would pick instead, side by side in one process.

The protocol is ../shared/BENCHMARKS.md's: every contender trains the same
ReLU MLP with optax Adam on softmax cross-entropy, on the same batch, and
the user's loop is timed (call the jitted step, block on its result,
repeat), round-robin so that drift hits all alike.  Contenders, each where
installed (a missing peer is reported, not fatal):

  raw jax            params as a list of (w, b), jax.jit of value_and_grad + optax
  raw jax donated    the same, the params and optimizer state donated to the step (as purenet does)
  raw jax scan       the same step K times in one lax.scan, minibatches gathered on the device
  purenet            purenet.make_train_step (with its non-finite guard)
  purenet fit        purenet.fit's fused loop: per-step time from its per-epoch clock
  stax               jax.example_libraries.stax
  flax linen, flax nnx, equinox, haiku

For each: the median ms per step, TFLOP/s counted as 6 x forward
multiply-adds x batch, the fraction of the matmul peak this script measures
(an n^3 matmul in the same dtype), the ratio to purenet's step, and the peak
device memory of the compiled step (arguments + outputs + temporaries -
aliased, from XLA's memory analysis).

bfloat16 means float32 params with the network computed in bfloat16 where
the library has a policy for it (purenet, raw jax, Flax linen and NNX via
``dtype=``); stax, Equinox and Haiku have none in this setup and compute in
float32 (marked ``*``).  Usage:

    python benchmarks/peers.py [--size small medium large huge] [--dtype float32|bfloat16]
                               [--repeats 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import itertools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import interleaved_medians, median_seconds, peak_bytes, record_header, save_json

import purenet as pn

SIZES = {  # name: (input width, hidden widths, outputs, batch)
    "small": (784, (256, 256), 10, 128),
    "medium": (1024, (1024,) * 4, 10, 1024),
    "large": (4096, (4096,) * 4, 4096, 4096),
    "huge": (8192, (8192,) * 4, 8192, 8192),
}
LEARNING_RATE = 1e-3
DEVICE_DATA_BYTES = 1 << 30  # the fused loop's dataset, as purenet.fit keeps it on the device
FUSED_SECONDS = 1.0  # a fused dispatch this long amortizes its launch; longer only slows the run
SHORT_STEP_SECONDS = 5e-3  # a step this short is timed 5 times per turn (launch jitter)


@dataclasses.dataclass
class Contender:
    """One library's step: ``run()`` takes one step and blocks; ``lowered`` gives its memory analysis."""

    run: Callable[[], object]
    lowered: Callable[[], object] | None
    compute_dtype: str
    steps_per_call: int = 1


@dataclasses.dataclass
class Problem:
    inputs: int
    hidden: tuple
    outputs: int
    batch: int
    dtype: str
    x: jax.Array
    y: jax.Array

    @property
    def dims(self) -> tuple:
        return (self.inputs, *self.hidden, self.outputs)

    @property
    def flops_per_step(self) -> float:
        macs = sum(a * b for a, b in zip(self.dims[:-1], self.dims[1:]))
        return 6.0 * macs * self.batch


def cross_entropy(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y))


def functional_contender(step, state, args, compute_dtype) -> Contender:
    """A contender whose jitted ``step(*state, *args)`` returns ``(*state, loss)``."""
    box = {"state": state}

    def run():
        *box["state"], loss = step(*box["state"], *args)
        return jax.block_until_ready((box["state"], loss))

    return Contender(run, lambda: step.lower(*box["state"], *args), compute_dtype)


def optax_step(forward: Callable, donate: bool = False) -> Callable:
    """The step every functional peer shares: value_and_grad of ``forward``'s loss, an optax Adam update."""
    tx = optax.adam(LEARNING_RATE)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(forward(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ()), tx


# --------------------------------------------------------------------------
# Raw JAX: the floor every library is measured against
# --------------------------------------------------------------------------


def raw_params(key, dims):
    keys = jax.random.split(key, len(dims) - 1)
    he = jax.nn.initializers.he_normal()
    return [(he(k, (a, b)), jnp.zeros(b)) for k, a, b in zip(keys, dims[:-1], dims[1:])]


def raw_forward(compute_dtype):
    def forward(params, x):
        x = x.astype(compute_dtype)
        for i, (w, b) in enumerate(params):
            x = x @ w.astype(compute_dtype) + b.astype(compute_dtype)
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return x

    return forward


def raw_jax(problem: Problem, donate: bool = False) -> Contender:
    step, tx = optax_step(raw_forward(problem.dtype), donate)
    params = raw_params(jax.random.PRNGKey(0), problem.dims)
    return functional_contender(step, (params, tx.init(params)), (problem.x, problem.y), problem.dtype)


def raw_jax_scan(problem: Problem, steps: int) -> Contender:
    """``steps`` steps per dispatch, each gathering its minibatch from a device dataset (as fit does)."""
    step, tx = optax_step(raw_forward(problem.dtype))
    data_x = jnp.tile(problem.x, (steps, 1))
    data_y = jnp.tile(problem.y, steps)
    indices = jax.random.permutation(jax.random.PRNGKey(1), steps * problem.batch).reshape(steps, -1)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def loop(params, opt_state, data_x, data_y, indices):
        def body(carry, index):
            params, opt_state, loss = step(*carry, data_x[index], data_y[index])
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), indices)
        return params, opt_state, losses[-1]

    params = raw_params(jax.random.PRNGKey(0), problem.dims)
    contender = functional_contender(
        loop, (params, tx.init(params)), (data_x, data_y, indices), problem.dtype
    )
    return dataclasses.replace(contender, steps_per_call=steps)


# --------------------------------------------------------------------------
# purenet
# --------------------------------------------------------------------------


def purenet_model(problem: Problem) -> pn.Layer:
    layers = []
    for width in problem.hidden:
        layers += [pn.Dense(width), pn.ReLU()]
    return pn.serial(*layers, pn.Dense(problem.outputs))


def purenet_policy(dtype: str):
    return None if dtype == "float32" else pn.policy(dtype)


def purenet(problem: Problem) -> Contender:
    model = purenet_model(problem)
    tx = optax.adam(LEARNING_RATE)
    step = pn.make_train_step(model, pn.softmax_cross_entropy, tx, policy=purenet_policy(problem.dtype))
    _, params = model.init(jax.random.PRNGKey(0), (-1, problem.inputs))
    box = {"state": pn.TrainState(params, tx.init(params), jnp.array(True))}
    key = jax.random.PRNGKey(2)

    def run():
        box["state"], out = step(box["state"], problem.x, problem.y, key)
        return jax.block_until_ready((box["state"], out))

    return Contender(run, lambda: step.lower(box["state"], problem.x, problem.y, key), problem.dtype)


def purenet_fit(problem: Problem, steps: int, epochs: int) -> float:
    """Median seconds per step of ``pn.fit``'s fused loop over ``epochs`` epochs of ``steps`` steps.

    ``history["seconds"]`` clocks each epoch from its dispatch to its one
    host sync, so fit's one-time work (checks, compilation) is left out.
    """
    model = purenet_model(problem)
    _, params = model.init(jax.random.PRNGKey(0), (-1, problem.inputs))
    x = np.tile(np.asarray(problem.x), (steps, 1))
    y = np.tile(np.asarray(problem.y), steps)
    result = pn.fit(
        model,
        params,
        x,
        y,
        loss=pn.softmax_cross_entropy,
        optimizer=optax.adam(LEARNING_RATE),
        epochs=epochs,
        batch_size=problem.batch,
        key=jax.random.PRNGKey(3),
        policy=purenet_policy(problem.dtype),
        progress=False,
    )
    return float(np.median(result.history["seconds"][1:])) / steps


# --------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------


def stax(problem: Problem) -> Contender:
    from jax.example_libraries import stax as jstax

    layers = []
    for width in problem.hidden:
        layers += [jstax.Dense(width), jstax.Relu]
    init, apply = jstax.serial(*layers, jstax.Dense(problem.outputs))
    _, params = init(jax.random.PRNGKey(0), (-1, problem.inputs))
    step, tx = optax_step(apply)
    return functional_contender(step, (params, tx.init(params)), (problem.x, problem.y), "float32")


def flax_linen(problem: Problem) -> Contender:
    import flax.linen as nn

    class MLP(nn.Module):
        hidden: tuple
        outputs: int
        dtype: str

        @nn.compact
        def __call__(self, x):
            for width in self.hidden:
                x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
            return nn.Dense(self.outputs, dtype=self.dtype)(x)

    model = MLP(problem.hidden, problem.outputs, problem.dtype)
    params = model.init(jax.random.PRNGKey(0), problem.x[:1])
    step, tx = optax_step(model.apply)
    return functional_contender(step, (params, tx.init(params)), (problem.x, problem.y), problem.dtype)


def flax_nnx(problem: Problem) -> Contender:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, dims, dtype, rngs):
            linears = [nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(dims)]
            self.layers = nnx.List(linears) if hasattr(nnx, "List") else linears

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(problem.dims, problem.dtype, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    def run():
        return jax.block_until_ready((step(model, optimizer, problem.x, problem.y), nnx.state(model)))

    return Contender(run, lambda: step.lower(model, optimizer, problem.x, problem.y), problem.dtype)


def equinox(problem: Problem) -> Contender:
    import equinox as eqx

    model = eqx.nn.MLP(
        problem.inputs,
        problem.outputs,
        problem.hidden[0],
        depth=len(problem.hidden),
        activation=jax.nn.relu,
        key=jax.random.PRNGKey(0),
    )
    tx = optax.adam(LEARNING_RATE)

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(lambda m: cross_entropy(jax.vmap(m)(x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    return functional_contender(step, (model, opt_state), (problem.x, problem.y), "float32")


def haiku(problem: Problem) -> Contender:
    import haiku as hk

    forward = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([*problem.hidden, problem.outputs])(x)))
    params = forward.init(jax.random.PRNGKey(0), problem.x[:1])
    step, tx = optax_step(forward.apply)
    return functional_contender(step, (params, tx.init(params)), (problem.x, problem.y), "float32")


PEERS = {  # name: (builder, the distribution that must be installed)
    "stax": (stax, "jax"),
    "flax linen": (flax_linen, "flax"),
    "flax nnx": (flax_nnx, "flax"),
    "equinox": (equinox, "equinox"),
    "haiku": (haiku, "dm-haiku"),
}


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def matmul_peak(dtype: str, n: int, repeats: int = 30, chain: int = 10) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` at the default precision: the peak the MLPs are held to.

    Each timed call queues ``chain`` matmuls and blocks once, so dispatch is
    amortized; two seconds of untimed matmuls first bring a GPU to its clocks.
    The best of random-normal and all-ones operands is taken: a GPU at its
    power cap clocks higher on low-entropy data (ReLU's zeros, say), and an
    MLP's matmuls would otherwise exceed the "peak".
    """
    keys = jax.random.split(jax.random.PRNGKey(0))
    operands = {
        "normal": [jax.random.normal(k, (n, n), dtype) for k in keys],
        "ones": [jnp.ones((n, n), dtype)] * 2,
    }
    matmul = jax.jit(jnp.matmul)
    thunks = {
        name: lambda a=a, b=b: jax.block_until_ready([matmul(a, b) for _ in range(chain)])
        for name, (a, b) in operands.items()
    }
    warm_until = time.perf_counter() + 2.0
    while time.perf_counter() < warm_until:
        thunks["normal"]()
    seconds = min(interleaved_medians(thunks, repeats, warmup_rounds=1).values()) / chain
    return 2.0 * n**3 / seconds


def step_memory(contender: Contender) -> int | None:
    """The compiled step's peak memory (None where the backend has no memory analysis)."""
    try:
        compiled = contender.lowered().compile()
        compiled = getattr(compiled, "compiled", compiled)  # Equinox wraps jax's Compiled
        stats = compiled.memory_analysis()
    except Exception:  # a backend without memory analysis: report, do not fail
        return None
    return None if stats is None else peak_bytes(stats)


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def make_problem(size: str, dtype: str) -> Problem:
    inputs, hidden, outputs, batch = SIZES[size]
    x = jax.random.normal(jax.random.PRNGKey(10), (batch, inputs), jnp.float32)
    y = jax.random.randint(jax.random.PRNGKey(11), (batch,), 0, outputs)
    return Problem(inputs, hidden, outputs, batch, dtype, x, y)


def fused_steps(problem: Problem, step_seconds: float) -> int:
    """Steps per fused dispatch: up to 256, as many batches as fit in the device dataset budget
    and as many as run in ``FUSED_SECONDS`` (a 150 ms CPU step needs no 256-step dispatch)."""
    by_memory = DEVICE_DATA_BYTES // (problem.batch * problem.inputs * 4)
    by_time = FUSED_SECONDS / step_seconds
    return int(max(1, min(256, by_memory, by_time)))


def build(problem: Problem, wanted: list[str], steps: int) -> tuple[dict[str, Contender], dict[str, str]]:
    contenders = {
        "raw jax": raw_jax(problem),
        "raw jax donated": raw_jax(problem, donate=True),
        f"raw jax scan x{steps}": raw_jax_scan(problem, steps),
        "purenet": purenet(problem),
    }
    missing = {}
    for name in wanted:
        builder, distribution = PEERS[name]
        if version(distribution) is None:
            missing[name] = f"{distribution} is not installed"
            continue
        try:
            contenders[name] = builder(problem)
        except Exception as error:  # an API drift in one peer must not sink the table
            missing[name] = f"{type(error).__name__}: {error}"
    return contenders, missing


def measure(size: str, dtype: str, repeats: int, peers: list[str], peak: float) -> dict:
    problem = make_problem(size, dtype)
    start = time.perf_counter()
    step_estimate = median_seconds(purenet(problem).run, repeats=3)  # sizes the rounds; not a result
    steps = fused_steps(problem, step_estimate)
    contenders, missing = build(problem, peers, steps)
    calls = 5 if step_estimate < SHORT_STEP_SECONDS else 1
    medians = interleaved_medians(
        {name: c.run for name, c in contenders.items()}, repeats, calls_per_round=calls
    )
    seconds = {name: medians[name] / c.steps_per_call for name, c in contenders.items()}
    fit_seconds = purenet_fit(problem, steps, epochs=6 if size in ("small", "medium") else 4)
    rows = {}
    for name, c in contenders.items():
        rows[name] = row(seconds[name], problem, peak, seconds["purenet"], c.compute_dtype, step_memory(c))
    rows[f"purenet fit (x{steps})"] = row(fit_seconds, problem, peak, seconds["purenet"], dtype, None)
    return {
        "mlp": list(problem.dims),
        "batch": problem.batch,
        "dtype": dtype,
        "repeats": repeats,
        "calls_per_round": calls,
        "fused_steps": steps,
        "flops_per_step": problem.flops_per_step,
        "contenders": rows,
        "missing": missing,
        "wall_seconds": time.perf_counter() - start,
    }


def row(seconds, problem, peak, purenet_seconds, compute_dtype, memory) -> dict:
    flops = problem.flops_per_step / seconds
    return {
        "ms": seconds * 1e3,
        "tflops": flops / 1e12,
        "fraction_of_peak": flops / peak,
        "ratio_to_purenet": seconds / purenet_seconds,
        "compute_dtype": compute_dtype,
        "peak_memory_mib": None if memory is None else memory / 2**20,
    }


def print_table(size: str, figures: dict) -> None:
    print(f"\n{size}: MLP {'-'.join(map(str, figures['mlp']))}, batch {figures['batch']}, {figures['dtype']}")
    print(f"  {'':22s} {'ms/step':>9s} {'TFLOP/s':>8s} {'of peak':>8s} {'vs purenet':>10s} {'peak MiB':>9s}")
    for name, r in sorted(figures["contenders"].items(), key=lambda item: item[1]["ms"]):
        star = "*" if r["compute_dtype"] != figures["dtype"] else " "
        memory = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.1f}"
        print(
            f"  {name + star:22s} {r['ms']:9.3f} {r['tflops']:8.3f} {r['fraction_of_peak']:8.1%}"
            f" {r['ratio_to_purenet']:9.2f}x {memory:>9s}"
        )
    for name, why in figures["missing"].items():
        print(f"  {name}: not measured ({why})")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=["small", "medium"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=100, help="timed rounds (at least 30 by the protocol)")
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--matmul-n", type=int, help="side of the peak matmul (8192 on a GPU, 2048 on a CPU)")
    parser.add_argument("--json", help="also write the figures to this path")
    args = parser.parse_args(argv)

    on_cpu = jax.default_backend() == "cpu"
    n = args.matmul_n or (2048 if on_cpu else 8192)
    peak = matmul_peak(args.dtype, n)
    versions = {d: version(d) or "not installed" for d in ("optax", "flax", "equinox", "dm-haiku")}
    record = record_header(**versions) | {
        "device": str(jax.devices()[0].device_kind),
        "dtype": args.dtype,
        "matmul_peak": {"n": n, "tflops": peak / 1e12},
        "sizes": {},
    }
    print(f"{record['machine']}; {record['device']}; JAX {jax.__version__}; {versions}")
    print(f"measured {n}^3 {args.dtype} matmul peak: {peak / 1e12:.1f} TFLOP/s")
    for size in args.size:
        record["sizes"][size] = measure(size, args.dtype, args.repeats, args.peers, peak)
        print_table(size, record["sizes"][size])
        save_json(args.json, record)  # after every size, so a long run keeps what it measured
    print("\n* computed in float32: the library has no bfloat16 compute policy in this setup")
    return record


if __name__ == "__main__":
    main()
