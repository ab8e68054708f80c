"""Second-order trust: the hand-derived R-operator against JAX and finite differences.

``reference_hvp`` and ``reference_ggn_vp`` are compared with independent
computations (JAX forward over reverse, closed forms, float64 finite
differences of the reference gradient).  Every planted second-order slip (a
missing f'' term, a missing cross term between weights and inputs, a wrong
R-forward, a wrong loss Hessian, a wrong Gauss-Newton loss curvature, a wrong
penalty Hessian) must fail ``check_hvp`` and be located at the planted node.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn
from purenet.layers.dense import DENSE_REFERENCE, dense_forward, matmul_bprop

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4))
LABELS = np.array([0, 1, 2, 0, 1, 2])


def init(model, width=4):
    return model.init(jax.random.PRNGKey(0), (-1, width))[1]


def failure(model, params, x=X, targets=LABELS, loss=pn.softmax_cross_entropy, **kwargs):
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_hvp(model, params, x, targets, loss, **kwargs)
    return caught.value.report


# --------------------------------------------------------------------------
# Closed forms: the reference against products derived on paper
# --------------------------------------------------------------------------


def test_a_linear_model_with_squared_error_has_hessian_two_x_transpose_x_over_n():
    """For y = x w + b and L = mean((y - t)^2) over N entries, H_ww v = 2 x^T x v / N (and v_b's cross term)."""
    model = pn.Dense(1)
    params = {"w": RNG.standard_normal((4, 1)), "b": RNG.standard_normal(1)}
    v = {"w": RNG.standard_normal((4, 1)), "b": RNG.standard_normal(1)}
    targets = RNG.standard_normal((6, 1))
    product = pn.reference_hvp(model, params, X, targets, pn.mean_squared_error, v)
    n = X.shape[0]
    r_y = X @ v["w"] + v["b"]  # J v
    np.testing.assert_allclose(product["w"], 2 * X.T @ r_y / n, rtol=1e-13)
    np.testing.assert_allclose(product["b"], 2 * r_y.sum(axis=0) / n, rtol=1e-13)
    gauss_newton = pn.reference_ggn_vp(model, params, X, targets, pn.mean_squared_error, v)
    np.testing.assert_allclose(gauss_newton["w"], product["w"], rtol=1e-13)  # linear model: G = H


def test_l2_curvature_is_lambda_on_weights_and_zero_on_biases():
    model = pn.Dense(2)
    params, v = init(model), jax.tree_util.tree_map(lambda a: RNG.standard_normal(a.shape), init(model))
    targets = RNG.standard_normal((6, 2))
    base = pn.reference_hvp(model, params, X, targets, pn.mean_squared_error, v)
    with_penalty = pn.reference_hvp(
        model, params, X, targets, pn.mean_squared_error, v, regularizer=pn.L2Penalty(0.3)
    )
    np.testing.assert_allclose(with_penalty["w"] - base["w"], 0.3 * v["w"], rtol=1e-12)
    np.testing.assert_allclose(with_penalty["b"], base["b"], rtol=1e-14)


def test_softmax_cross_entropy_hessian_is_diag_q_minus_q_q_transpose():
    z, r = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    labels = np.array([0, 3, 1])
    _, _, pullback = pn.softmax_cross_entropy.reference.run_rop(z, labels, r)
    q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = np.stack([(np.diag(qi) - np.outer(qi, qi)) @ ri for qi, ri in zip(q, r)]) / 3
    np.testing.assert_allclose(pullback(1.0, 0.0)[1], expected, rtol=1e-12)


@pytest.mark.parametrize("rho", [-40.0, -20.0, -12.5, -11.5, -3.0, 0.0, 5.0, 40.0])
def test_gaussian_nll_curvature_in_rho_matches_a_high_precision_difference(rho):
    """d^2/drho^2 of -1/2 log softplus(rho) against an 80-digit central difference (decimal)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 80

    def nll(r):  # y = mu: only the log term depends on rho
        return -Decimal("0.5") * (1 + Decimal(r).exp()).ln().ln()

    h = Decimal("1e-6")
    r = Decimal(rho)
    exact = float((nll(r + h) - 2 * nll(r) + nll(r - h)) / (h * h))
    outputs, y = np.array([[0.0, rho]]), np.array([[0.0]])
    _, _, pullback = pn.gaussian_nll.reference.run_rop(outputs, y, np.array([[0.0, 1.0]]))
    assert pullback(1.0, 0.0)[1][0, 1] == pytest.approx(exact, rel=1e-9, abs=1e-300)


# --------------------------------------------------------------------------
# check_hvp passes on every layer and loss, and refuses what it cannot check
# --------------------------------------------------------------------------


MODELS = {
    "smooth": pn.serial(
        pn.Dense(5), pn.Tanh(), pn.Dense(5), pn.Sigmoid(), pn.Softplus(), pn.Cos(), pn.Dense(3)
    ),
    "rectifiers": pn.serial(
        pn.LowRankDense(6, 2), pn.PReLU(), pn.Dense(5), pn.PReLU(shared=True), pn.Dense(3)
    ),
    "maxout_rbf": pn.serial(pn.Maxout(5, 3), pn.RBF(4), pn.HardTanh(), pn.Dense(3)),
    "combinators": pn.serial(
        pn.residual(pn.serial(pn.Dense(6), pn.Tanh())),
        pn.dense_block(pn.serial(pn.Dense(2), pn.Sigmoid()), pn.Dense(2)),
        pn.fan_out(2),
        pn.parallel(pn.Dense(3), pn.serial(pn.Dense(3), pn.Tanh())),
        pn.fan_in_concat(),
        pn.repeat(pn.serial(pn.Dense(6), pn.Softplus()), 2),
        pn.Dropout(0.2),
        pn.Identity(),
        pn.Dense(3),
    ),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_check_hvp_passes_on_every_layer_and_combinator(name, kind):
    model = MODELS[name]
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.1, init(model))  # biases and slopes off 0
    report = pn.check_hvp(
        model, params, X, LABELS, pn.softmax_cross_entropy, kind=kind, regularizer=pn.L2Penalty(0.1)
    )
    assert report.passed and report.verdict == "passed"
    assert all(leaf.reference_vs_jax.rel_error < 1e-10 for leaf in report.leaves)


@pytest.mark.parametrize(
    "loss, targets",
    [
        (pn.mean_squared_error, RNG.standard_normal((6, 4))),
        (pn.binary_cross_entropy, RNG.uniform(size=(6, 4))),
        (pn.softmax_cross_entropy, RNG.dirichlet(np.ones(4), 6)),
        (pn.gaussian_nll, RNG.standard_normal((6, 2))),
        (pn.multiclass_hinge, np.array([0, 1, 2, 3, 0, 1])),
    ],
)
def test_check_hvp_passes_for_every_loss_and_penalty(loss, targets):
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(4))
    for regularizer in (None, pn.L1Penalty(0.1)):
        for kind in ("hessian", "ggn"):
            assert pn.check_hvp(
                model, init(model), X, targets, loss, kind=kind, regularizer=regularizer
            ).passed


def test_piecewise_linear_units_keep_only_the_cross_terms_between_layers():
    """f'' = 0 for rectifiers and the hinge, so a one-layer hinge cost has H = 0 exactly;
    a deeper one keeps the weight-weight cross terms, which all three sides agree on."""
    linear = pn.Dense(3)
    report = pn.check_hvp(linear, init(linear), X, LABELS, pn.multiclass_hinge)
    assert report.passed and max(leaf.scale for leaf in report.leaves) == 0.0
    model = pn.serial(pn.Dense(5), pn.ReLU(), pn.Dense(5), pn.AbsRect(), pn.Dense(3))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.05, init(model))
    report = pn.check_hvp(model, params, X, LABELS, pn.multiclass_hinge)
    assert report.passed and report.kink_margin > 1e-3 and max(leaf.scale for leaf in report.leaves) > 0


def test_check_hvp_refuses_what_it_cannot_check():
    model = pn.serial(pn.Dense(3), pn.Tanh())
    params = init(model)
    with pytest.raises(pn.ConfigError, match="kind must be 'hessian' or 'ggn'"):
        pn.check_hvp(model, params, X, LABELS, pn.softmax_cross_entropy, kind="fisher")
    wrong = {"w": np.ones((4, 3)), "b": np.ones(3)}
    with pytest.raises(pn.ParamsError, match=r"check_hvp\[hessian\]\(serial\).*v"):
        pn.check_hvp(model, params, X, LABELS, pn.softmax_cross_entropy, v=wrong)
    nan_v = jax.tree_util.tree_map(lambda a: np.full(a.shape, np.nan), params)
    with pytest.raises(pn.DataError, match=r"v\[0\]\['b'\]"):
        pn.check_hvp(model, params, X, LABELS, pn.softmax_cross_entropy, v=nan_v)
    with pytest.raises(pn.DataError, match="out of range|labels"):
        pn.check_hvp(model, params, X, LABELS + 5, pn.softmax_cross_entropy)


def test_a_layer_without_an_r_pass_is_refused_by_name():
    swish = pn.elementwise(
        "Swish",
        lambda z: z * jax.nn.sigmoid(z),
        np_fn=lambda z: z / (1 + np.exp(-z)),
        np_derivative=np.ones_like,
    )
    model = pn.serial(pn.Dense(3), swish, pn.Dense(3))
    with pytest.raises(pn.MissingReferenceError, match=r"Swish.*no second-order reference"):
        pn.reference_hvp(model, init(model), X, LABELS, pn.softmax_cross_entropy, init(model))


def test_an_r_pullback_of_the_wrong_tree_is_refused_naming_the_node():
    def rop(params, x, v, r_x):
        y, r_y, pullback = DENSE_REFERENCE.rop(params, x, v, r_x)
        return y, r_y, lambda g, r_g: (pullback(g, r_g)[0], ({"w": pullback(g, r_g)[1][0]["w"]}, x))

    bad = pn.Dense(3).replace(reference=pn.Reference(dense_forward, rop=rop), name="BadDense")
    model = pn.serial(pn.Dense(4), pn.Tanh(), bad)
    with pytest.raises(pn.ParamsError, match=r"BadDense.*R\{g_params\}.*keys"):
        pn.reference_hvp(model, init(model), X, LABELS, pn.softmax_cross_entropy, init(model))


# --------------------------------------------------------------------------
# Planted second-order slips: caught, and located
# --------------------------------------------------------------------------


def tanh_without_curvature():
    """Tanh whose R-backward drops G f''(z) R{z}: the missing f'' term."""
    return pn.elementwise(
        "Tanh",
        jnp.tanh,
        np_fn=np.tanh,
        np_derivative=lambda z: 1 - np.tanh(z) ** 2,
        np_second_derivative=np.zeros_like,
    )


def test_a_missing_second_derivative_term_is_located_at_its_unit():
    model = pn.serial(
        pn.Dense(5), pn.Sigmoid(), pn.residual(pn.serial(pn.Dense(5), tanh_without_curvature())), pn.Dense(3)
    )
    report = failure(model, init(model))
    assert report.verdict == "derivation"
    assert report.culprit[:4] == ("R-backward", "Tanh", "params[2]['block'][1]", "R{g_x}")
    assert "the R-backward of Tanh at params[2]['block'][1] is wrong" in report.headline


def dense_with_rop(drop: str):
    """Dense whose R-backward drops one cross term between its weights and its input."""

    def rop(params, x, v, r_x):
        w, b = params["w"], params["b"]

        def pullback(g, r_g):
            g_w, g_x = matmul_bprop(x, w, g)
            r_g_w, r_g_x = matmul_bprop(x, w, r_g)
            cross_w, cross_x = matmul_bprop(r_x, v["w"], g)
            r_g_w = r_g_w if drop == "w" else r_g_w + cross_w
            r_g_x = r_g_x if drop == "x" else r_g_x + cross_x
            grads = ({"w": g_w, "b": g.sum(axis=0)}, g_x)
            return grads, ({"w": r_g_w, "b": r_g.sum(axis=0)}, r_g_x)

        r_y = r_x @ w + v["b"] if drop == "forward" else r_x @ w + x @ v["w"] + v["b"]
        return x @ w + b, r_y, pullback

    return pn.Dense(5).replace(reference=pn.Reference(dense_forward, rop=rop))


@pytest.mark.parametrize(
    "drop, stage, part",
    [
        ("x", "R-backward", "R{g_x}"),  # G v_w^T: the weights' direction meeting the gradient
        ("w", "R-backward", "R{g_params}['w']"),  # R{x}^T G: the input's direction meeting the gradient
        ("forward", "R-forward", "R{value}"),  # x v_w dropped from R{y}
    ],
)
def test_a_missing_cross_term_between_weights_and_inputs_is_located(drop, stage, part):
    model = pn.serial(pn.Dense(5), pn.Tanh(), dense_with_rop(drop), pn.Softplus(), pn.Dense(3))
    report = failure(model, init(model))
    assert report.culprit[:4] == (stage, "Dense(5)", "params[2]", part)


def loss_with_hessian(hessian_vp, name):
    reference = pn.softmax_cross_entropy.reference
    value_and_grad = lambda z, y: reference.value_and_grad(z, y)  # noqa: E731
    return pn.Loss(pn.softmax_cross_entropy.fn, name, pn.LossReference(value_and_grad, hessian_vp=hessian_vp))


def diagonal_softmax_hessian(z, labels, r):
    """diag(q) r alone: the -q q^T r term of softmax's Hessian dropped (a wrong Gauss-Newton curvature)."""
    q = np.exp(z - z.max(axis=-1, keepdims=True))
    q /= q.sum(axis=-1, keepdims=True)
    return q * r / z.shape[0]


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_a_wrong_loss_hessian_is_located_at_the_loss(kind):
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    loss = loss_with_hessian(diagonal_softmax_hessian, "diagonal_softmax")
    report = failure(model, init(model), loss=loss, kind=kind)
    assert report.culprit[:4] == ("loss", "diagonal_softmax", "loss", "R{g_outputs}")
    assert "Hessian-vector product" in report.headline


def test_a_wrong_gauss_newton_curvature_fails_the_ggn_check_too():
    """The planted curvature is positive semi-definite, so only the comparison can catch it."""
    model = pn.serial(pn.Dense(5), pn.Sigmoid(), pn.Dense(3))
    loss = loss_with_hessian(lambda z, y, r: 2 * diagonal_softmax_hessian(z, y, r), "doubled_diagonal")
    report = failure(model, init(model), loss=loss, kind="ggn")
    assert report.quantity == "Gauss-Newton product"
    assert report.culprit.stage == "loss" and report.culprit.part == "R{g_outputs}"
    assert all(not leaf.reference_vs_jax.passed for leaf in report.failures)


class DoubleCurvatureL2(pn.L2Penalty):
    """L2 whose Hessian is taken as 2 lambda I (the docstring slip the issue names)."""

    @property
    def reference(self):
        base = super().reference

        def rop(params, v):
            value, r_value, pullback = base.rop(params, v)
            return (
                value,
                r_value,
                lambda g, r_g: (
                    pullback(g, r_g)[0],
                    jax.tree_util.tree_map(
                        lambda a, b: a + b,
                        pullback(g, r_g)[1],
                        jax.tree_util.tree_map(lambda t: self.scale * t, v),
                    ),
                ),
            )

        return pn.Reference(base.forward, base.kinks, rop)


def test_a_wrong_penalty_hessian_is_located_at_the_penalty():
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    report = failure(model, init(model), regularizer=DoubleCurvatureL2(0.5))
    assert report.culprit[:3] == ("penalty", "DoubleCurvatureL2", "regularizer")
    assert report.culprit.part.startswith("R{g_params}")


def test_a_wrong_r_pass_inside_repeat_is_located_in_its_copy():
    block = pn.serial(pn.Dense(4), tanh_without_curvature())
    model = pn.serial(pn.Dense(4), pn.repeat(block, 3), pn.Dense(3))
    report = failure(model, init(model))
    assert report.culprit.stage == "R-backward" and report.culprit.name == "Tanh"
    assert "of the stacked params" in report.culprit.path


# --------------------------------------------------------------------------
# One layer's R-passes (check_layer) and any function's H v (check_function)
# --------------------------------------------------------------------------


LAYERS = [
    (pn.Dense(3), (4, 5)),
    (pn.LowRankDense(3, 2), (4, 5)),
    (pn.Maxout(3, 2), (4, 5)),
    (pn.RBF(3), (4, 5)),
    (pn.PReLU(), (4, 5)),
    (pn.PReLU(shared=True), (4, 5)),
    (pn.ReLU(), (4, 5)),
    (pn.Sigmoid(), (4, 5)),
    (pn.Tanh(), (4, 5)),
    (pn.Softplus(), (4, 5)),
    (pn.Cos(), (4, 5)),
    (pn.HardTanh(), (4, 5)),
    (pn.Flatten(), (4, 2, 3)),
    (pn.Dropout(0.5), (4, 5)),
    (pn.residual(pn.serial(pn.Dense(3), pn.Tanh())), (4, 5)),
    (pn.dense_block(pn.Dense(2), pn.Sigmoid()), (4, 5)),
    (pn.repeat(pn.serial(pn.Dense(5), pn.Softplus()), 2), (4, 5)),
    (pn.fan_out(2), (4, 5)),
    (pn.fan_in_sum(), ((4, 5), (4, 5))),
    (pn.fan_in_concat(), ((4, 5), (4, 2))),
    (pn.parallel(pn.Dense(2), pn.Tanh()), ((4, 5), (4, 2))),
]


@pytest.mark.parametrize("layer, shape", LAYERS, ids=[layer.name for layer, _ in LAYERS])
def test_every_layers_r_passes_agree_with_jax_and_finite_differences(layer, shape):
    report = pn.check_layer(layer, shape, second_order=True)
    assert report.passed and report.quantity == "R-pass" and report.forward_error < 1e-12
    assert all(leaf.path.startswith(("R{y}", "R{g_params}", "R{g_x}")) for leaf in report.leaves)


def swish_rop(second_derivative):
    """A user's Swish, h = z sigma(z), with its R-pass: f'' given by ``second_derivative``."""

    def sigma(z):
        return 1 / (1 + np.exp(-z))

    def slope(z):
        return sigma(z) * (1 + z * (1 - sigma(z)))

    def rop(params, z, v, r_z):
        def pullback(g, r_g):
            return ((), g * slope(z)), ((), r_g * slope(z) + g * second_derivative(z, sigma(z)) * r_z)

        return z * sigma(z), slope(z) * r_z, pullback

    return rop


SWISH = pn.Layer(lambda key, shape: (shape, ()), lambda params, z, **kw: z * jax.nn.sigmoid(z), name="Swish")


def test_a_users_own_r_pass_is_checked_and_a_wrong_one_caught():
    right = swish_rop(lambda z, s: s * (1 - s) * (2 + z * (1 - 2 * s)))
    assert pn.check_layer(SWISH, (3, 4), rop=right).passed
    wrong = swish_rop(lambda z, s: s * (1 - s) * (1 + z * (1 - 2 * s)))  # one sigma' term dropped
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_layer(SWISH, (3, 4), rop=wrong)
    report = caught.value.report
    assert report.verdict == "derivation" and [leaf.path for leaf in report.failures] == ["R{g_x}"]
    assert "hand-derived R-pass is wrong (JAX and finite differences agree)" in report.headline


def test_check_layer_locates_a_wrong_r_pass_inside_a_combinator():
    model = pn.serial(pn.Dense(3), pn.residual(pn.serial(pn.Dense(3), tanh_without_curvature())))
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_layer(model, (4, 5), second_order=True)
    assert caught.value.report.culprit[:4] == ("R-backward", "Tanh", "params[1]['block'][1]", "R{g_x}")


def test_a_layer_without_an_r_pass_cannot_be_checked_to_second_order():
    with pytest.raises(pn.MissingReferenceError, match=r"Swish.*no R-pass to check"):
        pn.check_layer(SWISH, (3, 4), second_order=True)


A = RNG.standard_normal((5, 3))


def logsumexp_of_ax(x):
    return jax.nn.logsumexp(jnp.asarray(A) @ x)


def logsumexp_hvp(x, v, drop_outer=False):
    """A^T (diag(q) - q q^T) A v, q = softmax(A x)."""
    z = A @ x
    q = np.exp(z - z.max())
    q /= q.sum()
    r = A @ v
    return A.T @ (q * r - (0 if drop_outer else q * (q @ r)))


def test_check_function_checks_a_hand_derived_hvp_and_catches_a_wrong_one():
    x = RNG.standard_normal(3)
    report = pn.check_function(logsumexp_of_ax, (x,), hvp=logsumexp_hvp)
    assert report.passed and report.quantity == "Hessian-vector product"
    with pytest.raises(pn.GradientCheckError, match="hand-derived Hessian-vector product is wrong"):
        pn.check_function(logsumexp_of_ax, (x,), hvp=lambda x, v: logsumexp_hvp(x, v, drop_outer=True))


def test_check_function_second_order_catches_a_wrong_custom_jvp():
    @jax.custom_jvp
    def cube(x):
        return jnp.sum(x**3)

    @cube.defjvp
    def cube_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return cube(x), jnp.sum(3 * x**2 * t)

    assert pn.check_function(cube, (RNG.standard_normal(4),), second_order=True).passed

    @jax.custom_jvp
    def wrong_cube(x):
        return jnp.sum(x**3)

    @wrong_cube.defjvp
    def wrong_cube_jvp(
        primals, tangents
    ):  # 3 x^2 right, but half its derivative stopped: JAX's H = 3x, not 6x
        (x,), (t,) = primals, tangents
        return wrong_cube(x), jnp.sum(3 * x * jax.lax.stop_gradient(x) * t)

    point = (RNG.standard_normal(4),)
    assert pn.check_function(wrong_cube, point).passed  # the first order cannot see it
    with pytest.raises(pn.GradientCheckError, match="disagrees with finite differences"):
        pn.check_function(wrong_cube, point, second_order=True)


def test_check_function_second_order_refuses_what_it_cannot_check():
    x = RNG.standard_normal(3)
    with pytest.raises(pn.ConfigError, match="a second-order check needs a scalar f"):
        pn.check_function(lambda x: x**2, (x,), second_order=True)
    with pytest.raises(pn.ConfigError, match=r"give one of grad=.*\['grad', 'hvp'\]"):
        pn.check_function(logsumexp_of_ax, (x,), grad=lambda x: x, hvp=logsumexp_hvp)
    with pytest.raises(pn.ParamsError, match="hvp's result"):
        pn.check_function(logsumexp_of_ax, (x,), hvp=lambda x, v: np.ones(4))


# --------------------------------------------------------------------------
# A hostile hunt's findings: each must be caught, refused by name, or honest
# --------------------------------------------------------------------------


def swish_with(second_derivative, first_order_scale=1.0):
    """Swish whose reference has a given f'' and a first order scaled by ``first_order_scale``."""
    rop = swish_rop(second_derivative)
    right = swish_rop(lambda z, s: s * (1 - s) * (2 + z * (1 - 2 * s)))

    def forward(params, z):
        y, _, pullback = right(params, z, (), np.zeros_like(z))
        return y, lambda g: ((), first_order_scale * pullback(g, np.zeros_like(g))[0][1])

    return SWISH.replace(reference=pn.Reference(forward, rop=rop))


def test_a_slip_in_a_leaf_far_smaller_than_the_largest_is_still_caught():
    """Deep tanh stack: the first layer's H v is ~1e-12 of the largest entry; f'' sign-flipped there."""
    right = lambda z, s: s * (1 - s) * (2 + z * (1 - 2 * s))  # noqa: E731

    def model(second_derivative):
        layers = [layer for _ in range(16) for layer in (pn.Dense(6), pn.Tanh())]
        return pn.serial(pn.Dense(6), swish_with(second_derivative), *layers, pn.Dense(3))

    params = jax.tree_util.tree_map(lambda a: 0.2 * np.asarray(a) + 0.05, init(model(right), 5))
    x = RNG.standard_normal((6, 5))
    assert pn.check_hvp(model(right), params, x, LABELS, pn.softmax_cross_entropy).passed
    report = failure(model(lambda z, s: -3 * right(z, s)), params, x=x)
    assert report.culprit[:3] == ("R-backward", "Swish", "params[1]")


def test_a_wrong_first_order_is_named_as_such_not_blamed_on_finite_differences():
    model = pn.serial(
        pn.Dense(4), swish_with(lambda z, s: s * (1 - s) * (2 + z * (1 - 2 * s)), 1.01), pn.Dense(3)
    )
    report = failure(model, init(model))
    assert report.verdict == "derivation" and report.first_order_error > 1e-4
    assert report.headline.startswith("the first-order reference gradient differs from jax.grad")
    assert report.culprit[:4] == ("backward", "Swish", "params[1]", "g_x")


@pytest.mark.parametrize("scale", [1e155, 1e-200])
def test_the_verdict_does_not_depend_on_the_scale_of_v(scale):
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
    params = init(model, 5)
    v = jax.tree_util.tree_map(lambda a: scale * RNG.standard_normal(a.shape), params)
    x = RNG.standard_normal((6, 5))
    for kind in ("hessian", "ggn"):
        assert pn.check_hvp(model, params, x, LABELS, pn.softmax_cross_entropy, v, kind=kind).passed


def mse_with_hessian(hessian_vp):
    reference = pn.mean_squared_error.reference
    value_and_grad = lambda z, y: reference.value_and_grad(z, y)  # noqa: E731
    return pn.Loss(
        pn.mean_squared_error.fn, "my_mse", pn.LossReference(value_and_grad, hessian_vp=hessian_vp)
    )


@pytest.mark.parametrize(
    "hessian_vp, error, message",
    [
        (lambda z, y, r: 2.0 * r.sum() / r.size, pn.ParamsError, r"LossReference.*hessian_vp's result.*shape"),
        (lambda z, y, r: 2.0 * r[:, :1] / r.size, pn.ParamsError, r"LossReference.*hessian_vp's result.*shape"),
        (lambda z, y, r: np.full(r.shape, np.nan), pn.DataError, r"my_mse.*hessian_vp.*finite"),
        (lambda z, y, r: [1.0], pn.ParamsError, r"LossReference.*hessian_vp's result"),
    ],
)
def test_a_loss_hessian_of_the_wrong_shape_or_value_is_refused_naming_the_loss(hessian_vp, error, message):
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
    params = init(model)
    with pytest.raises(error, match=message):
        pn.reference_hvp(model, params, X, RNG.standard_normal((6, 3)), mse_with_hessian(hessian_vp), params)


def test_bad_arguments_to_the_references_and_checks_are_refused_by_name():
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
    params = init(model)
    loss = pn.softmax_cross_entropy
    with pytest.raises(pn.ConfigError, match="hessian_vp must be a function"):
        pn.LossReference(lambda z, y: (0.0, z), hessian_vp=3)
    with pytest.raises(pn.ShapeError, match=r"reference_hvp\(serial\).*empty batch"):
        pn.reference_hvp(model, params, np.zeros((0, 4)), np.zeros(0, int), loss, params)
    with pytest.raises(pn.InputTypeError, match=r"reference_hvp\(serial\).*x must be floating"):
        pn.reference_hvp(model, params, np.ones((6, 4), int), LABELS, loss, params)
    with pytest.raises(pn.ConfigError, match="expected a purenet.Layer"):
        pn.reference_hvp(lambda p, x: x, params, X, LABELS, loss, params)
    with pytest.raises(pn.ConfigError, match="loss must be the JAX function.*reference_loss"):
        pn.check_hvp(model, params, X, LABELS, loss.reference)
    assert pn.check_hvp(model, params, X, LABELS, loss.fn, reference_loss=loss.reference).passed
    with pytest.raises(pn.ConfigError, match="second_order=True checks H v"):
        pn.check_function(logsumexp_of_ax, (RNG.standard_normal(3),), second_order=True, grad=lambda x: x)
    with pytest.raises(pn.ConfigError, match="a second-order check takes rop="):
        pn.check_layer(SWISH, (3, 4), second_order=True, bprop=lambda p, x, g: ((), g))
    with pytest.raises(pn.ConfigError, match="second_order must be True or False"):
        pn.check_layer(pn.Tanh(), (3, 4), second_order="no")
    with pytest.raises(pn.ConfigError, match="a check of nothing"):
        pn.check_layer(pn.Tanh(), (3, 4), second_order=True, x=np.zeros((0, 4)))


def test_a_penalty_rop_of_the_wrong_tree_is_refused_naming_the_penalty():
    class Quartic:
        __name__ = "Quartic"

        def __call__(self, params):
            return sum(jnp.sum(w**4) for w in jax.tree_util.tree_leaves(params))

        @property
        def reference(self):
            def forward(params):
                value = sum(np.sum(w**4) for w in jax.tree_util.tree_leaves(params))
                return value, lambda g: jax.tree_util.tree_map(lambda w: g * 4 * w**3, params)

            def rop(params, v):
                value, pullback = forward(params)
                return value, 0.0, lambda g, r_g: (pullback(g), {"oops": 0.0})

            return pn.Reference(forward, rop=rop)

    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
    params = init(model)
    with pytest.raises(pn.ParamsError, match=r"Quartic.*penalty's Hessian-vector product"):
        pn.reference_hvp(model, params, X, LABELS, pn.softmax_cross_entropy, params, regularizer=Quartic())
