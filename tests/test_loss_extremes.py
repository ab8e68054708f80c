"""Every loss's reference and JAX path at extreme outputs (|z| up to 800): finite, and equal to a closed form.

Each check compares three numbers for every value and gradient entry:

  * the NumPy float64 reference, ``loss.reference.value_and_grad``;
  * the JAX loss and ``jax.grad`` under ``jax.enable_x64(True)`` on float64 inputs;
  * a closed form evaluated here in 60-digit ``decimal`` arithmetic (``exp``
    and ``ln`` of the float inputs, which ``Decimal`` holds exactly; e^-800
    does not underflow there), written without the cancellations it checks for:
    1 - sigma(z) as sigma(-z), 1 - q_y as the sum of the other classes' weights.

The tolerance is 1e-12 relative, plus 1e-15 times the size of the terms the
closed form sums (only where those terms cancel does that exceed 1e-12 relative;
for hard targets they never do), plus 1e-300 for subnormals.
"""

from __future__ import annotations

import math
from decimal import Context, Decimal, localcontext
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

DIGITS = Context(prec=60)
RTOL, CANCEL, TINY = 1e-12, 1e-15, 1e-300
LOGITS = [-800.0, -745.5, -100.0, -40.0, -30.0, -1.0, 0.0, 1.0, 30.0, 40.0, 100.0, 800.0]
RHOS = [-800.0, -745.5, -720.0, -710.6, -100.0, -40.0, -30.0, -29.5, 0.0, 30.0, 100.0, 800.0]


# --------------------------------------------------------------------------
# Closed forms in 60-digit decimal: (value, gradient, value scale, gradient scale)
# --------------------------------------------------------------------------


def _log1p(x: Decimal) -> Decimal:
    """log(1 + x) for x >= 0; below 1e-25 by its series x - x^2/2 + x^3/3, exact to 1e-75 relative."""
    return x - x * x / 2 + x**3 / 3 if x < Decimal("1e-25") else (1 + x).ln()


def softplus(v: Decimal) -> Decimal:
    """zeta(v) = log(1 + e^v) = v + zeta(-v) (section 3.10), each branch of a non-positive exponent."""
    return v + _log1p((-v).exp()) if v > 0 else _log1p(v.exp())


def sigmoid(v: Decimal) -> Decimal:
    """sigma(v) = 1 / (1 + e^-v) (section 3.10); e^800 is finite in decimal."""
    return 1 / (1 + (-v).exp())


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values], np.float64)


def bce_closed_form(z: np.ndarray, y: np.ndarray):
    """Mean of y zeta(-z) + (1 - y) zeta(z) (eq. 6.23); gradient ((1 - y) sigma(z) - y sigma(-z)) / N."""
    with localcontext(DIGITS):
        n, values, grads, scales = z.size, [], [], []
        for zi, yi in zip(map(Decimal, z.flat), map(Decimal, y.flat)):
            values.append((yi * softplus(-zi) if yi else 0) + ((1 - yi) * softplus(zi) if yi != 1 else 0))
            up, down = (1 - yi) * sigmoid(zi), yi * sigmoid(-zi)
            grads.append((up - down) / n)
            scales.append((up + down) / n)
        value = sum(values) / n
        return float(value), _floats(grads).reshape(z.shape), float(value), _floats(scales).reshape(z.shape)


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return (np.arange(classes) == labels[..., None]).astype(np.float64)


def softmax_closed_form(z: np.ndarray, labels: np.ndarray):
    """Mean over rows of -sum_j p_j log q_j (eq. 6.30); gradient q_j sum(p) - p_j, as
    q_j sum_{k != j} p_k - p_j sum_{k != j} q_k so that no 1 - q_j is ever formed."""
    p = labels if labels.dtype.kind == "f" else _one_hot(labels, z.shape[-1])
    rows = z.size // z.shape[-1]
    with localcontext(DIGITS):
        value, grads, scales = Decimal(0), [], []
        for row, weights in zip(z.reshape(rows, -1), p.reshape(rows, -1)):
            top, first = Decimal(float(row.max())), int(np.argmax(row))
            e = [(Decimal(v) - top).exp() for v in row]
            rest = sum(e[:first]) + sum(e[first + 1 :])  # log(1 + rest), not ln of a rounded 1 + 1e-48
            total, log_total, pd = 1 + rest, _log1p(rest), [Decimal(w) for w in weights]
            value -= sum(w * ((Decimal(v) - top) - log_total) for w, v in zip(pd, row) if w)
            for j, (ej, pj) in enumerate(zip(e, pd)):
                up = ej / total * (sum(pd) - pj)
                down = pj * (sum(e[:j]) + sum(e[j + 1 :])) / total
                grads.append((up - down) / rows)
                scales.append((up + down) / rows)
        return float(value / rows), _floats(grads).reshape(z.shape), float(value / rows), _floats(scales)


def gaussian_closed_form(outputs: np.ndarray, y: np.ndarray):
    """Mean of -1/2 log beta + 1/2 beta (y - mu)^2, beta = zeta(rho) (section 6.2.2.4); gradients
    beta (mu - y) / N and (-1/2 sigma(rho) / zeta(rho) + 1/2 (y - mu)^2 sigma(rho)) / N."""
    d = outputs.shape[-1] // 2
    mean, rho = outputs[..., :d], outputs[..., d:]
    n = mean.size
    with localcontext(DIGITS):
        value, v_scale, g_mean, g_rho, s_rho = Decimal(0), Decimal(0), [], [], []
        for mu, r, t in zip(*(map(Decimal, a.flat) for a in (mean, rho, y))):
            beta, square = softplus(r), (t - mu) ** 2
            log_beta = beta.ln()  # beta = e^-800 (1 - ...) is a normal decimal
            value += -log_beta / 2 + beta * square / 2
            v_scale += abs(log_beta) / 2 + beta * square / 2
            g_mean.append(beta * (mu - t) / n)
            ratio, fit = sigmoid(r) / beta / 2, square * sigmoid(r) / 2
            g_rho.append((fit - ratio) / n)
            s_rho.append((fit + ratio) / n)
    grad = np.concatenate([_floats(g_mean).reshape(mean.shape), _floats(g_rho).reshape(mean.shape)], -1)
    scale = np.concatenate([np.abs(grad[..., :d]), _floats(s_rho).reshape(mean.shape)], -1)
    return float(value / n), grad, float(v_scale / n), scale


def mse_closed_form(z: np.ndarray, y: np.ndarray):
    """Mean of (z - y)^2; gradient 2 (z - y) / N, in exact fractions."""
    residuals = [Fraction(a) - Fraction(b) for a, b in zip(z.flat, y.flat)]
    value = sum(r * r for r in residuals) / len(residuals)
    grad = _floats(2 * r / len(residuals) for r in residuals).reshape(z.shape)
    return float(value), grad, float(value), np.abs(grad)


def hinge_closed_form(z: np.ndarray, labels: np.ndarray):
    """Mean of max_j (z_j + [j != y]) - z_y; gradient (ties / #ties - onehot(y)) / rows, in exact fractions."""
    rows, grads, value = z.shape[0], [], Fraction(0)
    for row, label in zip(z, labels):
        margins = [Fraction(v) + (j != label) for j, v in enumerate(row)]
        top = max(margins)
        value += top - Fraction(row[label])
        ties = [m == top for m in margins]
        grads.append([(Fraction(t, sum(ties)) - (j == label)) / rows for j, t in enumerate(ties)])
    grad = np.array([[float(g) for g in row] for row in grads])
    return float(value / rows), grad, abs(float(value / rows)), np.abs(grad)


CLOSED_FORMS = {
    "binary_cross_entropy": bce_closed_form,
    "softmax_cross_entropy": softmax_closed_form,
    "gaussian_nll": gaussian_closed_form,
    "mean_squared_error": mse_closed_form,
    "multiclass_hinge": hinge_closed_form,
}


# --------------------------------------------------------------------------
# The three-way check
# --------------------------------------------------------------------------


def assert_close(got, want, scale, what: str, floor: float = 0.0) -> None:
    """|got - want| <= 1e-12 |want| + 1e-15 scale + floor + 1e-300, entry by entry; got finite."""
    got, want, scale = (np.asarray(a, np.float64) for a in (got, want, scale))
    assert np.all(np.isfinite(got)), f"{what}: not finite: {got}"
    bound = RTOL * np.abs(want) + CANCEL * np.abs(scale).reshape(np.shape(want)) + floor + TINY
    bad = np.abs(got - want) > bound
    assert not np.any(bad), f"{what}: got {got[bad]}, want {want[bad]} (bound {bound[bad]})"


def jax_value_and_grad(loss, outputs, targets):
    """The JAX loss and jax.grad in float64."""
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(loss)(jnp.asarray(outputs), jnp.asarray(targets))
        return float(value), np.asarray(grad, np.float64)


def check_three_ways(loss, outputs, targets) -> None:
    """Reference, JAX and closed form agree on value and gradient, all finite.

    optax's softmax cross-entropy forms logsumexp(z) - z_y and q - p, so its
    value and gradient are exact only to about eps max|z| absolute (at z = (40, 0),
    y = 0 they are 0 and 0, not zeta(-40) and -sigma(-40); at (-800, -1, 30), y = 2
    the value is 30.0000000000000344 rounded, less 30): its JAX path alone gets that floor.
    """
    outputs = np.asarray(outputs, np.float64)
    want, want_grad, v_scale, g_scale = CLOSED_FORMS[loss.name](outputs, targets)
    value, grad = loss.reference.value_and_grad(outputs, targets)
    assert_close(value, want, v_scale, f"{loss.name} reference value")
    assert_close(grad, want_grad, g_scale, f"{loss.name} reference gradient")
    j_value, j_grad = jax_value_and_grad(loss, outputs, targets)
    floor = 1e-15 * max(1.0, np.max(np.abs(outputs))) if loss is pn.softmax_cross_entropy else 0.0
    assert_close(j_value, want, v_scale, f"{loss.name} JAX value", floor)
    assert_close(j_grad, want_grad, g_scale, f"{loss.name} JAX gradient", floor)
    assert_close(j_value, value, v_scale, f"{loss.name} JAX vs reference value", floor)
    assert_close(j_grad, grad, g_scale, f"{loss.name} JAX vs reference gradient", floor)


# --------------------------------------------------------------------------
# The named points
# --------------------------------------------------------------------------


@pytest.mark.parametrize("y", [0.0, 1.0, 0.25])
def test_bce_at_extreme_logits(y):
    """zeta((1 - 2y) z) and sigma(z) - y (eq. 6.23) at logits up to +-800, hard and soft targets."""
    z = np.array(LOGITS)
    check_three_ways(pn.binary_cross_entropy, z, np.full_like(z, y))


def test_bce_confident_and_right_keeps_relative_precision():
    """At z = 40, y = 1 the gradient is -sigma(-40) = -e^-40 / (1 + e^-40) ~ -4.25e-18, not 1 - 1 = 0."""
    _, grad = pn.binary_cross_entropy.reference.value_and_grad(np.array([40.0]), np.array([1.0]))
    assert grad[0] == pytest.approx(-math.exp(-40) / (1 + math.exp(-40)), rel=1e-15, abs=0)
    value, _ = pn.binary_cross_entropy.reference.value_and_grad(np.array([-40.0]), np.array([0.0]))
    assert value == pytest.approx(math.exp(-40), rel=1e-15, abs=0)  # zeta(-40) = e^-40 (1 - e^-40 / 2 + ...)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("residual", [0.0, 1.0, 40.0])
def test_gaussian_nll_at_extreme_rho(rho, residual):
    """-1/2 log beta + 1/2 beta (y - mu)^2 (section 6.2.2.4) and its gradients for rho in [-800, 800]."""
    outputs = np.array([[0.5, -3.0, rho, -rho]])
    check_three_ways(pn.gaussian_nll, outputs, np.array([[0.5 + residual, -3.0 - residual]]))


def test_gaussian_nll_rho_gradient_tends_to_minus_one_half():
    """Below rho = -710.5 the reference's d/drho was -inf, below -745.1 NaN; it is -1/2 per entry / count."""
    outputs = np.array([[0.0, 0.0, -711.0, -800.0]])
    _, grad = pn.gaussian_nll.reference.value_and_grad(outputs, np.zeros((1, 2)))
    np.testing.assert_array_equal(grad[0, 2:], [-0.25, -0.25])
    np.testing.assert_array_equal(jax_value_and_grad(pn.gaussian_nll, outputs, np.zeros((1, 2)))[1], grad)


SOFTMAX_ROWS = [
    ([40.0, -40.0, 0.0], 0),
    ([40.0, 0.0], 0),
    ([800.0, -800.0, 0.0], 0),
    ([-800.0, 800.0, 40.0], 1),
    ([-800.0, 800.0, 40.0], 2),
    ([30.0, 30.0, -100.0], 1),
    ([-30.0, 800.0, 799.0], 2),
]


@pytest.mark.parametrize("row, label", SOFTMAX_ROWS)
def test_softmax_cross_entropy_at_extreme_logits(row, label):
    """logsumexp(z) - z_y (eq. 6.30) and q - p, for integer and one-hot labels."""
    z = np.array([row])
    check_three_ways(pn.softmax_cross_entropy, z, np.array([label]))
    check_three_ways(pn.softmax_cross_entropy, z, _one_hot(np.array([label]), len(row)))


def test_softmax_of_two_classes_is_bce():
    """Softmax over (z, 0) is the sigmoid unit: same value zeta(-40) and gradient -sigma(-40) at z = 40."""
    value, grad = pn.softmax_cross_entropy.reference.value_and_grad(np.array([[40.0, 0.0]]), np.array([0]))
    b_value, b_grad = pn.binary_cross_entropy.reference.value_and_grad(np.array([40.0]), np.array([1.0]))
    assert value == pytest.approx(b_value, rel=1e-15, abs=0) and value > 0
    assert grad[0, 0] == pytest.approx(b_grad[0], rel=1e-15, abs=0) and grad[0, 0] < 0


@pytest.mark.parametrize("scale", [1.0, 30.0, 800.0])
def test_hinge_and_mse_at_extreme_outputs(scale):
    """max_j (z_j + [j != y]) - z_y with its ties, and (z - y)^2, at outputs up to +-800."""
    z = scale * np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 1.0]])
    check_three_ways(pn.multiclass_hinge, z, np.array([0, 2]))
    check_three_ways(pn.mean_squared_error, z, -z[::-1])


@pytest.mark.parametrize("penalty", [pn.L2Penalty(0.5), pn.L1Penalty(0.5)])
def test_penalties_at_extreme_weights(penalty):
    """lambda/2 ||w||^2 (eq. 7.1) and lambda ||w||_1 (eq. 7.18): polynomial, finite at weights of 800."""
    params = {"w": np.array([[800.0, -800.0], [1e-300, 0.0]]), "b": np.array([1e300])}
    value, grad = penalty.reference.value_and_grad(params)
    with jax.enable_x64(True):
        j_value, j_grad = jax.value_and_grad(penalty)(jax.tree_util.tree_map(jnp.asarray, params))
    np.testing.assert_allclose(value, float(j_value), rtol=1e-15)
    np.testing.assert_allclose(grad["w"], j_grad["w"], rtol=1e-15, atol=1e-300)
    assert math.isfinite(value) and np.all(np.isfinite(grad["w"]))


# --------------------------------------------------------------------------
# The property version: extreme outputs drawn by hypothesis
# --------------------------------------------------------------------------

extremes = st.one_of(st.sampled_from(LOGITS + RHOS), st.floats(-800, 800, allow_subnormal=False))
quarters = st.integers(-3200, 3200).map(lambda k: k / 4)  # exact in float: the closed form's ties are JAX's


def _array(draw, elements, shape) -> np.ndarray:
    """An array of the given shape, its entries drawn from ``elements``."""
    size = math.prod(shape)
    return np.array(draw(st.lists(elements, min_size=size, max_size=size))).reshape(shape)


@st.composite
def cases(draw):
    """A loss, extreme outputs of shape (rows, width) and valid targets."""
    name = draw(st.sampled_from(sorted(CLOSED_FORMS)))
    rows, width = draw(st.integers(1, 2)), draw(st.integers(2, 3))
    loss, labels = getattr(pn, name), _array(draw, st.integers(0, width - 1), (rows,))
    if name == "multiclass_hinge":
        return loss, _array(draw, quarters, (rows, width)), labels
    if name == "gaussian_nll":
        z = _array(draw, extremes, (rows, 2 * width))
        return loss, z, _array(draw, st.floats(-50, 50), (rows, width))
    z = _array(draw, extremes, (rows, width))
    if name == "binary_cross_entropy":
        return loss, z, _array(draw, st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0, 1), (rows, width))
    if name == "softmax_cross_entropy":
        if draw(st.booleans()):
            return loss, z, labels
        weights = _array(draw, st.integers(0, 3), (rows, width)) + _one_hot(labels, width)
        return loss, z, weights / weights.sum(axis=-1, keepdims=True)
    return loss, z, _array(draw, extremes, (rows, width))


@given(cases())
@settings(max_examples=50, deadline=None)
def test_every_loss_agrees_three_ways_at_extreme_outputs(case):
    """Any loss, outputs up to +-800 (named extremes and any float between): three-way agreement."""
    loss, outputs, targets = case
    check_three_ways(loss, outputs, targets)
