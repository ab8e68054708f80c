"""Depth against width at one parameter budget, on handwritten digits (Deep Learning, section 6.4.1).

Two ReLU MLPs with the same number of parameters (within 2%): one hidden
layer, wide; and four hidden layers, narrow.  Both train with the same
optimizer, batches and epochs on the same split; the plot shows their test
accuracy after every epoch.  The book's figures 6.6 and 6.7 make the case
that depth, not sheer parameter count, buys generalization on harder tasks;
on 8x8 digits both reach high accuracy, and the script reports which one
is ahead, epoch by epoch, as measured.

Run:  python examples/depth_vs_width.py [--quick] [--out DIR]
It writes depth_vs_width.png and exits 1 if a claim fails.
"""

from __future__ import annotations

import itertools
import sys

import jax
import numpy as np
import optax
from common import arguments, figure, report, save

import purenet as pn


def mlp(widths: list[int]) -> pn.Layer:
    layers = [layer for width in widths for layer in (pn.Dense(width), pn.ReLU())]
    return pn.serial(*layers, pn.Dense(10))


def parameter_count(widths: list[int], inputs: int = 64, outputs: int = 10) -> int:
    """Weights and biases of Dense layers inputs -> widths... -> outputs, counted in closed form."""
    sizes = [inputs, *widths, outputs]
    return sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))


def narrow_width_for(budget: int, depth: int) -> int:
    """The width at which ``depth`` equal hidden layers come closest to ``budget`` parameters."""
    return min(range(4, 513), key=lambda w: abs(parameter_count([w] * depth) - budget))


def train(widths, data, epochs: int, seed: int):
    model = mlp(widths)
    _, params = model.init(jax.random.PRNGKey(seed), (-1, 64))
    result = pn.fit(
        model, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy,
        optimizer=optax.adam(1e-3), epochs=epochs, batch_size=32, key=jax.random.PRNGKey(100 + seed),
        validation=(data.x_test, data.y_test), metrics={"accuracy": pn.accuracy},
    )  # fmt: skip
    return np.asarray(result.history["val_accuracy"])


def main(argv=None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    epochs, seeds = (10, 1) if args.quick else (40, 5)
    data = pn.load_digits(test_fraction=0.3)
    shallow = [256]
    budget = parameter_count(shallow)
    deep = [narrow_width_for(budget, 4)] * 4
    counts = {  # counted by purenet from the initialized models, which checks the closed form
        name: pn.count_params(mlp(widths).init(jax.random.PRNGKey(0), (-1, 64))[1])
        for name, widths in (("shallow", shallow), ("deep", deep))
    }
    print(f"shallow {shallow}: {counts['shallow']:,} params; deep {deep}: {counts['deep']:,} params")

    curves = {name: np.mean([train(w, data, epochs, s) for s in range(seeds)], axis=0)
              for name, w in (("shallow", shallow), ("deep", deep))}  # fmt: skip
    for epoch in (0, epochs // 2, epochs - 1):
        ahead = "deep" if curves["deep"][epoch] > curves["shallow"][epoch] else "shallow"
        print(f"epoch {epoch + 1}: test accuracy shallow {curves['shallow'][epoch]:.2%}, "
              f"deep {curves['deep'][epoch]:.2%} ({ahead} ahead; mean of {seeds} seeds)")  # fmt: skip

    fig, axes = figure()
    ax = axes[0, 0]
    for name, widths in (("shallow", shallow), ("deep", deep)):
        ax.plot(range(1, epochs + 1), curves[name], label=f"{name}: hidden {widths}, {counts[name]:,} params")
    ax.set(xlabel="epoch", ylabel="test accuracy", title="Same parameter budget on digits", ylim=(0.8, 1.0))
    ax.legend()
    save(fig, args.out / "depth_vs_width.png")
    return report(
        {
            "the two budgets match within 2%": abs(counts["deep"] - counts["shallow"]) <= 0.02 * budget,
            "the shallow, wide network learns digits (final test accuracy >= 93%)": curves["shallow"][-1]
            >= 0.93,
            "the deep, narrow one too (>= 93%)": curves["deep"][-1] >= 0.93,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
