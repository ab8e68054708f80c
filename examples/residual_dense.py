"""Plain, residual and dense-block MLPs of equal size at depth 30 (Deep Learning, section 6.4.2).

Three tanh networks on digits, each with 30 weight layers and about the same
number of parameters:

- plain: 30 Dense(32) + tanh layers in a chain;
- residual: the same layers, paired into 15 skip blocks y = x + f(x)
  (He et al. 2016): the identity path carries the gradient past each block;
- dense: DenseNet-style blocks (Huang et al. 2017) where each layer sees the
  concatenation of all earlier outputs in its block, joined by Dense(32)
  transitions.

At initialization it measures the gradient norm of every weight matrix
(the book's back-propagation, layer by layer), twice.  With Glorot's
initialization (what purenet picks for tanh), even the plain chain keeps its
gradients within a small factor across layers: that is what the
initialization was designed for (Glorot and Bengio 2010).  With weights at
half that variance, the signal shrinks at every plain layer and the plain
chain's gradients collapse by orders of magnitude, while the identity paths
of the residual and dense networks carry them through.  Then it trains all
three (Glorot) with the same optimizer and batches: the skip connections
train faster and generalize better, although no gradient vanished.

Run:  python examples/residual_dense.py [--quick] [--out DIR]
It writes residual_dense.png and exits 1 if a claim fails.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from common import arguments, figure, report, save

import purenet as pn

WIDTH, DEPTH = 32, 30


def plain(w_init=None) -> pn.Layer:
    layers = [layer for _ in range(DEPTH) for layer in (pn.Dense(WIDTH, w_init), pn.Tanh())]
    return pn.serial(*layers, pn.Dense(10, w_init))


def residual(w_init=None) -> pn.Layer:
    block = lambda: pn.serial(pn.Dense(WIDTH, w_init), pn.Tanh(), pn.Dense(WIDTH, w_init), pn.Tanh())  # noqa: E731
    skips = [pn.residual(block()) for _ in range(DEPTH // 2 - 1)]
    return pn.serial(
        pn.Dense(WIDTH, w_init), pn.Tanh(), *skips, pn.Dense(WIDTH, w_init), pn.Tanh(), pn.Dense(10, w_init)
    )


def dense(w_init=None) -> pn.Layer:
    """6 blocks of 4 layers of growth 12, each block followed by a Dense(32) transition: 30 weight layers."""
    layer = lambda: pn.serial(pn.Dense(12, w_init), pn.Tanh())  # noqa: E731
    units = [pn.Dense(WIDTH, w_init), pn.Tanh()]
    for _ in range(6):
        units += [pn.dense_block(*[layer() for _ in range(4)]), pn.Dense(WIDTH, w_init), pn.Tanh()]
    return pn.serial(*units[:-2], pn.Dense(10, w_init))


BUILDERS = {"plain": plain, "residual": residual, "dense blocks": dense}
HALF_VARIANCE = jax.nn.initializers.variance_scaling(0.5, "fan_in", "normal")  # half of LeCun's 1 / fan_in


def weight_gradient_norms(model, params, x, y) -> np.ndarray:
    """||dJ/dW|| of every weight matrix, input side first (tree order follows the layers)."""
    grads = jax.grad(lambda p: pn.softmax_cross_entropy(model.apply(p, x), y))(params)
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    return np.array(
        [float(np.linalg.norm(g)) for path, g in leaves if jax.tree_util.keystr(path).endswith("['w']")]
    )


def spread(norms: np.ndarray) -> float:
    """The largest weight gradient over the smallest."""
    return float(norms.max() / norms.min())


def main(argv=None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    epochs = 5 if args.quick else 30
    data = pn.load_digits()
    norms, small_init_norms, curves, sizes, accuracy = {}, {}, {}, {}, {}
    for name, build in BUILDERS.items():
        model = build()  # Glorot, what serial picks for the weights feeding tanh units
        _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
        sizes[name] = pn.count_params(params)
        norms[name] = weight_gradient_norms(model, params, data.x_train, data.y_train)
        small = build(HALF_VARIANCE)
        small_init_norms[name] = weight_gradient_norms(
            small, small.init(jax.random.PRNGKey(0), (-1, 64))[1], data.x_train, data.y_train
        )
        result = pn.fit(
            model, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy,
            optimizer=optax.adam(1e-3), epochs=epochs, batch_size=64, key=jax.random.PRNGKey(1),
            validation=(data.x_test, data.y_test), metrics={"accuracy": pn.accuracy},
        )  # fmt: skip
        curves[name], accuracy[name] = result.history["loss"], result.history["val_accuracy"][-1]
        print(
            f"{name}: {len(norms[name])} weight layers, {sizes[name]:,} params; at a Glorot init the weight "
            f"gradients span {spread(norms[name]):.1f}x (first layer {norms[name][0]:.1e}); "
            f"at a half-variance init the first layer's is {small_init_norms[name][0]:.1e}; "
            f"after {epochs} epochs loss {curves[name][-1]:.4f}, test accuracy {accuracy[name]:.2%}"
        )

    fig, axes = figure(1, 2)
    for name in BUILDERS:
        layers = range(1, len(norms[name]) + 1)
        line = axes[0, 0].semilogy(layers, norms[name], "o-", ms=3, label=f"{name}, Glorot")
        axes[0, 0].semilogy(
            layers,
            small_init_norms[name],
            "--",
            color=line[0].get_color(),
            label=f"{name}, half-variance init",
        )
        axes[0, 1].semilogy(range(1, epochs + 1), curves[name], label=f"{name} ({sizes[name]:,} params)")
    axes[0, 0].set(xlabel="weight layer (input side first)", ylabel="||dJ/dW|| at initialization",
                   title=f"Gradients through {DEPTH} tanh layers")  # fmt: skip
    axes[0, 1].set(xlabel="epoch", ylabel="training loss", title="Training on digits (Adam, same batches)")
    for ax in axes[0]:
        ax.legend()
    save(fig, args.out / "residual_dense.png")

    equal_size = all(len(n) == 31 for n in norms.values()) and max(sizes.values()) <= 1.15 * min(
        sizes.values()
    )
    first = {name: n[0] for name, n in small_init_norms.items()}
    collapse = min(first["residual"], first["dense blocks"]) / first["plain"]
    skips_loss = max(curves["residual"][-1], curves["dense blocks"][-1])
    skips_accuracy = min(accuracy["residual"], accuracy["dense blocks"])
    print(
        f"at the half-variance init the skip networks' input-side gradients are {collapse:.0f}x the plain's"
    )
    return report(
        {
            "three networks of 30 hidden weight layers, sizes within 15%": equal_size,
            "at Glorot's init even the plain chain's gradients stay within 10x across layers": spread(
                norms["plain"]
            )
            < 10,
            "at half that variance the plain input-side gradient is >= 100x smaller than with skips": collapse
            >= 100,
            "residual and dense train to a lower loss than plain": skips_loss < curves["plain"][-1],
            "and generalize better (higher test accuracy)": skips_accuracy > accuracy["plain"],
        }
    )


if __name__ == "__main__":
    sys.exit(main())
