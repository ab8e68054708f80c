"""Params are plain pytrees: jit, grad, vmap and optax work on models unchanged.

Also a property test: for random architectures the shape ``init`` infers is
the shape ``apply`` produces.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import networks, random_params

import purenet as pn
from purenet.summary import summary_rows


def model_and_params(key):
    model = pn.serial(
        pn.Dense(8),
        pn.PReLU(),
        pn.residual(pn.serial(pn.Maxout(8, 3), pn.Tanh())),
        pn.dense_block(pn.LowRankDense(4, 2), pn.Sigmoid()),
        pn.repeat(pn.serial(pn.Dense(24), pn.LeakyReLU()), 3),  # 8 + 4 + 12 wide
        pn.RBF(5),
        pn.Dense(3),
    )
    return model, model.init(key, (-1, 6))[1]


def test_jit_matches_eager(key):
    model, params = model_and_params(key)
    x = jax.random.normal(key, (4, 6))
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), model.apply(params, x), rtol=1e-5, atol=1e-6)


def test_vmap_over_single_examples_matches_the_batch(key):
    model, params = model_and_params(key)
    x = jax.random.normal(key, (4, 6))
    per_example = jax.vmap(model.apply, in_axes=(None, 0))(params, x)
    np.testing.assert_allclose(per_example, model.apply(params, x), rtol=1e-5, atol=1e-6)


def test_grad_has_the_params_structure_and_optax_steps(key):
    model, params = model_and_params(key)
    x, y = jax.random.normal(key, (4, 6)), jnp.array([0, 1, 2, 0])
    loss = lambda p: pn.softmax_cross_entropy(model.apply(p, x), y)  # noqa: E731
    grads = jax.grad(loss)(params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    before = loss(params)
    grad = jax.jit(jax.grad(loss))
    for _ in range(20):
        updates, state = optimizer.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < before


def test_grad_of_the_input(key):
    model, params = model_and_params(key)
    g = jax.grad(lambda x: model.apply(params, x).sum())(jnp.ones((2, 6)))
    assert g.shape == (2, 6) and bool(jnp.all(jnp.isfinite(g)))


@settings(max_examples=25, deadline=None)
@given(networks(), st.integers(1, 8), st.integers(1, 5))
def test_inferred_shape_matches_apply(model, width, batch):
    # Shapes only, traced and never compiled: eager init and apply compiled every op of every random
    # network anew (about 4 s a network).
    promised = []
    jax.eval_shape(lambda key: promised.append(model.init(key, (-1, width))), jax.random.PRNGKey(0))
    out_shape, params = promised[0][0], random_params(model, (-1, width), np.random.default_rng(batch))
    y = jax.eval_shape(model.apply, params, np.ones((batch, width)))
    assert y.shape == (batch, *out_shape[1:])
    assert pn.count_params(params) == summary_rows(model, (-1, width))[0].params
