"""Hypothesis strategies shared by the property tests: random architectures and costs.

``blocks`` draws one block from every layer and combinator purenet has (widths
1 to 16, maxout pieces 1 to 4, shared or per-feature PReLU, nested up to two
levels); ``networks`` chains 1 to 6 of them; ``costs`` adds an output layer,
a loss of every kind with matching targets, and a regularizer.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import purenet as pn
from purenet.cost_reference import params_template

UNITS = [
    pn.ReLU,
    pn.AbsRect,
    pn.LeakyReLU,
    pn.PReLU,
    lambda: pn.PReLU(shared=True),
    pn.Sigmoid,
    pn.Tanh,
    pn.Softplus,
    pn.HardTanh,
    pn.Cos,
    pn.Identity,
]

COMBINATORS = ["serial", "residual", "dense_block", "repeat", "concat_branches", "sum_branches"]


class Planter:
    """Replaces the ``index``-th leaf layer drawn by ``plant(layer)`` (a test's wrong derivation)."""

    def __init__(self, index: int, plant):
        self.index, self.plant, self.drawn, self.planted = index, plant, 0, None

    def __call__(self, layer):
        self.drawn += 1
        if self.drawn - 1 != self.index:
            return layer
        self.planted = self.plant(layer)
        return self.planted


@st.composite
def leaves(draw, planter=None):
    """A leaf layer of width 1 to 16 (passed through ``planter`` when given)."""
    layer = draw(_leaves())
    return layer if planter is None else planter(layer)


@st.composite
def _leaves(draw):
    width = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["dense", "low_rank", "maxout", "rbf", "unit", "dropout", "flatten"]))
    if kind == "dense":
        return pn.Dense(width)
    if kind == "low_rank":
        return pn.LowRankDense(width, draw(st.integers(1, 4)))
    if kind == "maxout":
        return pn.Maxout(width, draw(st.integers(1, 4)))
    if kind == "rbf":
        return pn.RBF(width)
    if kind == "dropout":
        return pn.Dropout(0.1)
    if kind == "flatten":
        return pn.Flatten()
    return draw(st.sampled_from(UNITS))()


@st.composite
def blocks(draw, nesting: int = 0, planter=None):
    """A leaf or, up to two levels deep, a combinator of blocks."""
    if nesting >= 2 or draw(st.booleans()):
        return draw(leaves(planter))
    kind = draw(st.sampled_from(COMBINATORS))
    children = lambda: [draw(blocks(nesting + 1, planter)) for _ in range(draw(st.integers(1, 3)))]  # noqa: E731
    if kind == "serial":
        return pn.serial(*children())
    if kind == "residual":
        return pn.residual(pn.serial(*children()))
    if kind == "dense_block":
        return pn.dense_block(*children())
    if kind == "repeat":
        width = draw(st.integers(1, 16))
        block = pn.serial(pn.Dense(width), draw(st.sampled_from(UNITS))())
        return pn.serial(pn.Dense(width), pn.repeat(block, draw(st.integers(1, 3))))
    if kind == "concat_branches":
        branches = pn.parallel(pn.serial(*children()), pn.serial(*children()))
        return pn.serial(pn.fan_out(2), branches, pn.fan_in_concat())
    width = draw(st.integers(1, 16))
    return pn.serial(pn.fan_out(2), pn.parallel(pn.Dense(width), pn.Dense(width)), pn.fan_in_sum())


@st.composite
def networks(draw, planter=None):
    """A chain of 1 to 6 blocks."""
    return pn.serial(*[draw(blocks(0, planter)) for _ in range(draw(st.integers(1, 6)))])


LOSSES = ["mse", "bce", "bce_probabilities", "softmax", "softmax_probabilities", "gaussian", "hinge"]


def _targets(kind: str, batch: int, width: int, rng: np.random.Generator):
    """The output width the loss needs and targets of the right kind."""
    if kind == "mse":
        return pn.mean_squared_error, width, rng.standard_normal((batch, width))
    if kind == "bce":
        return pn.binary_cross_entropy, width, rng.integers(0, 2, (batch, width)).astype(np.float64)
    if kind == "bce_probabilities":
        return pn.binary_cross_entropy, width, rng.uniform(size=(batch, width))
    if kind == "softmax":
        return pn.softmax_cross_entropy, width, rng.integers(0, width, batch)
    if kind == "softmax_probabilities":
        return pn.softmax_cross_entropy, width, rng.dirichlet(np.ones(width), batch)
    if kind == "gaussian":
        return pn.gaussian_nll, 2 * width, rng.standard_normal((batch, width))
    return pn.multiclass_hinge, width, rng.integers(0, width, batch)


@st.composite
def costs(draw, planter=None):
    """A random network with an output layer, params off their init, inputs, targets, loss, regularizer.

    Params are moved off their initial values (biases off zero, every leaf
    jittered) so that no preactivation sits exactly on a kink by construction.
    """
    body = draw(networks(planter))
    kind = draw(st.sampled_from(LOSSES))
    width, in_width, batch = draw(st.integers(1, 5)), draw(st.integers(1, 16)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    loss, out_width, targets = _targets(kind, batch, width, rng)
    model = pn.serial(body, pn.Dense(out_width))
    params = random_params(model, (-1, in_width), rng)
    regularizer = draw(st.sampled_from([None, pn.L2Penalty(1e-2), pn.L1Penalty(1e-2)]))
    return model, params, rng.standard_normal((batch, in_width)), targets, loss, regularizer


def random_params(model, input_shape, rng: np.random.Generator):
    """Random float64 params of the model's structure, with no JAX work but shape inference.

    ``jax.eval_shape`` gives the params' structure without running (or
    compiling) the initializers.  Every leaf is drawn N(0, 1 / fan) with fan
    its second-to-last axis (1/4 for vectors), so biases and slopes are off
    zero; an RBF layer's widths sigma are drawn around sqrt(d), its init.
    """
    # The reference's own cached template: a check of the same model then traces its init once, not twice.
    template = params_template(model, np.zeros((1, *input_shape[1:])))

    def fill(tree):
        if isinstance(tree, dict):
            filled = {key: fill(value) for key, value in tree.items()}
            if set(tree) == {"w", "sigma"}:  # an RBF layer
                width = tree["w"].shape[-2]
                filled["sigma"] = np.sqrt(width) * rng.uniform(0.7, 1.3, tree["sigma"].shape)
            return filled
        if isinstance(tree, (tuple, list)):
            return type(tree)(fill(value) for value in tree)
        fan = tree.shape[-2] if len(tree.shape) >= 2 else 4
        return rng.standard_normal(tree.shape) / np.sqrt(fan)

    return fill(template)
