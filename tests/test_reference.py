"""The hand-derived reference: every layer, combinator, loss and penalty, three ways.

Each case runs ``check_layer`` or ``check_gradients``, which compare the
reference with ``jax.grad`` (1e-10) and finite differences in float64 (1e-6).
Closed forms and the transcribed Algorithm 6.4 check the composition itself.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

LAYERS = {
    "Dense": (pn.Dense(3), (4, 5)),
    "Dense on rank 3": (pn.Dense(3), (2, 4, 5)),
    "LowRankDense": (pn.LowRankDense(3, 2), (4, 5)),
    "Maxout": (pn.Maxout(3, 4), (4, 5)),
    "Maxout on rank 3": (pn.Maxout(3, 2), (2, 3, 5)),
    "Maxout, one piece": (pn.Maxout(3, 1), (4, 5)),
    "RBF": (pn.RBF(3), (4, 5)),
    "RBF on rank 3": (pn.RBF(3), (2, 3, 5)),
    "PReLU": (pn.PReLU(), (4, 5)),
    "PReLU shared": (pn.PReLU(shared=True), (4, 5)),
    "PReLU on rank 3": (pn.PReLU(), (2, 3, 5)),
    "ReLU": (pn.ReLU(), (4, 5)),
    "AbsRect": (pn.AbsRect(), (4, 5)),
    "LeakyReLU": (pn.LeakyReLU(0.2), (4, 5)),
    "Sigmoid": (pn.Sigmoid(), (4, 5)),
    "Tanh": (pn.Tanh(), (4, 5)),
    "Softplus": (pn.Softplus(), (4, 5)),
    "HardTanh": (pn.HardTanh(), (4, 5)),
    "Cos": (pn.Cos(), (4, 5)),
    "Identity": (pn.Identity(), (4, 5)),
    "Flatten": (pn.Flatten(), (4, 2, 3)),
    "Dropout": (pn.Dropout(0.3), (4, 5)),
}

COMBINATORS = {
    "serial": (pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(2)), (4, 5)),
    "parallel": (pn.parallel(pn.Dense(2), pn.Tanh()), ((4, 2), (4, 3))),
    "fan_out": (pn.fan_out(3), (4, 5)),
    "fan_in_sum": (pn.fan_in_sum(), ((4, 5), (4, 5), (4, 5))),
    "fan_in_concat": (pn.fan_in_concat(), ((4, 2), (4, 3))),
    "branches": (
        pn.serial(pn.fan_out(2), pn.parallel(pn.Dense(3), pn.Sigmoid()), pn.fan_in_concat()),
        (4, 3),
    ),
    "residual": (pn.residual(pn.serial(pn.Dense(5), pn.Softplus())), (4, 5)),
    "residual with projection": (pn.residual(pn.serial(pn.Dense(3), pn.Tanh())), (4, 5)),
    "dense_block": (pn.dense_block(pn.Dense(2), pn.Tanh(), pn.Maxout(2, 2)), (4, 5)),
    "repeat": (pn.repeat(pn.serial(pn.Dense(5), pn.Tanh()), 3), (4, 5)),
    "repeat without params": (pn.repeat(pn.Sigmoid(), 3), (4, 5)),
    "nested": (
        pn.serial(
            pn.residual(pn.dense_block(pn.Dense(3), pn.PReLU())),
            pn.repeat(pn.residual(pn.serial(pn.Dense(16), pn.Cos())), 2),
        ),
        (4, 5),
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_passes_the_three_way_check(name):
    layer, shape = LAYERS[name]
    report = pn.check_layer(layer, shape)
    assert report.passed and report.forward_error <= 1e-12


@pytest.mark.parametrize("name", list(COMBINATORS))
def test_every_combinator_passes_the_three_way_check(name):
    layer, shape = COMBINATORS[name]
    report = pn.check_layer(layer, shape)
    assert report.passed and report.forward_error <= 1e-12


def _targets(loss, rng, batch=6, width=3):
    return {
        "mse": (pn.mean_squared_error, width, rng.standard_normal((batch, width))),
        "bce": (pn.binary_cross_entropy, width, rng.integers(0, 2, (batch, width)).astype(float)),
        "bce soft": (pn.binary_cross_entropy, width, rng.uniform(size=(batch, width))),
        "softmax": (pn.softmax_cross_entropy, width, rng.integers(0, width, batch)),
        "softmax soft": (pn.softmax_cross_entropy, width, rng.dirichlet(np.ones(width), batch)),
        "gaussian": (pn.gaussian_nll, 2 * width, rng.standard_normal((batch, width))),
        "hinge": (pn.multiclass_hinge, width, rng.integers(0, width, batch)),
    }[loss]


LOSSES = ["mse", "bce", "bce soft", "softmax", "softmax soft", "gaussian", "hinge"]
PENALTIES = {"none": None, "L2": pn.L2Penalty(0.1), "L1": pn.L1Penalty(0.1)}


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("loss_name", LOSSES)
def test_every_loss_and_penalty_passes_the_three_way_check(loss_name, penalty, key):
    rng = np.random.default_rng(0)
    loss, width, y = _targets(loss_name, rng)
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(width))
    params = model.init(key, (-1, 4))[1]
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # biases off zero, for L1
    x = rng.standard_normal((6, 4))
    assert pn.check_gradients(model, params, x, y, loss, regularizer=PENALTIES[penalty]).passed


@pytest.mark.parametrize("loss_name", LOSSES)
def test_every_loss_reference_value_matches_jax(loss_name):
    rng = np.random.default_rng(1)
    loss, width, y = _targets(loss_name, rng)
    z = 3 * rng.standard_normal((6, width))
    value, grad = pn.losses.loss_reference(loss).value_and_grad(z, y)
    with jax.enable_x64(True):
        np.testing.assert_allclose(value, loss(jnp.asarray(z), jnp.asarray(y)), rtol=1e-13)
    assert grad.shape == z.shape


def test_loss_gradients_have_the_books_closed_forms():
    rng = np.random.default_rng(2)
    z, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p = np.eye(3)[labels]
    _, g = pn.losses.loss_reference(pn.softmax_cross_entropy).value_and_grad(z, labels)
    np.testing.assert_allclose(g, (q - p) / 4, rtol=1e-13)  # q - p, per row of the mean
    y = rng.integers(0, 2, (4, 3)).astype(float)
    _, g = pn.losses.loss_reference(pn.binary_cross_entropy).value_and_grad(z, y)
    np.testing.assert_allclose(g, (1 / (1 + np.exp(-z)) - y) / 12, rtol=1e-13)  # sigma(z) - y


def test_gaussian_nll_reference_is_exact_for_very_negative_rho():
    # rho < -30 takes the JAX path's log beta = rho branch; both must agree.
    outputs, y = np.array([[0.5, -40.0]]), np.array([[0.2]])
    value, grad = pn.losses.loss_reference(pn.gaussian_nll).value_and_grad(outputs, y)
    with jax.enable_x64(True):
        np.testing.assert_allclose(value, pn.gaussian_nll(jnp.asarray(outputs), jnp.asarray(y)), rtol=1e-12)
        jax_grad = jax.grad(pn.gaussian_nll)(jnp.asarray(outputs), jnp.asarray(y))
    np.testing.assert_allclose(grad, jax_grad, rtol=1e-10)


def test_penalty_reference_gradients_are_closed_forms():
    params = ({"w": np.array([[1.5, -2.0], [0.0, 0.5]]), "b": np.array([3.0, -1.0])},)
    g2 = pn.L2Penalty(0.1).reference.value_and_grad(params)[1]
    np.testing.assert_allclose(g2[0]["w"], 0.1 * params[0]["w"])
    np.testing.assert_array_equal(g2[0]["b"], 0.0)  # biases are not penalized
    g1 = pn.L1Penalty(0.1).reference.value_and_grad(params)[1]
    np.testing.assert_allclose(g1[0]["w"], 0.1 * np.array([[1, -1], [0, 1]]))


def test_residual_of_identity_sums_both_consumers_of_x():
    # y = x + x = 2x, so dJ/dx = 2 g: the grad_table must add both consumers of x.
    layer = pn.residual(pn.Identity())
    g = np.arange(6.0).reshape(2, 3)
    _, g_x = layer.reference.bprop({"block": ()}, np.ones((2, 3)), g)
    np.testing.assert_array_equal(g_x, 2 * g)


def test_dense_block_of_identities_has_the_closed_form_gradient():
    # Layer 0 sees x and outputs x; layer 1 sees [x, x] and outputs it; the block
    # outputs [x | x | x, x], and x reaches every slot, along four paths.
    layer = pn.dense_block(pn.Identity(), pn.Identity())
    x = np.ones((1, 2))
    y = layer.reference.value(((), ()), x)
    np.testing.assert_array_equal(y, np.ones((1, 8)))  # [x | x | x, x]
    g = np.arange(8.0).reshape(1, 8)
    _, g_x = layer.reference.bprop(((), ()), x, g)
    np.testing.assert_array_equal(g_x, g[:, 0:2] + g[:, 2:4] + g[:, 4:6] + g[:, 6:8])


def test_repeat_reference_stacks_gradients_per_copy(key):
    block = pn.serial(pn.Dense(3), pn.Tanh())
    stacked = pn.repeat(block, 3)
    params = stacked.init(key, (-1, 3))[1]
    x = np.random.default_rng(0).standard_normal((2, 3))
    g = np.ones((2, 3))
    g_params, _ = stacked.reference.bprop(pn.shapes.as_float64(params), x, g)
    unrolled = pn.serial(block, block, block)
    copies = tuple(jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(3))
    g_unrolled, _ = unrolled.reference.bprop(pn.shapes.as_float64(copies), x, g)
    for i in range(3):
        np.testing.assert_allclose(g_params[0]["w"][i], g_unrolled[i][0]["w"], rtol=1e-14)


@pytest.mark.parametrize("unit", [pn.Tanh, pn.ReLU, pn.Sigmoid, pn.Softplus])
@pytest.mark.parametrize("penalty", [None, pn.L2Penalty(0.05)])
def test_algorithm_6_4_matches_the_composed_reference_and_jax(unit, penalty, key):
    model = pn.serial(pn.Dense(7), unit(), pn.Dense(6), unit(), pn.Dense(3))
    params = model.init(key, (-1, 4))[1]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    cost, grads = pn.textbook_mlp_gradient(model, params, x, y, pn.softmax_cross_entropy, penalty)
    composed = pn.reference_gradient(model, params, x, y, pn.softmax_cross_entropy, penalty)
    np.testing.assert_allclose(cost, composed.cost, rtol=1e-14)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(composed.g_params)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    with jax.enable_x64(True):
        p64 = pn.shapes.as_float64(params)

        def cost_fn(p):
            value = pn.softmax_cross_entropy(model.apply(p, x), y)
            return value if penalty is None else value + penalty(p)

        jax_grads = jax.grad(cost_fn)(p64)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(jax_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_algorithm_6_4_with_a_unit_on_the_output(key):
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(2), pn.Sigmoid())
    params = model.init(key, (-1, 3))[1]
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    _, grads = pn.textbook_mlp_gradient(model, params, x, y, pn.mean_squared_error)
    composed = pn.reference_gradient(model, params, x, y, pn.mean_squared_error)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(composed.g_params)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_algorithm_6_4_rejects_what_is_not_a_plain_mlp(key):
    model = pn.serial(pn.Dense(4), pn.PReLU(), pn.Dense(2))
    params = model.init(key, (-1, 3))[1]
    with pytest.raises(pn.MissingReferenceError, match=r"PReLU.*parameter-free unit"):
        pn.textbook_mlp_gradient(model, params, np.ones((1, 3)), np.ones((1, 2)), pn.mean_squared_error)
    model = pn.serial(pn.Maxout(4, 2), pn.Dense(2))
    params = model.init(key, (-1, 3))[1]
    with pytest.raises(pn.ParamsError, match=r"Maxout.*Dense layer"):
        pn.textbook_mlp_gradient(model, params, np.ones((1, 3)), np.ones((1, 2)), pn.mean_squared_error)


def test_reference_runs_on_numpy_alone_and_returns_numpy(key):
    model = pn.serial(pn.Dense(4), pn.ReLU(), pn.residual(pn.serial(pn.Dense(4), pn.Tanh())), pn.Dense(2))
    params = model.init(key, (-1, 3))[1]
    result = pn.reference_gradient(model, params, np.ones((2, 3)), np.zeros((2, 2)), pn.mean_squared_error)
    for leaf in jax.tree_util.tree_leaves((result.g_params, result.g_x, result.outputs)):
        assert type(leaf) is np.ndarray and leaf.dtype == np.float64


REFERENCE_SOURCES = [
    "reference.py",
    "cost_reference.py",
    "combinators.py",
    "repeat.py",
    "losses.py",
    "loss_record.py",
    "penalties.py",
    *(f"layers/{p.name}" for p in (pathlib.Path(pn.__file__).parent / "layers").glob("*.py")),
]


@pytest.mark.parametrize("source", REFERENCE_SOURCES)
def test_reference_code_never_calls_jax_autodiff(source):
    text = (pathlib.Path(pn.__file__).parent / source).read_text()
    autodiff = r"(grad|vjp|jvp|linearize|value_and_grad|jacfwd|jacrev|hessian)"
    calls = re.findall(rf"\bjax\.{autodiff}\s*\(", text) + re.findall(
        rf"from jax import .*\b{autodiff}\b", text
    )
    assert not calls, f"{source} calls jax autodiff: {calls}"


def test_a_layer_without_reference_is_named_with_its_path(key):
    custom = pn.Layer(lambda k, s: (s, ()), lambda p, x, **kw: jnp.sin(x), name="MySin")
    model = pn.serial(pn.Dense(3), pn.residual(pn.serial(pn.Tanh(), custom)))
    params = model.init(key, (-1, 3))[1]
    with pytest.raises(pn.MissingReferenceError, match=r"MySin at params\[1\]\['block'\]\[1\]: has no"):
        pn.reference_gradient(model, params, np.ones((2, 3)), np.zeros((2, 3)), pn.mean_squared_error)
