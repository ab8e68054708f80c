"""Issue 15: curvature raises where the README says it does, and refuses arguments that would make it lie.

Before, hvp, ggn_vp, hessian and the operators returned NaN trees at NaN
params, data, directions or losses; hessian of a non-scalar f returned an
(8, 2, 17, 17) array; cg_solve returned x = 0 with a NaN residual; sigma 0
gave NaN densities; model_operator read label -1 as the last class.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

KEY = jax.random.PRNGKey(0)
MODEL = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(3))
_, PARAMS = MODEL.init(KEY, (-1, 2))
X = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
Y = np.arange(6) % 3


def cost(params, x=X):
    return pn.softmax_cross_entropy(MODEL.apply(params, jnp.asarray(x)), Y)


def zeros_like_params():
    return jax.tree_util.tree_map(jnp.zeros_like, PARAMS)


def with_nan(tree, index=2, leaf="b"):
    tree = list(tree)
    tree[index] = dict(tree[index], **{leaf: tree[index][leaf].at[0].set(jnp.nan)})
    return tuple(tree)


PRODUCTS = {
    "hvp": lambda p, v: pn.hvp(cost, p, v),
    "ggn_vp": lambda p, v: pn.ggn_vp(
        lambda q: MODEL.apply(q, jnp.asarray(X)), lambda z: pn.softmax_cross_entropy(z, Y), p, v
    ),
    "hessian operator": lambda p, v: (
        pn.hessian_operator(cost, PARAMS).matvec(v) if p is PARAMS else pn.hessian_operator(cost, p)
    ),
}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_a_nan_direction_raises_naming_its_leaf(name):
    with pytest.raises(pn.NonFiniteCurvatureError, match=rf"{name} at v\[2\]\['b'\]"):
        PRODUCTS[name](PARAMS, with_nan(zeros_like_params()))


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_nan_params_raise_naming_the_leaf(name):
    with pytest.raises(pn.NonFiniteCurvatureError, match=r"at params\[0\]\['w'\]"):
        PRODUCTS[name](with_nan(PARAMS, 0, "w"), zeros_like_params())


def test_a_nan_loss_at_finite_inputs_raises_on_the_result():
    def nan_cost(params):
        return cost(params) + jnp.sqrt(-1.0 - jnp.sum(params[0]["b"] ** 2))  # NaN everywhere

    for call in (
        lambda: pn.hvp(nan_cost, PARAMS, zeros_like_params()),
        lambda: pn.hessian(nan_cost, PARAMS),
        lambda: pn.hessian_operator(nan_cost, PARAMS).to_dense(),
        lambda: pn.hessian_operator(nan_cost, PARAMS).matmat(
            jax.tree_util.tree_map(lambda a: a[None], PARAMS)
        ),
    ):
        with pytest.raises(pn.NonFiniteCurvatureError, match="the result is not finite"):
            call()


def test_nan_data_is_refused_by_the_operator():
    x = X.copy()
    x[3, 1] = np.nan
    with pytest.raises(pn.NonFiniteCurvatureError, match=r"model_operator at data\[0\]"):
        pn.model_operator(MODEL, pn.softmax_cross_entropy, PARAMS, x, Y)


@pytest.mark.parametrize("kind", ["hessian", "hvp"])
def test_a_non_scalar_function_is_refused_naming_its_shape(kind):
    def outputs(params):
        return MODEL.apply(params, jnp.asarray(X))  # (6, 3), not a loss

    with pytest.raises(
        pn.ShapeError, match=r"f must return a scalar \(a loss\), got an output of shape \(6, 3\)"
    ):
        pn.hessian(outputs, PARAMS) if kind == "hessian" else pn.hvp(outputs, PARAMS, zeros_like_params())


@given(st.sampled_from([-1, 3, 7, -100]), st.integers(0, 5), st.sampled_from(["hessian", "ggn"]))
@settings(max_examples=15, deadline=None)
def test_model_operator_refuses_labels_outside_the_classes(label, position, kind):
    y = Y.copy()
    y[position] = label
    with pytest.raises(pn.DataError, match=r"model_operator: y must be class indices in \[0, 3\)"):
        pn.model_operator(MODEL, pn.softmax_cross_entropy, PARAMS, X, y, kind=kind)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(damping=math.inf), r"damping must be a finite real number >= 0, got inf"),
        (dict(damping=math.nan), r"damping must be a finite real number >= 0, got nan"),
        (dict(damping=-1.0), r"damping must be a finite real number >= 0"),
        (dict(tol=-1.0), r"tol must be a finite real number > 0"),
        (dict(tol=0.0), r"tol must be a finite real number > 0"),
        (dict(maxiter=0), r"maxiter must be an integer >= 1"),
    ],
)
def test_cg_solve_refuses_arguments_that_make_it_lie(arguments, message):
    op = pn.model_operator(MODEL, pn.softmax_cross_entropy, PARAMS, X, Y, kind="ggn")
    with pytest.raises(pn.ConfigError, match="cg_solve: " + message):
        pn.cg_solve(op, PARAMS, **arguments)


def test_cg_solve_at_a_nan_loss_raises_instead_of_returning_zero():
    def nan_cost(params):
        return cost(params) * jnp.nan

    op = pn.hessian_operator(nan_cost, PARAMS)
    with pytest.raises(pn.NonFiniteCurvatureError, match="cg_solve"):
        pn.cg_solve(op, PARAMS, damping=1.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(cg_tol=-1.0), "cg_tol must be a finite real number > 0"),
        (dict(cg_tol=math.nan), "cg_tol must be a finite real number > 0"),
        (dict(cg_maxiter=0), "cg_maxiter must be an integer >= 1"),
    ],
)
def test_hessian_free_step_refuses_bad_cg_settings(arguments, message):
    with pytest.raises(pn.ConfigError, match="make_hessian_free_step: " + message):
        pn.make_hessian_free_step(MODEL, pn.softmax_cross_entropy, **arguments)


def test_hessian_free_init_refuses_a_bad_damping():
    init, _ = pn.make_hessian_free_step(MODEL, pn.softmax_cross_entropy)
    with pytest.raises(
        pn.ConfigError, match="make_hessian_free_step: damping must be a finite real number >= 0"
    ):
        init(PARAMS, damping=math.inf)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf, "0.1"])
def test_spectral_density_refuses_a_width_that_is_not_positive(sigma):
    op = pn.model_operator(MODEL, pn.softmax_cross_entropy, PARAMS, X, Y)
    density = pn.spectral_density(op, num_probes=1, num_iterations=4, key=KEY)
    with pytest.raises(
        pn.ConfigError, match="SpectralDensity.evaluate: sigma must be a finite real number > 0"
    ):
        density.evaluate(np.linspace(-1, 1, 5), sigma=sigma)
    with pytest.raises(pn.ConfigError, match="grid must be a non-empty 1-d array of finite points"):
        density.evaluate(np.array([0.0, np.nan]))
    assert np.all(density.evaluate(np.linspace(-1, 1, 5)) >= 0)


def test_flatten_params_refuses_what_is_not_a_tree_of_arrays():
    with pytest.raises(pn.ParamsError, match="flatten_params: expected a pytree of arrays, got a str"):
        pn.flatten_params("abc")
