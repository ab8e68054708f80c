"""Issue 15: losses, metrics, penalties and the reference refuse values outside their domain by name.

Before, softmax_cross_entropy answered NaN for label 3 of 3 classes and the
loss of class 2 for label -1; BCE read a target of 5 as a probability; every
loss answered NaN on an empty batch.  Each corruption is drawn by hypothesis.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

INTEGER_LOSSES = [pn.softmax_cross_entropy, pn.multiclass_hinge]
REAL_LOSSES = [pn.mean_squared_error, pn.binary_cross_entropy, pn.gaussian_nll]


@st.composite
def labels_out_of_range(draw, classes: int, count: int):
    labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=count, max_size=count)), np.int64)
    labels[draw(st.integers(0, count - 1))] = draw(
        st.one_of(st.integers(-(10**6), -1), st.integers(classes, 10**6))
    )
    return labels


@given(st.sampled_from(INTEGER_LOSSES), st.integers(2, 6), st.integers(1, 5), st.data())
@settings(max_examples=40, deadline=None)
def test_integer_losses_refuse_labels_outside_the_classes(loss, classes, count, data):
    labels = data.draw(labels_out_of_range(classes, count))
    logits = jnp.zeros((count, classes))
    with pytest.raises(pn.DataError, match=rf"{loss.name}: labels must be class indices in \[0, {classes}\)"):
        loss(logits, labels)
    with pytest.raises(pn.DataError, match=rf"{loss.name} \(reference\): labels must be class indices"):
        loss.reference.value_and_grad(np.zeros((count, classes)), labels)


def test_a_uint8_label_of_255_is_refused_not_read_as_nan():
    with pytest.raises(pn.DataError, match="got values from 0 to 255"):
        pn.softmax_cross_entropy(jnp.zeros((2, 3)), np.array([0, 255], np.uint8))


@given(st.integers(2, 5), st.sampled_from(["negative", "sum"]), st.data())
@settings(max_examples=30, deadline=None)
def test_probability_targets_must_be_distributions(classes, corruption, data):
    p = np.full((3, classes), 1.0 / classes)
    row = data.draw(st.integers(0, 2))
    if corruption == "negative":
        p[row, 0], p[row, 1] = -0.5, p[row, 1] + 0.5 + 1.0 / classes
        message = r"labels must lie in \[0, 1\]"
    else:
        p[row] *= data.draw(st.floats(1.01, 3.0))
        message = r"(each row of labels must sum to 1|labels must lie in \[0, 1\])"  # an entry may pass 1 first
    with pytest.raises(pn.DataError, match=f"softmax_cross_entropy: {message}"):
        pn.softmax_cross_entropy(jnp.zeros((3, classes)), p)


@given(st.floats(allow_nan=False, width=32).filter(lambda t: not 0 <= t <= 1), st.integers(0, 5))
@settings(max_examples=30, deadline=None)
def test_bce_targets_must_lie_in_zero_one(target, position):
    targets = np.zeros((2, 3), np.float32)
    targets.reshape(-1)[position] = target
    if not np.isfinite(np.float32(target)):
        match = "binary_cross_entropy: targets must be finite"
    else:
        match = r"binary_cross_entropy: targets must lie in \[0, 1\]"
    with pytest.raises(pn.DataError, match=match):
        pn.binary_cross_entropy(jnp.zeros((2, 3)), targets)


@pytest.mark.parametrize("logit, target", [(math.inf, 1.0), (-math.inf, 0.0)])
def test_bce_is_zero_where_the_unit_is_certain_and_right(logit, target):
    """The README promises a finite BCE for any logit; at +inf with target 1 it is exactly 0 (was NaN)."""
    z, y = jnp.array([logit]), jnp.array([target])
    assert float(pn.binary_cross_entropy(z, y)) == 0.0
    assert float(jax.grad(pn.binary_cross_entropy)(z, y)[0]) == 0.0
    value, grad = pn.binary_cross_entropy.reference.value_and_grad(np.array([logit]), np.array([target]))
    assert value == 0.0 and grad[0] == 0.0


@given(
    st.lists(st.floats(-60, 60), min_size=1, max_size=6),
    st.lists(st.floats(0, 1), min_size=6, max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_bce_agrees_with_its_reference_on_valid_inputs(logits, targets):
    z = np.array(logits)
    y = np.array(targets[: len(logits)])
    with jax.enable_x64(True):
        value = float(pn.binary_cross_entropy(jnp.asarray(z), jnp.asarray(y)))
    reference, _ = pn.binary_cross_entropy.reference.value_and_grad(z, y)
    assert math.isfinite(value)
    np.testing.assert_allclose(value, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", REAL_LOSSES)
def test_real_losses_refuse_complex_and_nan_targets(loss):
    width = 6 if loss is pn.gaussian_nll else 3
    with pytest.raises(pn.InputTypeError, match=f"{loss.name}: expected real targets, got dtype complex64"):
        loss(jnp.zeros((2, width)), jnp.ones((2, 3), jnp.complex64))
    with pytest.raises(pn.DataError, match=f"{loss.name}: targets must be finite, got 1 non-finite"):
        loss(jnp.zeros((2, width)), np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("loss", INTEGER_LOSSES + REAL_LOSSES)
def test_every_loss_refuses_an_empty_batch(loss):
    width = 6 if loss is pn.gaussian_nll else 3
    targets = jnp.zeros((0,), jnp.int32) if loss in INTEGER_LOSSES else jnp.zeros((0, 3))
    with pytest.raises(pn.ShapeError, match=rf"{loss.name}: outputs is empty \(shape \(0, {width}\)\)"):
        loss(jnp.zeros((0, width)), targets)
    with pytest.raises(pn.ShapeError, match="outputs is empty"):  # at trace time too
        jax.jit(loss)(jnp.zeros((0, width)), targets)


def test_gaussian_nll_refuses_width_zero():
    with pytest.raises(pn.ShapeError, match="gaussian_nll: outputs is empty"):
        pn.gaussian_nll(jnp.zeros((2, 0)), jnp.zeros((2, 0)))


def test_value_checks_under_jit_are_off_and_under_checked_on():
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 3])
    assert not math.isfinite(float(jax.jit(pn.softmax_cross_entropy)(logits, labels)))  # documented: off
    with pytest.raises(
        pn.DataError, match=r"softmax_cross_entropy: labels must be class indices in \[0, 3\)"
    ):
        pn.checked(pn.softmax_cross_entropy)(logits, labels)
    assert float(pn.checked(pn.softmax_cross_entropy)(logits, jnp.array([0, 2]))) == pytest.approx(
        math.log(3)
    )


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def test_accuracy_refuses_one_logit_and_points_to_binary_accuracy():
    with pytest.raises(pn.ShapeError, match="accuracy: expected at least 2 logits.*use binary_accuracy"):
        pn.accuracy(jnp.zeros((4, 1)), jnp.zeros(4, jnp.int32))


def test_binary_accuracy_never_reshapes_targets_of_another_shape():
    with pytest.raises(
        pn.ShapeError, match=r"binary_accuracy: expected targets of shape \(2, 3\).*got \(3, 2\)"
    ):
        pn.binary_accuracy(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    assert float(pn.binary_accuracy(jnp.array([[1.0], [-1.0]]), jnp.array([1, 0]))) == 1.0


@pytest.mark.parametrize("metric", [pn.accuracy, pn.binary_accuracy])
def test_metrics_refuse_an_empty_batch(metric):
    with pytest.raises(pn.ShapeError, match=f"{metric.__name__}: outputs is empty"):
        metric(jnp.zeros((0, 3)), jnp.zeros((0,) if metric is pn.accuracy else (0, 3), jnp.int32))


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_accuracy_refuses_labels_out_of_range(data):
    labels = data.draw(labels_out_of_range(3, 4))
    with pytest.raises(pn.DataError, match=r"accuracy: labels must be class indices in \[0, 3\)"):
        pn.accuracy(jnp.zeros((4, 3)), labels)


def test_evaluate_refuses_labels_outside_the_model_classes_before_computing():
    model = pn.serial(pn.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
    x = np.ones((2, 2), np.float32)
    with pytest.raises(pn.ConfigError, match=r"evaluate: labels must lie in \[0, 3\), got 9 at index 0"):
        pn.evaluate(model, params, x, np.array([9, 0]), loss=pn.softmax_cross_entropy)
    with pytest.raises(pn.ShapeError, match="evaluate: x holds no examples"):
        pn.evaluate(
            model, params, np.ones((0, 2), np.float32), np.zeros(0, np.int32), loss=pn.softmax_cross_entropy
        )


# --------------------------------------------------------------------------
# Penalties and the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [-1e-3, math.nan, math.inf, "0.1", None])
@pytest.mark.parametrize("build", [pn.L2Penalty, pn.L1Penalty, pn.l2_penalty, pn.l1_penalty])
def test_penalties_refuse_a_scale_that_is_not_a_finite_non_negative_real(build, scale):
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    name = getattr(build, "__name__", "")
    with pytest.raises(pn.ConfigError, match=f"{name}: scale must be a finite real number >= 0"):
        build(scale) if name[0].isupper() else build(params, scale)


def test_skip_names_leaves_exactly_not_by_substring():
    params = {"w": jnp.full(2, 2.0), "b": jnp.ones(2), "wb": jnp.ones(3)}
    # skip="wb" skips the leaf named "wb" only: 1/2 (4 + 4 + 1 + 1) = 5, not 1/2 (1 + 1) = 1.
    assert float(pn.l2_penalty(params, 1.0, skip="wb")) == 5.0
    assert float(pn.L2Penalty(1.0, skip=("wb", "b"))(params)) == 4.0
    with pytest.raises(pn.ConfigError, match="L1Penalty: skip must be a name or a sequence of names"):
        pn.L1Penalty(1.0, skip=3)


def test_a_traced_scale_passes_unchecked_for_sweeps():
    params = {"w": jnp.ones(2)}
    swept = jax.vmap(lambda s: pn.l2_penalty(params, s))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(swept, [1.0, 2.0])


def test_reference_gradient_refuses_bad_labels_and_non_finite_points():
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
    x = np.ones((2, 2))
    with pytest.raises(
        pn.DataError, match=r"softmax_cross_entropy \(reference\): labels must be class indices"
    ):
        pn.reference_gradient(model, params, x, np.array([7, 0]), pn.softmax_cross_entropy)
    with pytest.raises(pn.DataError, match=r"reference_gradient\(serial\): x must be finite"):
        pn.reference_gradient(
            model, params, np.array([[1.0, np.nan], [0.0, 0.0]]), np.array([1, 0]), pn.softmax_cross_entropy
        )


def test_textbook_gradient_refuses_a_bias_of_the_wrong_shape():
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
    params = (dict(params[0], b=jnp.zeros(1)), params[1], params[2])
    with pytest.raises(pn.ParamsError, match=r"at params\[0\]\['b'\]: expected shape \(3,\), got \(1,\)"):
        pn.textbook_mlp_gradient(
            model, params, np.ones((4, 2)), np.array([0, 1, 0, 1]), pn.softmax_cross_entropy
        )
