"""purenet.check: the report, and wrong derivations caught.

A checker that cannot fail proves nothing, so most tests here hand it a
deliberately wrong backward (a flipped sign, a missing transpose, a dropped
term, the wrong side at a kink, one wrong entry in a large leaf) and require
the failure to be reported on the right leaf.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn
from purenet.layers.activations import np_sigmoid


def swish():
    return pn.elementwise("Swish", lambda z: z * jax.nn.sigmoid(z))


def swish_bprop(params, z, g):
    s = np_sigmoid(z)
    return (), g * (s + z * s * (1 - s))


def test_report_prints_a_row_per_leaf_and_the_verdict(key):
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    params = model.init(key, (-1, 4))[1]
    x, y = np.ones((5, 4)), np.zeros((5, 2))
    report = pn.check_gradients(model, params, x, y, pn.mean_squared_error)
    text = str(report)
    for leaf in ["params[0]['w']", "params[0]['b']", "params[2]['w']", "params[2]['b']", "x "]:
        assert leaf in text
    assert "reference vs JAX" in text and "FD vs JAX" in text and "FD vs reference" in text
    assert "PASSED" in text
    assert [leaf.path for leaf in report.leaves][-1] == "x"
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert by_path["params[0]['w']"].fd_by == "12 coords" and by_path["params[0]['w']"].shape == (4, 3)


def test_correct_user_layer_passes_check_layer():
    report = pn.check_layer(swish(), (4, 3), bprop=swish_bprop)
    assert report.passed and report.forward_error is None  # no NumPy forward given


def test_dropped_term_is_caught():
    def dropped(params, z, g):  # forgets the z sigma'(z) term of the product rule
        return (), g * np_sigmoid(z)

    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_layer(swish(), (4, 3), bprop=dropped)
    failed = caught.value.report.failures
    assert [leaf.path for leaf in failed] == ["x"]
    assert not failed[0].reference_vs_jax.passed and not failed[0].fd_vs_reference.passed
    assert failed[0].fd_vs_jax.passed  # JAX and finite differences still agree with each other
    assert "FAIL" in str(caught.value) and "check_layer(Swish)" in str(caught.value)


def test_flipped_sign_is_caught():
    def flipped(params, x, g):
        g_params, g_x = pn.layers.dense.DENSE_REFERENCE.bprop(params, x, g)
        return {"w": -g_params["w"], "b": g_params["b"]}, g_x

    report = pn.check_layer(pn.Dense(3), (4, 5), bprop=flipped, raise_on_failure=False)
    assert [leaf.path for leaf in report.failures] == ["params['w']"]


def test_missing_transpose_is_caught():
    def untransposed(params, x, g):  # g @ w instead of g @ w.T: same shape for a square w
        g_params, _ = pn.layers.dense.DENSE_REFERENCE.bprop(params, x, g)
        return g_params, g @ params["w"]

    report = pn.check_layer(pn.Dense(4), (3, 4), bprop=untransposed, raise_on_failure=False)
    assert [leaf.path for leaf in report.failures] == ["x"]


def test_wrong_side_at_a_kink_is_caught_exactly_at_the_kink():
    def right_side(params, z, g):  # ReLU'(0) = 1: the other one-sided derivative
        return (), g * (z >= 0)

    x = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, -0.5]])
    report = pn.check_layer(pn.ReLU(), bprop=right_side, x=x, raise_on_failure=False)
    (leaf,) = report.failures
    assert not leaf.reference_vs_jax.passed
    assert leaf.reference_vs_jax.where in ("(0, 0)", "(1, 1)")  # where z = 0 exactly


def test_fd_at_a_kink_fails_with_a_note_even_for_the_right_derivative():
    x = np.array([[0.0, 1.0, -1.0]])
    with pytest.raises(pn.GradientCheckError, match="from a kink") as caught:
        pn.check_layer(pn.ReLU(), x=x)
    (leaf,) = caught.value.report.failures
    assert leaf.reference_vs_jax.passed  # the convention agrees; only FD straddles the kink
    assert caught.value.report.kink_margin == 0.0


def test_one_wrong_entry_in_a_leaf_probed_by_random_directions_is_caught():
    def one_off(params, x, g):
        g_params, g_x = pn.layers.dense.DENSE_REFERENCE.bprop(params, x, g)
        g_params["w"][3, 5] *= 1.001
        return g_params, g_x

    report = pn.check_layer(pn.Dense(12), (6, 10), bprop=one_off, raise_on_failure=False)
    (leaf,) = report.failures
    assert leaf.path == "params['w']" and leaf.fd_by == "16 dirs"
    assert leaf.reference_vs_jax.where == "(3, 5)"
    assert not leaf.fd_vs_reference.passed and leaf.fd_vs_jax.passed


def test_wrong_combinator_wiring_is_caught(key):
    # A residual bprop that forgets the skip path's gradient (only the block's).
    block = pn.serial(pn.Dense(4), pn.Tanh())
    right = pn.residual(block)

    def no_skip(params, x, g):
        return {"block": block.reference.bprop(params["block"], x, g)[0]}, block.reference.bprop(params["block"], x, g)[1]

    report = pn.check_layer(right, (3, 4), bprop=no_skip, raise_on_failure=False)
    assert [leaf.path for leaf in report.failures] == ["x"]


def test_check_works_with_float64_enabled_globally_or_not(key):
    model = pn.serial(pn.Dense(3), pn.Sigmoid(), pn.Dense(2))
    params = model.init(key, (-1, 4))[1]
    x, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 1, 1, 0, 1])
    plain = pn.check_gradients(model, params, x, y, pn.softmax_cross_entropy)
    with jax.enable_x64(True):
        wide = pn.check_gradients(model, params, x, y, pn.softmax_cross_entropy)
    assert plain.passed and wide.passed
    assert plain.value == wide.value
    assert jnp.zeros(1).dtype == jnp.float32  # the check left the global setting alone


def test_params_in_low_precision_are_checked_at_float64(key):
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), model.init(key, (-1, 4))[1])
    report = pn.check_gradients(model, params, np.ones((2, 4)), np.zeros((2, 2)), pn.mean_squared_error)
    assert report.passed


def test_a_users_own_loss_needs_and_uses_its_reference(key):
    def log_cosh(z, y):
        return jnp.mean(jnp.log(jnp.cosh(z - y)))

    def log_cosh_reference(z, y):
        return np.mean(np.log(np.cosh(z - y))), np.tanh(z - y) / z.size

    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    params = model.init(key, (-1, 4))[1]
    x, y = np.ones((3, 4)), np.full((3, 2), 0.5)
    with pytest.raises(pn.MissingReferenceError, match=r"log_cosh: has no hand-derived reference; build it as Loss\(fn, name, reference=LossReference\(value_and_grad\)\)"):
        pn.check_gradients(model, params, x, y, log_cosh)
    ref = pn.LossReference(log_cosh_reference)
    assert pn.check_gradients(model, params, x, y, log_cosh, reference_loss=ref).passed
    wrong = pn.LossReference(lambda z, y: (0.0, np.tanh(z - y)))  # forgot the 1 / N of the mean
    report = pn.check_gradients(model, params, x, y, log_cosh, reference_loss=wrong, raise_on_failure=False)
    assert len(report.failures) == len(report.leaves)


def test_a_model_without_reference_can_still_be_checked_against_fd(key):
    custom = pn.Layer(lambda k, s: (s, ()), lambda p, x, **kw: jnp.sin(x), name="MySin")
    model = pn.serial(pn.Dense(3), custom, pn.Dense(2))
    params = model.init(key, (-1, 4))[1]
    x, y = np.ones((3, 4)), np.zeros((3, 2))
    with pytest.raises(pn.MissingReferenceError, match=r"MySin at params\[1\]"):
        pn.check_gradients(model, params, x, y, pn.mean_squared_error)
    report = pn.check_gradients(model, params, x, y, pn.mean_squared_error, reference=False)
    assert report.passed and all(leaf.reference_vs_jax is None for leaf in report.leaves)


def test_plain_function_regularizer_is_refused_with_a_pointer(key):
    model = pn.serial(pn.Dense(2))
    params = model.init(key, (-1, 3))[1]
    with pytest.raises(pn.MissingReferenceError, match="L2Penalty"):
        pn.check_gradients(
            model, params, np.ones((1, 3)), np.zeros((1, 2)), pn.mean_squared_error, regularizer=lambda p: 0.0
        )


def test_check_layer_without_bprop_says_what_to_pass():
    with pytest.raises(pn.MissingReferenceError, match=r"Swish: has no bprop to check; pass"):
        pn.check_layer(swish())


def test_reference_with_wrong_shapes_is_reported(key):
    def transposed(params, x, g):
        g_params, g_x = pn.layers.dense.DENSE_REFERENCE.bprop(params, x, g)
        return {"w": g_params["w"].T, "b": g_params["b"]}, g_x

    with pytest.raises(
        pn.ParamsError, match=r"Dense\(3\) at the backward's g_params\['w'\]: expected shape \(5, 3\), got \(3, 5\)"
    ):
        pn.check_layer(pn.Dense(3), (4, 5), bprop=transposed)
