"""The slim Layer record, the Reference it carries, and the shared compile cache.

A Layer is hashable and not a pytree, so a model passes through ``jax.jit``
as a static argument; its reference's forward runs once per node and pass;
the init policy is explicit; a second check of the same model compiles nothing.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

import purenet as pn

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _compiles.append(event) if event == BACKEND_COMPILE else None
)


def backend_compiles(run) -> int:
    """How many XLA backend compilations ``run()`` triggers."""
    before = len(_compiles)
    run()
    return len(_compiles) - before


def model_and_batch(key):
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.residual(pn.serial(pn.Dense(5), pn.ReLU())), pn.Dense(3))
    params = model.init(key, (-1, 4))[1]
    x = np.random.default_rng(0).standard_normal((6, 4))
    return model, params, x, np.arange(6) % 3


def test_a_layer_has_at_most_six_fields_and_is_not_a_pytree(key):
    model, *_ = model_and_batch(key)
    assert len(dataclasses.fields(pn.Layer)) <= 6
    assert jax.tree_util.tree_leaves(model) == [model]  # never flattens into functions
    assert hash(model) == hash(model) and {model: 1}[model] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"


def test_a_model_passes_through_jit_as_a_static_argument_or_a_closure(key):
    model, params, x, _ = model_and_batch(key)

    @functools.partial(jax.jit, static_argnums=0)
    def forward(m, p, inputs):
        return m.apply(p, inputs)

    closed = jax.jit(lambda p, inputs: model.apply(p, inputs))
    np.testing.assert_allclose(forward(model, params, x), model.apply(params, x), rtol=1e-6)
    np.testing.assert_allclose(closed(params, x), model.apply(params, x), rtol=1e-6)
    assert backend_compiles(lambda: forward(model, params, x + 1.0)) == 0  # cached on the static model


def test_the_reference_forward_runs_once_per_node(key):
    calls = []

    def counted_forward(params, x):
        calls.append(1)
        return pn.layers.dense.dense_forward(params, x)

    deep = pn.Dense(3).replace(reference=pn.Reference(counted_forward))
    model = pn.serial(pn.Dense(3), pn.ReLU(), pn.serial(pn.serial(deep, pn.Tanh())), pn.Dense(2))
    params = model.init(key, (-1, 3))[1]
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    pn.reference_gradient(model, params, x, y, pn.mean_squared_error)
    assert len(calls) == 1  # the backward reuses the forward's values
    calls.clear()
    report = pn.check_gradients(model, params, x, y, pn.mean_squared_error)
    z = x @ np.asarray(params[0]["w"], np.float64) + np.asarray(params[0]["b"], np.float64)
    assert report.kink_margin == pytest.approx(np.min(np.abs(z)), rel=1e-12)  # the ReLU's, from that pass
    assert len(calls) == 1  # the kink distance is read off the same pass
    assert model.children[2].children[0].children[0].reference.forward is counted_forward  # kept by serial


def test_init_policy_is_explicit_and_a_chosen_initializer_is_kept(key):
    glorot = jax.nn.initializers.glorot_normal()
    chosen = jax.nn.initializers.constant(0.5)
    assert pn.Tanh().init_policy.prefers is not None and pn.Tanh().init_policy.rebuild is None
    assert pn.Dense(4).init_policy.rebuild is not None
    assert pn.Dense(4, w_init=chosen).init_policy.rebuild is None
    defaulted = pn.serial(pn.Dense(4), pn.Tanh()).init(key, (-1, 3))[1]
    np.testing.assert_array_equal(defaulted[0]["w"], glorot(jax.random.split(jax.random.split(key, 2)[0])[0], (3, 4)))
    kept = pn.serial(pn.Dense(4, w_init=chosen), pn.Tanh()).init(key, (-1, 3))[1]
    np.testing.assert_array_equal(kept[0]["w"], np.full((3, 4), 0.5))


def test_only_serial_is_taken_for_serial_by_the_textbook_algorithm(key):
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    impostor = pn.parallel(pn.Dense(3)).replace(name="serial", children=model.children)
    params = model.init(key, (-1, 4))[1]
    x, y = np.ones((2, 4)), np.zeros((2, 2))
    cost, _ = pn.textbook_mlp_gradient(model, params, x, y, pn.mean_squared_error)
    assert np.isfinite(cost)
    with pytest.raises(pn.MissingReferenceError, match="Algorithm 6.4 needs serial"):
        pn.textbook_mlp_gradient(impostor, params, x, y, pn.mean_squared_error)


def test_losses_carry_their_reference_and_their_label_facts():
    for loss in (pn.softmax_cross_entropy, pn.multiclass_hinge):
        assert loss.class_labels and isinstance(loss.reference, pn.Reference)
    for loss in (pn.mean_squared_error, pn.binary_cross_entropy, pn.gaussian_nll):
        assert not loss.class_labels and isinstance(loss.reference, pn.Reference)
    assert pn.softmax_cross_entropy.__name__ == "softmax_cross_entropy"
    assert "logsumexp" in pn.softmax_cross_entropy.__doc__
    value, grad = pn.mean_squared_error.reference.value_and_grad(np.array([1.0, 3.0]), np.zeros(2))
    assert value == 5.0 and grad.tolist() == [1.0, 3.0]


def test_penalties_carry_their_reference_the_same_way():
    params = {"w": np.array([1.0, -2.0, 0.0]), "b": np.array([4.0])}
    value, grad = pn.L1Penalty(0.5).reference.value_and_grad(params)
    assert value == 1.5 and grad["w"].tolist() == [0.5, -0.5, 0.0] and grad["b"].tolist() == [0.0]
    assert pn.L1Penalty(0.5).reference.kinks(params) == 0.0
    assert pn.L2Penalty(0.5).reference.kinks is None


def test_a_second_check_of_the_same_model_and_loss_compiles_nothing(key):
    model, params, x, y = model_and_batch(key)
    pn.check_gradients(model, params, x, y, pn.softmax_cross_entropy)
    moved = jax.tree_util.tree_map(lambda a: a * 0.9, params)
    assert backend_compiles(lambda: pn.check_gradients(model, moved, x + 0.1, y, pn.softmax_cross_entropy)) == 0
    layer = pn.Dense(4)
    pn.check_layer(layer, (3, 5))
    assert backend_compiles(lambda: pn.check_layer(layer, (3, 5), seed=1)) == 0


def test_summary_draws_no_random_numbers(key):
    model, *_ = model_and_batch(key)
    assert backend_compiles(lambda: pn.summary(model, (-1, 4))) == 0
    assert "total parameters: 73" in pn.summary(model, (-1, 4))
    with pytest.raises(pn.ConfigError, match="summary: expected a purenet Layer, got str"):
        pn.summary("x", (-1, 4))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: pn.Layer(None, None), "layer: init must be callable, got NoneType"),
        (lambda: pn.Layer(IDENTITY_INIT, IDENTITY_APPLY, children=[pn.ReLU()]), "layer: children must be a tuple of Layers, got a list of 1 entries"),
        (lambda: pn.Layer(IDENTITY_INIT, IDENTITY_APPLY, reference=lambda p, x: x), "layer: reference must be a purenet.Reference, got function"),
        (lambda: pn.Layer(IDENTITY_INIT, IDENTITY_APPLY, init_policy=3), "layer: init_policy must be a purenet.InitPolicy, got int"),
        (lambda: pn.Layer(IDENTITY_INIT, IDENTITY_APPLY, name=3), "Layer: name must be a string, got int"),
        (lambda: pn.Reference(None), "Reference: forward must be callable, got NoneType"),
        (lambda: pn.Reference(lambda p, x: (x, None), kinks=0.0), "Reference: kinks must be callable, got float"),
    ],
)
def test_a_record_built_with_a_wrong_field_is_refused_naming_it(build, message):
    with pytest.raises(pn.ConfigError) as caught:
        build()
    assert str(caught.value) == message


def IDENTITY_INIT(key, shape):
    return shape, ()


def IDENTITY_APPLY(params, x, **kwargs):
    return x
