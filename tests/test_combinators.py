"""serial, parallel, fan_out/fan_in, residual, dense_block and repeat."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

X = jax.random.normal(jax.random.PRNGKey(42), (5, 4))


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_serial_is_composition(key):
    dense1, act, dense2 = pn.Dense(6), pn.Tanh(), pn.Dense(3)
    model = pn.serial(dense1, act, dense2)
    out_shape, params = model.init(key, (-1, 4))
    assert out_shape == (-1, 3)
    assert isinstance(params, tuple) and len(params) == 3 and params[1] == ()
    expected = jnp.tanh(X @ params[0]["w"] + params[0]["b"]) @ params[2]["w"] + params[2]["b"]
    close(model.apply(params, X), expected)


def _weight_key(key, position, count):
    """The key serial hands layer ``position`` and the key Dense draws w from."""
    return jax.random.split(jax.random.split(key, count)[position])[0]


@pytest.mark.parametrize(
    "unit, initializer",
    [
        (pn.Tanh(), jax.nn.initializers.glorot_normal()),
        (pn.Sigmoid(), jax.nn.initializers.glorot_normal()),
        (pn.ReLU(), jax.nn.initializers.he_normal()),
        (pn.PReLU(), jax.nn.initializers.he_normal()),
    ],
)
def test_default_weight_init_follows_the_unit(key, unit, initializer):
    _, params = pn.serial(pn.Dense(7), unit).init(key, (-1, 5))
    close(params[0]["w"], initializer(_weight_key(key, 0, 2), (5, 7)))


def test_default_weight_init_with_nothing_after_is_he(key):
    _, params = pn.serial(pn.Dense(7)).init(key, (-1, 5))
    close(params[0]["w"], jax.nn.initializers.he_normal()(_weight_key(key, 0, 1), (5, 7)))


def test_an_explicit_initializer_is_kept(key):
    _, params = pn.serial(pn.Dense(3, w_init=jax.nn.initializers.ones), pn.Tanh()).init(key, (-1, 2))
    assert jnp.all(params[0]["w"] == 1)


def test_serial_refuses_non_layers_and_emptiness():
    with pytest.raises(
        pn.ConfigError, match=r"serial: argument 1 must be a Layer, got function; did you mean ReLU\(\)\?"
    ):
        pn.serial(pn.Dense(2), pn.ReLU)
    with pytest.raises(pn.ConfigError, match="serial: needs at least one layer"):
        pn.serial()


def test_serial_params_of_the_wrong_length(key):
    model = pn.serial(pn.Dense(2), pn.ReLU())
    _, params = model.init(key, (-1, 4))
    with pytest.raises(pn.ParamsError, match="serial: expected a tuple of 2 entries"):
        model.apply(params[:1], X)


def test_errors_deep_inside_name_the_full_path(key):
    model = pn.serial(pn.Dense(4), pn.residual(pn.serial(pn.Dense(4), pn.PReLU())))
    _, params = model.init(key, (-1, 4))
    bad = (params[0], {"block": (params[1]["block"][0], {"alpha": jnp.ones(3)})})
    with pytest.raises(pn.ParamsError) as info:
        model.apply(bad, X)
    assert (
        str(info.value)
        == "PReLU at params[1]['block'][1]['alpha']: expected shape (4,) for an input of width 4, got (3,)"
    )


def test_init_errors_name_the_position(key):
    model = pn.serial(pn.Dense(4), pn.fan_in_sum())
    with pytest.raises(pn.ShapeError, match=r"fan_in_sum at params\[1\]: expected a tuple of input shapes"):
        model.init(key, (-1, 3))


def test_parallel_fan_out_fan_in(key):
    model = pn.serial(pn.fan_out(2), pn.parallel(pn.Dense(3), pn.Dense(3)), pn.fan_in_sum())
    out_shape, params = model.init(key, (-1, 4))
    assert out_shape == (-1, 3)
    a, b = params[1]
    close(model.apply(params, X), X @ a["w"] + a["b"] + X @ b["w"] + b["b"])

    concat = pn.serial(
        pn.fan_out(3), pn.parallel(pn.Dense(2), pn.Identity(), pn.Dense(1)), pn.fan_in_concat()
    )
    out_shape, params = concat.init(key, (-1, 4))
    assert out_shape == (-1, 7)
    y = concat.apply(params, X)
    close(y[:, 2:6], X)
    close(y[:, :2], X @ params[1][0]["w"] + params[1][0]["b"])


def test_fan_in_errors(key):
    with pytest.raises(pn.ShapeError, match="fan_in_sum: expected inputs of one shape"):
        pn.fan_in_sum().init(key, ((-1, 3), (-1, 4)))
    with pytest.raises(pn.ShapeError, match="fan_in_concat: expected inputs alike in all but the last axis"):
        pn.fan_in_concat().init(key, ((-1, 2, 3), (-1, 3, 3)))
    with pytest.raises(pn.ShapeError, match="parallel: expected a tuple of 2 inputs, got a tuple of 3"):
        pn.parallel(pn.Identity(), pn.Identity()).apply(((), ()), (X, X, X))


def test_residual_adds_the_input(key):
    block = pn.serial(pn.Dense(4), pn.Tanh())
    out_shape, params = pn.residual(block).init(key, (-1, 4))
    assert out_shape == (-1, 4) and set(params) == {"block"}
    close(pn.residual(block).apply(params, X), X + block.apply(params["block"], X))


def test_residual_projects_when_the_width_changes(key):
    block = pn.serial(pn.Dense(6), pn.ReLU())
    out_shape, params = pn.residual(block).init(key, (-1, 4))
    assert out_shape == (-1, 6)
    assert params["proj"]["w"].shape == (4, 6)
    close(pn.residual(block).apply(params, X), X @ params["proj"]["w"] + block.apply(params["block"], X))


def test_residual_param_errors(key):
    layer = pn.residual(pn.Dense(6))
    _, params = layer.init(key, (-1, 4))
    with pytest.raises(
        pn.ParamsError, match=r"residual: the block changes the width, so expected keys \['block', 'proj'\]"
    ):
        layer.apply({"block": params["block"]}, X)
    with pytest.raises(pn.ParamsError, match=r"residual at params\['proj'\]\['w'\]: expected shape \(4, 6\)"):
        layer.apply({"block": params["block"], "proj": {"w": jnp.ones((5, 6))}}, X)


def test_residual_needs_the_block_to_keep_the_leading_axes(key):
    with pytest.raises(pn.ShapeError, match="residual: the block must keep every axis but the last"):
        pn.residual(pn.Flatten()).init(key, (-1, 2, 3))


def test_dense_block_concatenates_everything(key):
    layers = (pn.Dense(2), pn.Dense(3))
    out_shape, params = pn.dense_block(*layers).init(key, (-1, 4))
    assert out_shape == (-1, 4 + 2 + 3)
    assert params[0]["w"].shape == (4, 2) and params[1]["w"].shape == (6, 3)
    y = pn.dense_block(*layers).apply(params, X)
    h0 = X @ params[0]["w"] + params[0]["b"]
    h1 = jnp.concatenate([X, h0], -1) @ params[1]["w"] + params[1]["b"]
    close(y, jnp.concatenate([X, h0, h1], -1))


def test_repeat_equals_the_unrolled_stack(key):
    block = pn.serial(pn.Dense(4), pn.Tanh())
    model = pn.repeat(block, 5)
    out_shape, params = model.init(key, (-1, 4))
    assert out_shape == (-1, 4)
    assert params[0]["w"].shape == (5, 4, 4)
    h = X
    for i in range(5):
        h = block.apply(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], params), h)
    close(model.apply(params, X), h)
    # the copies are independent draws
    assert not jnp.allclose(params[0]["w"][0], params[0]["w"][1])


def test_repeat_traces_the_block_once():
    def equations(count):
        model = pn.repeat(pn.serial(pn.Dense(8), pn.Tanh()), count)
        _, params = model.init(jax.random.PRNGKey(0), (-1, 8))
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply(p, jnp.ones((2, 8))).sum()))(params)
        return len(jaxpr.jaxpr.eqns)

    assert equations(2) == equations(64)


def test_repeat_errors(key):
    with pytest.raises(pn.ShapeError, match=r"repeat\(n=3\): the block must keep its input shape"):
        pn.repeat(pn.Dense(5), 3).init(key, (-1, 4))
    _, params = pn.repeat(pn.Dense(4), 3).init(key, (-1, 4))
    with pytest.raises(
        pn.ParamsError,
        match=r"repeat\(n=2\) at params\['b'\]: expected shape \(2, 4\) \(stacked params with a leading axis of 2 copies\), got \(3, 4\)",
    ):
        pn.repeat(pn.Dense(4), 2).apply(params, X)
    with pytest.raises(pn.ConfigError, match="count must be an integer >= 1"):
        pn.repeat(pn.Dense(4), 0)


def test_keys_reach_dropout_in_every_combinator(key):
    model = pn.serial(pn.Dense(16), pn.Dropout(0.5), pn.repeat(pn.serial(pn.Dense(16), pn.Dropout(0.5)), 3))
    _, params = model.init(key, (-1, 4))
    a = model.apply(params, X, key=jax.random.PRNGKey(1), train=True)
    b = model.apply(params, X, key=jax.random.PRNGKey(1), train=True)
    c = model.apply(params, X, key=jax.random.PRNGKey(2), train=True)
    close(a, b)
    assert not jnp.allclose(a, c)
    close(model.apply(params, X), model.apply(params, X, train=False))


CLOSE = dict(rtol=1e-5, atol=1e-6)  # remat recomputes in float32: same values up to rounding


@pytest.mark.parametrize("remat", [True, 1, 3, 4])
def test_repeat_remat_changes_memory_not_values(key, remat):
    """Segments recomputed in the backward pass give the gradient of the plain scan (10 copies: 3 and
    4 leave a shorter last segment), and pass the three-way check against the reference and FD."""
    block = pn.residual(pn.serial(pn.Dense(6), pn.Tanh(), pn.Dense(6)))
    plain, rematted = pn.repeat(block, 10), pn.repeat(block, 10, remat=remat)
    _, params = plain.init(key, (-1, 6))
    x, y = jax.random.normal(key, (5, 6)), jax.random.normal(jax.random.PRNGKey(1), (5, 6))
    loss = lambda model: lambda p: pn.mean_squared_error(model.apply(p, x), y)  # noqa: E731
    chex.assert_trees_all_close(jax.grad(loss(plain))(params), jax.grad(loss(rematted))(params), **CLOSE)
    pn.check_gradients(rematted, params, x, y, loss=pn.mean_squared_error)


@pytest.mark.parametrize("remat", [True, 2])
def test_serial_remat_changes_memory_not_values(key, remat):
    layers = [pn.Dense(6), pn.Tanh(), pn.Dense(6), pn.ReLU(), pn.Dense(3)]
    plain, rematted = pn.serial(*layers), pn.serial(*layers, remat=remat)
    _, params = plain.init(key, (-1, 4))
    x, y = jax.random.normal(key, (5, 4)), jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    grad = lambda model: jax.grad(lambda p: pn.mean_squared_error(model.apply(p, x), y))(params)  # noqa: E731
    chex.assert_trees_all_close(grad(plain), grad(rematted), **CLOSE)
    pn.check_gradients(rematted, params, x, y, loss=pn.mean_squared_error)


def test_remat_recomputes_dropout_with_the_same_mask(key):
    """The recomputed forward pass must draw the same dropout mask, or the gradient is wrong."""
    block = pn.serial(pn.Dense(8), pn.Dropout(0.5))
    plain, rematted = pn.repeat(block, 4), pn.repeat(block, 4, remat=2)
    _, params = plain.init(key, (-1, 8))
    x = jax.random.normal(key, (6, 8))
    grad = lambda model: jax.grad(lambda p: jnp.sum(model.apply(p, x, key=key, train=True) ** 2))(params)  # noqa: E731
    chex.assert_trees_all_close(grad(plain), grad(rematted), **CLOSE)


def test_repeat_remat_keeps_less_for_the_backward_pass(key):
    """What the forward pass saves for the backward pass (jax.vjp's residuals), without and with remat:
    64 copies keep 64 inputs' worth of activations and more; segments of 4 keep 16 segment inputs."""
    block = pn.residual(pn.serial(pn.Dense(32), pn.ReLU(), pn.Dense(32)))
    x = jnp.ones((256, 32))

    def saved_bytes(model):
        _, params = model.init(key, (-1, 32))
        residuals = jax.eval_shape(lambda p: jax.vjp(lambda q: jnp.sum(model.apply(q, x)), p)[1], params)
        param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(params))
        return (
            sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(residuals))
            - param_bytes
        )

    activation = x.size * 4
    assert saved_bytes(pn.repeat(block, 64)) >= 2 * 64 * activation
    assert saved_bytes(pn.repeat(block, 64, remat=True)) <= 17 * activation


def test_remat_errors():
    with pytest.raises(pn.ConfigError, match=r"repeat\(n=4\): remat \(False, True or a segment length\) must be an integer >= 1, got 0"):  # fmt: skip
        pn.repeat(pn.Dense(4), 4, remat=0)
    with pytest.raises(pn.ConfigError, match=r"serial: remat .* got 'yes'"):
        pn.serial(pn.Dense(4), remat="yes")


def test_remat_models_keep_their_hessian_vector_products(key):
    """Forward-over-reverse runs through jax.checkpoint: the HVP of a rematted stack is the plain one's."""
    block = pn.residual(pn.serial(pn.Dense(6), pn.Tanh(), pn.Dense(6)))
    x, y = jax.random.normal(key, (5, 6)), jax.random.normal(jax.random.PRNGKey(1), (5, 6))

    def product(model):
        _, params = model.init(key, (-1, 6))
        v = jax.tree_util.tree_map(jnp.ones_like, params)
        return pn.hvp(lambda p: pn.mean_squared_error(model.apply(p, x), y), params, v)

    pairs = [
        (pn.repeat(block, 6), pn.repeat(block, 6, remat=True)),
        (pn.serial(block, block, block), pn.serial(block, block, block, remat=1)),
    ]
    for plain, rematted in pairs:
        chex.assert_trees_all_close(product(plain), product(rematted), **CLOSE)
