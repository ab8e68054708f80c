"""Output units and their losses: closed forms, and finite, correct values at logits of +-1e4."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn


def softplus(v):
    """A float64 closed form: log(1 + e^v) = max(v, 0) + log1p(e^-|v|)."""
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def test_mean_squared_error():
    assert float(pn.mean_squared_error(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))) == pytest.approx(
        2.5
    )


@pytest.mark.parametrize("z", [-1e4, -30.0, -1.0, 0.0, 2.0, 1e4])
@pytest.mark.parametrize("y", [0.0, 1.0])
def test_binary_cross_entropy_is_the_softplus_form(z, y):
    value = float(pn.binary_cross_entropy(jnp.array([z]), jnp.array([y])))
    assert math.isfinite(value)
    assert value == pytest.approx(softplus((1 - 2 * y) * z), rel=1e-6, abs=1e-6)


def test_binary_cross_entropy_gradient_is_finite_at_extreme_logits():
    grad = jax.grad(lambda z: pn.binary_cross_entropy(z, jnp.array([1.0, 0.0])))(jnp.array([-1e4, 1e4]))
    np.testing.assert_allclose(grad, [-0.5, 0.5])  # (sigma(z) - y) / 2 with sigma saturated


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_cross_entropy_is_logsumexp_minus_true_logit(scale):
    logits = scale * jnp.array([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]])
    labels = jnp.array([2, 0])
    expected = np.mean(
        [
            np.logaddexp.reduce(np.asarray(row, np.float64)) - float(row[label])
            for row, label in zip(logits, labels)
        ]
    )
    value = float(pn.softmax_cross_entropy(logits, labels))
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-6)
    one_hot = jax.nn.one_hot(labels, 3)
    assert float(pn.softmax_cross_entropy(logits, one_hot)) == pytest.approx(expected, rel=1e-6)


def test_softmax_cross_entropy_label_errors():
    logits = jnp.zeros((2, 3))
    with pytest.raises(pn.ShapeError, match=r"softmax_cross_entropy: expected labels of shape \(2,\)"):
        pn.softmax_cross_entropy(logits, jnp.array([0, 1, 2]))
    with pytest.raises(pn.InputTypeError, match="softmax_cross_entropy: expected a floating-point input"):
        pn.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.array([0, 1]))


@pytest.mark.parametrize("rho", [-1e4, -40.0, -1.0, 0.0, 3.0, 1e4])
def test_gaussian_nll_closed_form(rho):
    mu, y = 0.5, 1.5
    beta = softplus(rho)
    log_beta = rho if rho < -30 else math.log(beta)
    expected = -0.5 * log_beta + 0.5 * beta * (y - mu) ** 2
    value = float(pn.gaussian_nll(jnp.array([[mu, rho]]), jnp.array([[y]])))
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-5)


def test_gaussian_nll_gradient_finite_at_extremes():
    grads = jax.grad(lambda o: pn.gaussian_nll(o, jnp.array([[1.0], [1.0]])))(
        jnp.array([[0.0, -1e4], [0.0, 1e4]])
    )
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_gaussian_nll_needs_even_width():
    with pytest.raises(pn.ShapeError, match="gaussian_nll: expected outputs of even width"):
        pn.gaussian_nll(jnp.zeros((2, 3)), jnp.zeros((2, 1)))


def test_multiclass_hinge():
    scores = jnp.array([[2.0, 1.5, -1.0], [0.0, 3.0, 0.0]])
    labels = jnp.array([0, 2])
    # row 0: max(2, 2.5, 0) - 2 = 0.5; row 1: max(1, 4, 0) - 0 = 4
    assert float(pn.multiclass_hinge(scores, labels)) == pytest.approx(2.25)
    huge = 1e4 * scores
    assert math.isfinite(float(pn.multiclass_hinge(huge, labels)))


def test_targets_shape_must_match():
    with pytest.raises(pn.ShapeError, match=r"mean_squared_error: expected targets of shape \(3, 1\)"):
        pn.mean_squared_error(jnp.zeros((3, 1)), jnp.zeros(3))


def test_output_units_pair_loss_and_prediction():
    z = jnp.array([[0.0, 2.0]])
    units = pn.OUTPUT_UNITS
    assert set(units) == {"linear", "sigmoid", "softmax", "gaussian", "hinge"}
    np.testing.assert_allclose(units["softmax"].predict(z), jax.nn.softmax(z))
    mean, variance = units["gaussian"].predict(z)
    np.testing.assert_allclose(mean, [[0.0]])
    np.testing.assert_allclose(variance, [[1 / softplus(2.0)]], rtol=1e-6)
    assert units["sigmoid"].loss is pn.binary_cross_entropy


def test_penalties_skip_biases_by_default():
    params = ({"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([10.0, 10.0])}, (), {"alpha": jnp.array([3.0])})
    assert float(pn.l2_penalty(params, 0.1)) == pytest.approx(0.1 * 0.5 * (1 + 4 + 9))
    assert float(pn.l1_penalty(params, 0.1)) == pytest.approx(0.1 * (1 + 2 + 3))
    assert float(pn.l2_penalty(params, 1.0, skip=())) == pytest.approx(0.5 * (1 + 4 + 9 + 200))
