"""Exactly at the kinks: the JAX path and the reference take the same documented side.

At a kink there is no derivative, only a convention; these tests evaluate both
paths exactly there and require bitwise-equal results, equal to the
convention written in the README's table.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def jax_and_reference(layer, params, x):
    """(dJ/dparams, dJ/dx) by jax.grad and by bprop, for J = sum(layer(x)) in float64."""
    with jax.enable_x64(True):
        params, x = pn.shapes.as_float64(params), np.asarray(x, np.float64)
        jax_grads = jax.grad(lambda p, x_: jnp.sum(layer.apply(p, x_)), argnums=(0, 1))(params, x)
    g_out = np.ones_like(layer.reference.value(params, x))
    return jax_grads, layer.reference.bprop(params, x, g_out)


@pytest.mark.parametrize(
    ("layer", "slope_at_zero"),
    [(pn.ReLU(), 0.0), (pn.AbsRect(), -1.0), (pn.LeakyReLU(0.01), 0.01)],
)
def test_rectifiers_take_the_left_slope_at_zero(layer, slope_at_zero):
    x = np.array([[0.0, -0.0, 2.0, -3.0]])
    (_, g_jax), (_, g_ref) = jax_and_reference(layer, (), x)
    expected = np.array([[slope_at_zero, slope_at_zero, 1.0, slope_at_zero]])
    np.testing.assert_array_equal(g_jax, expected)
    np.testing.assert_array_equal(g_ref, expected)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_at_zero_has_slope_alpha_and_no_alpha_gradient(shared):
    alpha = np.array(0.3) if shared else np.array([0.3, 0.3, 0.3])
    x = np.array([[0.0, 1.0, -2.0]])
    (p_jax, g_jax), (p_ref, g_ref) = jax_and_reference(pn.PReLU(shared=shared), {"alpha": alpha}, x)
    np.testing.assert_array_equal(g_jax, [[0.3, 1.0, 0.3]])
    np.testing.assert_array_equal(g_ref, [[0.3, 1.0, 0.3]])
    expected_alpha = np.array(-2.0) if shared else np.array([0.0, 0.0, -2.0])  # min(0, z), 0 at z = 0
    np.testing.assert_array_equal(p_jax["alpha"], expected_alpha)
    np.testing.assert_array_equal(p_ref["alpha"], expected_alpha)


def test_hard_tanh_is_flat_at_plus_and_minus_one():
    x = np.array([[-1.0, 1.0, 0.999, -0.999, 1.5, 0.0]])
    (_, g_jax), (_, g_ref) = jax_and_reference(pn.HardTanh(), (), x)
    expected = [[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]]
    np.testing.assert_array_equal(g_jax, expected)
    np.testing.assert_array_equal(g_ref, expected)


def test_maxout_ties_go_wholly_to_the_first_maximal_piece():
    # Three identical pieces per unit: every unit is a three-way tie.
    w = np.repeat(np.array([[1.0], [2.0]])[:, :, None], 3, axis=2)  # (d=2, n=1, k=3)
    params = {"w": w, "b": np.zeros((1, 3))}
    x = np.array([[1.0, -0.5], [0.3, 0.7]])
    (p_jax, g_jax), (p_ref, g_ref) = jax_and_reference(pn.Maxout(1, 3), params, x)
    np.testing.assert_array_equal(p_jax["w"], p_ref["w"])
    np.testing.assert_array_equal(p_jax["b"], p_ref["b"])
    np.testing.assert_array_equal(g_jax, g_ref)
    np.testing.assert_array_equal(p_ref["b"], [[2.0, 0.0, 0.0]])  # both rows pick piece 0
    np.testing.assert_array_equal(p_ref["w"][:, 0, 1:], 0.0)


def test_maxout_tie_between_later_pieces_picks_the_lower_index():
    params = {"w": np.zeros((1, 1, 3)), "b": np.array([[0.0, 5.0, 5.0]])}
    (p_jax, _), (p_ref, _) = jax_and_reference(pn.Maxout(1, 3), params, np.ones((1, 1)))
    np.testing.assert_array_equal(p_jax["b"], [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(p_ref["b"], [[0.0, 1.0, 0.0]])


def test_hinge_ties_split_the_gradient_evenly_in_both_paths():
    # All scores equal: the two wrong classes tie for max_j (z_j + [j != y]).
    z, labels = np.zeros((1, 3)), np.array([0])
    _, g_ref = pn.losses.loss_reference(pn.multiclass_hinge).value_and_grad(z, labels)
    with jax.enable_x64(True):
        g_jax = jax.grad(pn.multiclass_hinge)(jnp.asarray(z), jnp.asarray(labels))
    np.testing.assert_array_equal(g_jax, g_ref)
    np.testing.assert_array_equal(g_ref, [[-1.0, 0.5, 0.5]])


def test_l1_penalty_has_zero_gradient_at_zero_weights():
    params = {"w": np.array([0.0, 2.0, -3.0]), "b": np.array([0.0])}
    penalty = pn.L1Penalty(0.5)
    with jax.enable_x64(True):
        g_jax = jax.grad(penalty)(pn.shapes.as_float64(params))
    g_ref = penalty.reference.value_and_grad(params)[1]
    np.testing.assert_array_equal(g_jax["w"], [0.0, 0.5, -0.5])
    np.testing.assert_array_equal(g_ref["w"], [0.0, 0.5, -0.5])


def test_a_network_through_exact_kinks_agrees_with_jax():
    # x = 0 with zero biases puts every preactivation on its kink, and every maxout unit on a tie;
    # taking another side anywhere would change a gradient by O(1).
    model = pn.serial(pn.Dense(4), pn.ReLU(), pn.Dense(4), pn.AbsRect(), pn.Maxout(2, 2))
    params = model.init(jax.random.PRNGKey(0), (-1, 3))[1]
    x = np.zeros((2, 3))
    report = pn.check_gradients(
        model, params, x, np.ones((2, 2)), pn.mean_squared_error, raise_on_failure=False
    )
    assert all(leaf.reference_vs_jax.passed for leaf in report.leaves), str(report)
    assert any(leaf.scale > 0 for leaf in report.leaves)  # gradients do flow through the kinks
    assert report.kink_margin == 0.0
