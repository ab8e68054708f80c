"""Mixed precision: every layer computes in the compute dtype; params, gradients and loss stay float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn
from tests.digits import fit_digits
from tests.strategies import networks


def equations(jaxpr):
    """Every equation of ``jaxpr`` and of its sub-jaxprs (the bodies of scan, cond, pjit, custom_jvp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner)


def matmul_dtypes(jaxpr) -> set[str]:
    """The dtypes of every operand and result of every matrix product in ``jaxpr``."""
    return {
        str(var.aval.dtype)
        for eqn in equations(jaxpr)
        if eqn.primitive.name == "dot_general"
        for var in (*eqn.invars, *eqn.outvars)
    }


@settings(max_examples=40, deadline=None)
@given(networks(), st.integers(1, 8), st.sampled_from(["bfloat16", "float16"]))
def test_every_layer_computes_in_the_compute_dtype(body, width, dtype):
    """No layer, unit or combinator silently promotes to float32 (a float32 matmul is 2-4x slower).

    Every matrix product takes and gives the compute dtype, and so does every
    layer's output.  (Inside a reduction JAX accumulates low-precision floats
    in float32 and rounds back, on purpose: that is not a promotion.)  Traced
    on abstract values only (``jax.eval_shape``), so nothing compiles.
    """
    model = pn.serial(body, pn.Dense(3))
    shapes = jax.eval_shape(lambda k: model.init(k, (-1, width))[1], jax.random.PRNGKey(0))
    low = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), shapes)
    x = jax.ShapeDtypeStruct((2, width), dtype)
    for train in (False, True):
        apply = functools.partial(model.apply, key=jax.random.PRNGKey(1), train=train)
        assert matmul_dtypes(jax.make_jaxpr(apply)(low, x).jaxpr) == {dtype}, model.name
        assert jax.eval_shape(apply, low, x).dtype == dtype


def test_mixed_precision_wrapper_casts_at_the_edges(key):
    model = pn.serial(pn.Dense(16), pn.ReLU(), pn.Dense(4))
    wrapped = pn.mixed_precision(model, pn.policy("bfloat16"))
    _, params = wrapped.init(key, (-1, 8))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    x = jax.random.normal(key, (5, 8))
    out = wrapped.apply(params, x)
    assert out.dtype == jnp.float32
    # the same numbers as the float32 model, to bfloat16's 8-bit mantissa
    np.testing.assert_allclose(out, model.apply(params, x), rtol=0.05, atol=0.05)
    inner = jax.make_jaxpr(wrapped.apply)(params, x).jaxpr
    assert matmul_dtypes(inner) == {"bfloat16"}
    grads = jax.grad(lambda p: pn.mean_squared_error(wrapped.apply(p, x), jnp.zeros((5, 4))))(params)
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype("float32")}
    # the reference rides along unchanged (float64 whatever the policy)
    assert wrapped.reference is model.reference


def test_fit_under_bfloat16_trains_digits_with_float32_params(key):
    model = pn.serial(pn.Dense(64), pn.ReLU(), pn.Dense(10))
    result, _ = fit_digits(
        model, key, optimizer=optax.adam(3e-3), epochs=8, key=key, policy=pn.policy("bfloat16")
    )
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(result.params)} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(result.opt_state)} <= {
        jnp.dtype("float32"),
        jnp.dtype("int32"),
    }
    assert result.history["val_accuracy"][-1] > 0.93


def test_float16_loss_scale_undoes_itself(key):
    """With a static loss scale the applied update is the unscaled one (plain SGD makes it visible)."""
    model = pn.Dense(2)
    _, params = model.init(key, (-1, 3))
    x, y = jax.random.normal(key, (8, 3)), jnp.zeros((8, 2))
    steps = {}
    for scale in (1.0, 1024.0):
        p = pn.Policy(compute_dtype="float16", loss_scale=scale)
        step = pn.make_train_step(model, pn.mean_squared_error, optax.sgd(0.1), policy=p, donate=False)
        state, out = step(pn.TrainState(params, optax.sgd(0.1).init(params), jnp.array(True)), x, y, key)
        steps[scale] = state.params
        assert out.loss.dtype == jnp.float32 and bool(out.finite)
    for a, b in zip(jax.tree_util.tree_leaves(steps[1.0]), jax.tree_util.tree_leaves(steps[1024.0])):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4)
    assert pn.policy("float16").loss_scale == 4096.0 and pn.policy("bfloat16").loss_scale == 1.0


def test_policy_errors():
    with pytest.raises(pn.ConfigError, match=r"policy: compute_dtype must be one of .*got 'int8'"):
        pn.policy("int8")
    with pytest.raises(pn.ConfigError, match="policy: loss_scale must be a positive finite number, got 0"):
        pn.policy("float16", loss_scale=0)
    with pytest.raises(pn.ConfigError, match="policy: expected a purenet.Policy, got str"):
        pn.mixed_precision(pn.Dense(2), "bfloat16")
