"""The Hessian of a network's loss, before and during training, on real handwritten digits.

Two pictures of second-order structure (Deep Learning, sections 4.3.1 and
8.2.1: the Hessian's eigenvalues decide which step sizes gradient descent
can take):

1. The eigenvalue density of the Hessian at initialization and after
   training, by stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao
   2019): a bulk near zero and a few outliers that training pushes out.
2. The top eigenvalue (the sharpness) along full-batch gradient descent with
   learning rate eta, measured by Lanczos every few steps.  On a quadratic,
   gradient descent diverges once the sharpness exceeds 2 / eta.  Networks
   instead sharpen until they reach 2 / eta and then hover there: the edge
   of stability (Cohen, Kaur, Li, Kolter and Talwalkar 2021).

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
    """Half the squared distance to the one-hot target, summed over classes, mean over examples."""
    return 0.5 * jnp.mean(jnp.sum(jnp.square(outputs - jax.nn.one_hot(labels, 10)), axis=-1))


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


def plot_sharpness(trace: dict, learning_rate: float, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(trace["step"], trace["sharpness"], label="top Hessian eigenvalue (Lanczos)")
    top.axhline(2 / learning_rate, color="k", linestyle="--", label=f"2 / learning rate = {2 / learning_rate:g}")
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
    learning_rate = 0.5
    steps, every, probes = (600, 20, 4) if args.quick else (3000, 25, 8)

    (x, y), (x_test, y_test) = digits()
    model = network()
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    init_density = pn.spectral_density(pn.model_operator(model, squared_error, params, x, y), num_probes=probes)
    trained, trace = gradient_descent(model, params, x, y, learning_rate=learning_rate, steps=steps, every=every)
    final_density = pn.spectral_density(pn.model_operator(model, squared_error, trained, x, y), num_probes=probes)

    density_path = pn.plot_spectral_density(
        {"at initialization": init_density, f"after {steps} steps": final_density},
        str(out / "hessian_spectrum_density.png"),
        title="Hessian eigenvalue density on digits (stochastic Lanczos quadrature)",
    )
    sharpness_path = out / "hessian_spectrum_sharpness.png"
    plot_sharpness(trace, learning_rate, sharpness_path)

    edge = 2 / learning_rate
    sharp = np.asarray(trace["sharpness"])
    late = sharp[len(sharp) // 2 :]
    test_accuracy = accuracy(model, trained, x_test, y_test)
    print(f"sharpness at initialization {sharp[0]:.3f}; 2 / learning rate = {edge:g}")
    print(f"sharpness over the second half of training: {late.min():.3f} to {late.max():.3f}")
    print(f"top of the spectrum by SLQ: {float(jnp.max(init_density.nodes)):.3f} at initialization, "
          f"{float(jnp.max(final_density.nodes)):.3f} after training")
    print(f"training loss {trace['loss'][0]:.4f} -> {trace['loss'][-1]:.4f}; test accuracy {100 * test_accuracy:.2f}%")
    print(f"wrote {density_path}")
    print(f"wrote {sharpness_path}")

    claims = {
        "training sharpens the loss: sharpness grows at least 3x from initialization": sharp.max() >= 3 * sharp[0],
        "sharpness rises to the edge (max >= 0.9 x 2/eta)": sharp.max() >= 0.9 * edge,
        "and hovers there, not far above (late sharpness within 0.7-1.3 x 2/eta)": bool(
            np.all((late >= 0.7 * edge) & (late <= 1.3 * edge))
        ),
        "the loss still falls at the edge": trace["loss"][-1] < 0.5 * trace["loss"][len(sharp) // 2],
        "the spectrum's outlier moves out with training": float(jnp.max(final_density.nodes))
        >= 3 * float(jnp.max(init_density.nodes)),
        "the network learns digits (test accuracy >= 90%)": test_accuracy >= 0.90,
    }
    failed = [claim for claim, holds in claims.items() if not holds]
    for claim in failed:
        print(f"CLAIM FAILED: {claim}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
