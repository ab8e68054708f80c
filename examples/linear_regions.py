"""How many linear pieces a rectifier network carves as depth grows (Montufar et al. 2014; the book's 6.4.1).

A ReLU or absolute-value network is piecewise linear: inside one region of
input space every unit keeps its on/off state (its activation pattern), and
the network is one affine map.  Montufar, Pascanu, Cho and Bengio (2014)
show depth can multiply the number of regions: each layer of absolute-value
units can fold the input space onto itself, and the folds compose.

1. The folding construction on [0, 1]: the layer g(x) = |2x - 1| (one
   absolute-value unit) maps [0, 1] onto itself twice, so L layers carve
   exactly 2^L linear pieces, with L units in all; a one-hidden-layer
   network needs 2^L - 1 units for as many pieces.  Counted two independent
   ways: by activation patterns and by changes of slope.
2. Random ReLU networks of width 16 at depths 1 to 8 (He initialization),
   regions counted along a line through input space: the count grows with
   the number of units, far below 2^depth (Hanin and Rolnick 2019 find it
   grows roughly linearly in the units at initialization).
3. A picture: the regions of random ReLU networks on a 2-D input, one
   colour per activation pattern, at depths 1, 2 and 4.

Run:  python examples/linear_regions.py [--quick] [--out DIR]
It writes linear_regions.png and exits 1 if a claim fails.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from common import arguments, figure, report, save

import purenet as pn

UNIT_NAMES = ("ReLU", "AbsRect")


def patterns(model: pn.Layer, params, x: jax.Array) -> np.ndarray:
    """The activation pattern of every input row: the sign of each rectifier's pre-activation, as bits."""
    signs = []
    h = x
    for layer, p in zip(model.children, params):
        if layer.name in UNIT_NAMES:
            signs.append(h > 0)
        h = layer.apply(p, h)
    return np.asarray(jnp.concatenate(signs, axis=-1))


def regions_along(model, params, points) -> int:
    """1 + the number of places where consecutive points along a line change activation pattern."""
    bits = patterns(model, params, points)
    return 1 + int(np.any(bits[1:] != bits[:-1], axis=1).sum())


def pieces_by_slope(model, params, t: np.ndarray) -> int:
    """1 + the number of kinks of the network's output along t, found without activation patterns.

    A kink between two samples makes the second difference of the output
    nonzero at two neighbouring positions, so kinks are counted as runs of
    nonzero second differences (kinks are assumed more than 2 samples apart).
    """
    y = np.asarray(model.apply(params, jnp.asarray(t[:, None], jnp.float64)))[:, 0]
    bent = ~np.isclose(np.diff(y, 2), 0.0, atol=1e-9)
    return 1 + int(np.sum(bent[1:] & ~bent[:-1]) + bent[0])


def folding_network(depth: int):
    """L layers of g(x) = |2x - 1|: each is Dense(1) with w = 2, b = -1, then AbsRect."""
    layers, params = [], []
    for _ in range(depth):
        layers += [pn.Dense(1), pn.AbsRect()]
        params += [{"w": jnp.array([[2.0]], jnp.float64), "b": jnp.array([-1.0], jnp.float64)}, ()]
    return pn.serial(*layers), tuple(params)


def random_relu(depth: int, width: int, inputs: int, seed: int):
    """He-initialized weights; biases drawn N(0, 0.1) rather than purenet's zeros.

    With zero biases a ReLU network is positively homogeneous, f(a x) = a f(x)
    for a > 0, so its regions are cones from the origin; random biases give
    the generic picture.
    """
    layers = [layer for _ in range(depth) for layer in (pn.Dense(width), pn.ReLU())]
    model = pn.serial(*layers, pn.Dense(1))
    _, params = model.init(jax.random.PRNGKey(seed), (-1, inputs))
    rng = np.random.default_rng(seed)
    params = tuple(
        {**p, "b": jnp.asarray(0.1 * rng.standard_normal(p["b"].shape), jnp.float32)} if p else p
        for p in params
    )
    return model, params


def main(argv=None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    samples = 20_001 if args.quick else 200_001
    depths = range(1, 9)

    with jax.enable_x64(True):
        # samples at odd multiples of 2^-(L+2), never on a kink k / 2^L of the folding network
        t = (np.arange(2**14) + 0.5) / 2**14
        folding = {}
        for depth in range(1, 8):
            model, params = folding_network(depth)
            line = jnp.asarray(t[:, None])
            folding[depth] = (regions_along(model, params, line), pieces_by_slope(model, params, t))
    for depth, (by_pattern, by_slope) in folding.items():
        print(f"folding network, depth {depth}: {by_pattern} regions by activation pattern, "
              f"{by_slope} pieces by slope (2^{depth} = {2 ** depth})")  # fmt: skip

    width, inputs = 16, 8
    seeds = range(2 if args.quick else 5)
    direction = np.random.default_rng(0).standard_normal(inputs)
    line = jnp.asarray(
        np.linspace(-3, 3, samples)[:, None] * direction / np.linalg.norm(direction), jnp.float32
    )
    random_counts = {
        depth: float(np.mean([regions_along(*random_relu(depth, width, inputs, s), line) for s in seeds]))
        for depth in depths
    }
    for depth, count in random_counts.items():
        print(
            f"random ReLU network, depth {depth} x width {width}: "
            f"{count:.1f} regions along a line (mean of {len(seeds)})"
        )

    fig, axes = figure(1, 4, size=(4.0, 4.0))
    ax = axes[0, 0]
    ax.plot(list(folding), [2**d for d in folding], "k--", label="2^depth")
    ax.plot(list(folding), [c[0] for c in folding.values()], "o", label="folding network (|2x-1|)")
    ax.plot(list(random_counts), list(random_counts.values()), "s-", label=f"random ReLU, width {width}")
    ax.set(
        yscale="log", xlabel="depth", ylabel="linear regions along a line", title="Depth multiplies regions"
    )
    ax.legend(fontsize=8)
    grid = np.linspace(-2, 2, 300 if args.quick else 600)
    gx, gy = np.meshgrid(grid, grid)
    plane = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), jnp.float32)
    for ax, depth in zip(axes[0, 1:], (1, 2, 4)):
        bits = patterns(*random_relu(depth, 8, 2, seed=1), plane)
        _, ids = np.unique(bits, axis=0, return_inverse=True)
        shuffled = np.random.default_rng(0).permutation(ids.max() + 1)[ids.reshape(-1)]
        ax.imshow(shuffled.reshape(gx.shape), cmap="tab20", origin="lower", extent=(-2, 2, -2, 2))
        ax.set_title(f"ReLU, depth {depth} x width 8: {ids.max() + 1} regions")
    save(fig, args.out / "linear_regions.png")

    per_unit = {depth: count / (depth * width) for depth, count in random_counts.items()}
    return report(
        {
            "the folding network of depth L carves exactly 2^L regions (L = 1..7)": all(
                c[0] == 2**d for d, c in folding.items()
            ),
            "counting by slope changes agrees with counting by activation patterns": all(
                c[0] == c[1] for c in folding.values()
            ),
            f"one hidden layer of {width} units: at most {width + 1} regions along a line": random_counts[1]
            <= width + 1,
            "random ReLU networks: more regions as depth grows (depth 8 > 2 x depth 1)": random_counts[8]
            > 2 * random_counts[1],
            "but far fewer than 2^depth at depth 8 (< 2^8 / 2)": random_counts[8] < 2**8 / 2,
            "roughly linear in the units (regions per unit at depth 8 within 2x of depth 2)": 0.5
            <= per_unit[8] / per_unit[2]
            <= 2,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
