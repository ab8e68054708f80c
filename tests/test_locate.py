"""A failed check names where the derivation went wrong: planted slips, each caught and located.

Every slip here is planted in a hand-derived reference (never in JAX), and
the check must both fail and name the planted node: its layer, its params
path and which of its results is wrong.  The property test plants a wrong
backward at a random node of random networks; the node named must be the
planted one in every draw.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import Planter, costs

import purenet as pn
from purenet.layers.activations import np_sigmoid

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4))
LABELS = np.array([0, 1, 2, 0, 1, 2])


def planted(layer: pn.Layer, slip, name: str | None = None) -> pn.Layer:
    """``layer`` whose reference backward is passed through ``slip(g_params, g_x, params, x, g)``."""
    reference = layer.reference

    def forward(params, x):
        y, pullback = reference.run(params, x)
        return y, lambda g: slip(*pullback(g), params, x, g)

    return layer.replace(reference=pn.Reference(forward, reference.kinks), name=name or layer.name)


def failure(model, params, x=X, targets=LABELS, loss=pn.softmax_cross_entropy, **kwargs):
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_gradients(model, params, x, targets, loss, **kwargs)
    return caught.value.report


def init(model, width=4):
    return model.init(jax.random.PRNGKey(0), (-1, width))[1]


def flipped_sign(g_params, g_x, params, x, g):
    return g_params, -g_x


def test_a_flipped_sign_is_located_at_its_node_deep_in_the_network():
    bad = planted(pn.Tanh(), flipped_sign)
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.residual(pn.serial(pn.Dense(5), bad)), pn.Dense(3))
    report = failure(model, init(model), regularizer=pn.L2Penalty(1e-3))
    assert report.verdict == "derivation"
    assert report.culprit[:4] == ("backward", "Tanh", "params[2]['block'][1]", "g_x")
    assert len(report.failures) > 1  # the leaves upstream inherit it; the culprit is one node
    assert "the backward of Tanh at params[2]['block'][1] is wrong" in report.headline


def test_a_missing_transpose_is_located_with_the_leaf_it_corrupts():
    def no_transpose(g_params, g_x, params, x, g):
        return g_params, g @ params["w"]  # a square w, so the shape cannot betray it

    model = pn.serial(pn.Dense(4), planted(pn.Dense(4), no_transpose), pn.Dense(3))
    report = failure(model, init(model))
    assert report.culprit[:4] == ("backward", "Dense(4)", "params[1]", "g_x")


def test_a_wrong_params_gradient_names_the_param():
    def doubled_w(g_params, g_x, params, x, g):
        return {**g_params, "w": 2 * g_params["w"]}, g_x

    model = pn.serial(pn.Dense(5), pn.Tanh(), planted(pn.Dense(3), doubled_w))
    report = failure(model, init(model))
    assert report.culprit[:4] == ("backward", "Dense(3)", "params[2]", "g_params['w']")


def swish(np_derivative) -> pn.Layer:
    return pn.elementwise(
        "Swish",
        lambda z: z * jax.nn.sigmoid(z),
        np_fn=lambda z: z * np_sigmoid(z),
        np_derivative=np_derivative,
    )


def test_a_dropped_product_rule_term_is_located():
    model = pn.serial(pn.Dense(5), swish(np_sigmoid), pn.Dense(3))  # d/dz z sigma(z) taken as sigma(z)
    report = failure(model, init(model))
    assert report.culprit[:4] == ("backward", "Swish", "params[1]", "g_x")


def test_the_wrong_side_of_a_kink_is_located():
    # A ReLU at exactly z = 0: JAX and the reference take the derivative 0 there; this slip takes 1.
    def right_side(g_params, g_x, params, x, g):
        return g_params, g * (x >= 0)

    model = pn.serial(planted(pn.ReLU(), right_side), pn.Dense(3))
    x = X.copy()
    x[2, 1] = 0.0
    report = failure(model, init(model), x=x)
    assert report.culprit[:4] == ("backward", "ReLU", "params[0]", "g_x")
    assert report.culprit.where == "(2, 1)"


@pytest.mark.parametrize(
    "slip, message",
    [
        (lambda gp, gx, p, x, g: ([gp["w"], gp["b"]], gx), "expected a dict"),  # a wrong tree structure
        (lambda gp, gx, p, x, g: ({"W": gp["w"], "b": gp["b"]}, gx), "'W'"),  # a wrong key
        (lambda gp, gx, p, x, g: (gx, gp), "g_params"),  # swapped outputs
    ],
    ids=["wrong tree", "wrong key", "swapped outputs"],
)
def test_a_backward_of_the_wrong_tree_is_refused_naming_the_node(slip, message):
    model = pn.serial(pn.Dense(5), planted(pn.Dense(3), slip))
    with pytest.raises(pn.ParamsError) as caught:
        pn.check_gradients(model, init(model), X, LABELS, pn.softmax_cross_entropy)
    assert "Dense(3)" in str(caught.value) and "[1]" in str(caught.value) and message in str(caught.value)


def test_a_missing_one_over_n_in_a_loss_is_located_at_the_loss():
    reference = pn.losses.loss_reference(pn.mean_squared_error)

    def summed(outputs, targets):  # the slip: the gradient of the sum, not the mean
        value, grad = reference.value_and_grad(outputs, targets)
        return value, grad * outputs.size

    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    report = failure(
        model, init(model), targets=np.zeros((6, 3)), loss=pn.mean_squared_error,
        reference_loss=pn.LossReference(summed),
    )  # fmt: skip
    assert report.culprit[:4] == ("loss", "mean_squared_error", "loss", "g_outputs")


class DoubledL2:
    """An L2 penalty whose hand-derived gradient carries a stray factor 2 (2 lambda w)."""

    name = "DoubledL2"

    def __call__(self, params):
        return pn.l2_penalty(params, 0.1)

    @property
    def reference(self):
        right = pn.L2Penalty(0.1).reference

        def forward(params):
            value, pullback = right.forward(params)
            return value, lambda g: jax.tree_util.tree_map(lambda leaf: 2 * leaf, pullback(g))

        return pn.Reference(forward)


def test_a_wrong_penalty_gradient_is_located_at_the_penalty():
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    report = failure(model, init(model), regularizer=DoubledL2())
    assert report.culprit.stage == "penalty" and report.culprit.name == "DoubledL2"
    assert report.culprit.part == "g_params[0]['w']"


def test_a_forward_slip_is_its_own_failure_naming_the_layer():
    def off_by_half(layer):
        reference = layer.reference

        def forward(params, x):
            y, pullback = reference.run(params, x)
            return y + 0.5, pullback

        return layer.replace(reference=pn.Reference(forward))

    model = pn.serial(pn.Dense(5), off_by_half(pn.Sigmoid()), pn.Dense(3))
    report = failure(model, init(model))
    assert report.verdict == "forward"
    assert report.culprit[:4] == ("forward", "Sigmoid", "params[1]", "value")
    assert "FAILED: the forward" in str(report)


def test_check_layer_names_a_forward_slip_of_np_apply():
    layer = swish(lambda z: np_sigmoid(z) * (1 + z * (1 - np_sigmoid(z))))
    bprop = lambda p, x, g: ((), g * np_sigmoid(x) * (1 + x * (1 - np_sigmoid(x))))  # noqa: E731
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_layer(layer, (4, 3), bprop=bprop, np_apply=lambda p, x: x * np_sigmoid(x) + 0.5)
    report = caught.value.report
    assert report.verdict == "forward" and report.culprit.name == "Swish"
    assert "the forward of Swish" in str(caught.value)


def test_a_float32_constant_inside_a_layer_is_reported_as_precision_where_it_is_lost():
    scale = jnp.asarray(np.linspace(0.3, 1.7, 5), jnp.float32)  # captured: it stays float32
    exact = np.linspace(0.3, 1.7, 5)
    scaled = pn.Layer(
        lambda key, shape: (shape, ()),
        lambda params, x, *, key=None, train=False: x * scale,
        name="Scale",
        reference=pn.Reference.from_bprop(lambda p, x: x * exact, lambda p, x, g: ((), g * exact)),
    )
    model = pn.serial(pn.Dense(5), scaled, pn.Dense(3))
    report = failure(model, init(model))
    assert report.verdict == "precision"
    assert "float32 constant of shape (5,)" in report.headline
    assert "lost in Scale at params[1]" in report.headline


def test_a_passing_check_blames_nothing():
    model = pn.serial(
        pn.Dense(5), swish(lambda z: np_sigmoid(z) * (1 + z * (1 - np_sigmoid(z)))), pn.Dense(3)
    )
    report = pn.check_gradients(model, init(model), X, LABELS, pn.softmax_cross_entropy)
    assert report.passed and report.verdict == "passed" and report.culprit is None
    assert report.value_error <= 1e-12


def additive_slip(g_params, g_x, params, x, g):
    """Off by 0.1 everywhere: unlike a sign flip, it cannot vanish where g_x happens to be 0."""
    if jax.tree_util.tree_leaves(g_params):
        return jax.tree_util.tree_map(lambda leaf: leaf + 0.1, g_params), g_x
    return g_params, g_x + 0.1


def rename_planted(layer):
    return planted(layer, additive_slip, name="PLANTED")


PLANTED_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}


def check_the_planted_node_is_named(data):
    planter = Planter(data.draw(st.integers(0, 12), label="planted leaf"), rename_planted)
    model, params, x, targets, loss, regularizer = data.draw(costs(planter))
    assume(planter.planted is not None)
    report = pn.check_gradients(
        model, params, x, targets, loss, regularizer=regularizer, raise_on_failure=False
    )
    assume(not report.passed)  # an error no leaf can see (a dead unit) is not an error of the cost
    assert report.culprit is not None, str(report)
    assert report.culprit.name == "PLANTED", report.headline
    assert report.culprit.stage == "backward"
    assert _resolves(params, report.culprit.path), report.culprit.path


# 30 networks in 2 shards of 15, one per core under pytest-xdist (each shard its own hypothesis seed).
@pytest.mark.parametrize("shard", range(2))
@settings(max_examples=15, **PLANTED_SETTINGS)
@given(data=st.data())
def test_a_wrong_backward_planted_at_a_random_node_is_the_node_named(shard, data):
    check_the_planted_node_is_named(data)


@pytest.mark.slow
@settings(max_examples=500, **PLANTED_SETTINGS)
@given(st.data())
def test_a_wrong_backward_planted_in_500_random_networks_is_the_node_named(data):
    check_the_planted_node_is_named(data)


def _resolves(params, path: str) -> bool:
    """Whether ``params<path>`` names a subtree of the params (a path is its index chain)."""
    assert path.startswith("params")
    try:
        eval("params" + path.removeprefix("params"), {"params": params})  # a path purenet built
    except (KeyError, IndexError, TypeError):
        return False
    return True


class MisvaluedL2(DoubledL2):
    """An L2 penalty whose reference value forgets the 1/2 (its gradient is right)."""

    name = "MisvaluedL2"

    @property
    def reference(self):
        right = pn.L2Penalty(0.1).reference

        def forward(params):
            value, pullback = right.forward(params)
            return 2 * value, pullback

        return pn.Reference(forward)


def test_a_wrong_penalty_value_fails_the_cost_and_is_located():
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    report = failure(model, init(model), regularizer=MisvaluedL2())
    assert report.verdict == "forward" and report.value_error > 1e-3
    assert report.culprit[:4] == ("penalty", "MisvaluedL2", "regularizer", "value")
    assert all(leaf.passed for leaf in report.leaves)  # only the value is wrong


def test_check_layer_locates_a_slip_inside_a_combinator():
    block = pn.residual(pn.serial(pn.Dense(3), planted(pn.Tanh(), flipped_sign)))
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_layer(block, (4, 3))
    assert caught.value.report.culprit[:4] == ("backward", "Tanh", "params['block'][1]", "g_x")
