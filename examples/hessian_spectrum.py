"""The Hessian of a network's loss, before and during training, on real handwritten digits.

Two pictures of second-order structure (Deep Learning, sections 4.3.1 and
8.2.1: the Hessian's eigenvalues decide which step sizes gradient descent
can take):

1. The eigenvalue density of the Hessian at initialization and after
   training, by stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao
   2019): nearly all of the mass in a bulk near zero, a few outliers.
2. The top eigenvalue (the sharpness) along full-batch gradient descent with
   learning rate eta, measured by Lanczos every few steps.  On a quadratic,
   gradient descent diverges once the sharpness exceeds 2 / eta.  Here it
   starts above 2 / eta, yet the first steps throw the network into a
   flatter region instead of diverging; then the sharpness grows again
   (progressive sharpening) until it reaches 2 / eta and hovers there while
   the loss keeps falling: the edge of stability (Cohen, Kaur, Li, Kolter and
   Talwalkar 2021).

Data: scikit-learn's bundled 8x8 digits (no download), a seeded split.  The
network is a tanh MLP with squared error on one-hot targets, the setting in
which Cohen et al. see the effect most plainly.

Run:  python examples/hessian_spectrum.py [--quick] [--out DIR]
It writes two PNGs, says where, and exits non-zero if a claim fails.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import purenet as pn


def digits(seed: int = 0):
    """All 1,797 digits, pixels scaled to [0, 1], split 1,500 / 297 by a seeded permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = jnp.asarray(x[order] / 16.0, jnp.float32), jnp.asarray(y[order])
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def network() -> pn.Layer:
    return pn.serial(pn.Dense(64), pn.Tanh(), pn.Dense(64), pn.Tanh(), pn.Dense(10))


def squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error against the one-hot target, mean over classes and examples."""
    return jnp.mean(jnp.square(outputs - jax.nn.one_hot(labels, 10)))


def sharpness(model, params, x, y, key) -> float:
    """The top Hessian eigenvalue of the full-batch loss, by Lanczos (relative residual 1e-3)."""
    op = pn.model_operator(model, squared_error, params, x, y)
    return float(pn.lanczos(op, 1, tol=1e-3, key=key).values[0])


def gradient_descent(model, params, x, y, *, learning_rate: float, steps: int, every: int):
    """Full-batch gradient descent; the sharpness every ``every`` steps."""
    cost = lambda p: squared_error(model.apply(p, x), y)  # noqa: E731

    @jax.jit
    def step(p):
        loss, grads = jax.value_and_grad(cost)(p)
        return jax.tree_util.tree_map(lambda w, g: w - learning_rate * g, p, grads), loss

    trace = {"step": [], "sharpness": [], "loss": []}
    for t in range(steps + 1):
        if t % every == 0:
            trace["step"].append(t)
            trace["sharpness"].append(sharpness(model, params, x, y, jax.random.PRNGKey(t)))
            trace["loss"].append(float(cost(params)))
        if t < steps:
            params, _ = step(params)
    return params, trace


def accuracy(model, params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == y))


def bulk_fraction(density: pn.SpectralDensity, width: float = 0.05) -> float:
    """The share of the spectral mass within ``width`` x |largest eigenvalue| of zero."""
    scale = float(jnp.max(jnp.abs(density.nodes)))
    near_zero = jnp.abs(density.nodes) <= width * scale
    return float(jnp.sum(jnp.where(near_zero, density.weights, 0.0)) / density.nodes.shape[0])


def plot_sharpness(trace: dict, learning_rate: float, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(trace["step"], trace["sharpness"], label="top Hessian eigenvalue (Lanczos)")
    top.axhline(
        2 / learning_rate, color="k", linestyle="--", label=f"2 / learning rate = {2 / learning_rate:g}"
    )
    top.set_ylabel("sharpness")
    top.legend()
    bottom.semilogy(trace["step"], trace["loss"])
    bottom.set_xlabel("gradient descent step")
    bottom.set_ylabel("training loss")
    top.set_title("Full-batch gradient descent on digits: the edge of stability")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and probes (for CI)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out"))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    learning_rate = 0.4
    steps, every, probes = (600, 20, 4) if args.quick else (3000, 25, 8)

    (x, y), (x_test, y_test) = digits()
    model = network()
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    init_density = pn.spectral_density(
        pn.model_operator(model, squared_error, params, x, y), num_probes=probes
    )
    trained, trace = gradient_descent(
        model, params, x, y, learning_rate=learning_rate, steps=steps, every=every
    )
    final_density = pn.spectral_density(
        pn.model_operator(model, squared_error, trained, x, y), num_probes=probes
    )

    density_path = pn.plot_spectral_density(
        {"at initialization": init_density, f"after {steps} steps": final_density},
        str(out / "hessian_spectrum_density.png"),
        title="Hessian eigenvalue density on digits (stochastic Lanczos quadrature)",
    )
    sharpness_path = out / "hessian_spectrum_sharpness.png"
    plot_sharpness(trace, learning_rate, sharpness_path)

    edge = 2 / learning_rate
    sharp = np.asarray(trace["sharpness"])
    half = len(sharp) // 2
    late = sharp[half:]
    lowest = int(np.argmin(sharp))
    test_accuracy = accuracy(model, trained, x_test, y_test)
    slq_top = float(jnp.max(init_density.nodes)), float(jnp.max(final_density.nodes))
    bulk = bulk_fraction(final_density)
    print(f"2 / learning rate = {edge:g}; sharpness at initialization {sharp[0]:.3f}")
    print(f"lowest sharpness {sharp[lowest]:.3f} at step {trace['step'][lowest]}")
    print(f"sharpness over the second half of training: {late.min():.3f} to {late.max():.3f}")
    print(f"top eigenvalue by SLQ: {slq_top[0]:.3f} at initialization, {slq_top[1]:.3f} after training")
    print(f"after training, {100 * bulk:.1f}% of the spectral mass lies within 5% of the top's size around 0")
    losses = trace["loss"]
    print(f"training loss {losses[0]:.4f} -> {losses[half]:.4f} midway -> {losses[-1]:.4f}")
    print(f"test accuracy {100 * test_accuracy:.2f}%")
    print(f"wrote {density_path}")
    print(f"wrote {sharpness_path}")

    claims = {
        "Lanczos and SLQ agree on the top eigenvalue (1%)": abs(slq_top[0] - sharp[0]) <= 0.01 * sharp[0]
        and abs(slq_top[1] - sharp[-1]) <= 0.01 * sharp[-1],
        "the sharpness starts above 2/eta, yet gradient descent does not diverge": sharp[0] > edge,
        "it falls below 2/eta within the first steps": sharp[lowest] < 0.95 * edge and lowest < half,
        "then rises back to 2/eta (progressive sharpening)": late.max() >= 0.97 * edge,
        "and hovers there over the second half (0.85 to 1.2 x 2/eta)": bool(
            np.all((late >= 0.85 * edge) & (late <= 1.2 * edge))
        ),
        "while the loss keeps falling (lower at the end than midway)": trace["loss"][-1]
        < trace["loss"][half],
        "nearly all of the spectrum is a bulk near zero (>= 90%)": bulk >= 0.9,
        "the network learns digits (test accuracy >= 90%)": test_accuracy >= 0.90,
    }
    failed = [claim for claim, holds in claims.items() if not holds]
    for claim in failed:
        print(f"CLAIM FAILED: {claim}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
