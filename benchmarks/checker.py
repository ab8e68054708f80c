"""How long the derivative checks take (issue: a checker that cannot be fooled and says where).

Three measures, each the median of ``--repeats`` runs, on this machine:

1. ``check_gradients`` of an MLP of 6,922 parameters (32-64-64-10, tanh,
   batch 32, softmax cross-entropy), after its first compile (purenet's
   compile cache keeps the JAX side), and its first call;
2. ``check_function`` of logsumexp(A x) with a 1,000-dimensional x (A is
   50 x 1,000, a NumPy gradient), first and later calls;
3. locating: the same MLP with a wrong backward planted at its second tanh,
   a failing ``check_gradients`` (which then walks the sweep to name the
   node) against the passing check of the same model, both on fresh model
   objects, so both compile.

    python benchmarks/checker.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, median_seconds

import purenet as pn


def planted_tanh() -> pn.Layer:
    """Tanh whose reference backward is off by a sign."""
    tanh = pn.Tanh()

    def forward(params, x):
        y, pullback = tanh.reference.run(params, x)
        return y, lambda g: (lambda gp, gx: (gp, -gx))(*pullback(g))

    return tanh.replace(reference=pn.Reference(forward))


def mlp(second=None) -> pn.Layer:
    return pn.serial(pn.Dense(64), pn.Tanh(), pn.Dense(64), second or pn.Tanh(), pn.Dense(10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((32, 32)), rng.integers(0, 10, 32)
    params = mlp().init(jax.random.PRNGKey(0), (-1, 32))[1]
    model = mlp()

    def check(m=None, **kwargs):
        return pn.check_gradients(m or model, params, x, labels, pn.softmax_cross_entropy, **kwargs)

    first = median_seconds(lambda: check(mlp()), repeats, warmups=0)
    warm = median_seconds(check, repeats, warmups=0)

    A, point = rng.standard_normal((50, 1000)), rng.standard_normal(1000)

    def grad(x):
        z = A @ x
        p = np.exp(z - z.max())
        return A.T @ (p / p.sum())

    f = lambda x: jax.nn.logsumexp(jnp.asarray(A) @ x)  # noqa: E731
    function_first = median_seconds(
        lambda: pn.check_function(lambda x: f(x), point, grad=grad), repeats, warmups=0
    )
    function_warm = median_seconds(lambda: pn.check_function(f, point, grad=grad), repeats, warmups=0)

    failing = median_seconds(lambda: check(mlp(planted_tanh()), raise_on_failure=False), repeats, warmups=0)
    report = check(mlp(planted_tanh()), raise_on_failure=False)
    print(
        json.dumps(
            {
                "machine": machine(),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "params": pn.count_params(params),
                "check_gradients_first_s": round(first, 3),
                "check_gradients_warm_s": round(warm, 3),
                "check_function_1000_first_s": round(function_first, 3),
                "check_function_1000_warm_s": round(function_warm, 3),
                "failing_and_located_s": round(failing, 3),
                "locating_over_plain_check": round(failing / first, 2),
                "located": str(report.culprit),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
