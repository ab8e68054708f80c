"""A hostile hunt on curvature's entry points: wrong input is refused by name, never a silent wrong number.

Before: the Hessian-free damping stuck at 0 or overflowed to inf (then NaN
forever), NaN data and out-of-range labels gave loss=nan silently, and a tuple
for the state an AttributeError; plot_spectral_density returned a path it had
not written and wrote beside a directory, dropped "_" labels, underflowed its
y-limit; a hand-built SpectralDensity integrated to 0.5 or raised bare NumPy
errors; cg_solve took a function for the operator, refused the state's own
0-d damping, accepted tol=2 and blamed a NaN x0 on the solution.
"""

import math
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

import purenet as pn
from purenet.curvature.density import SpectralDensity
from purenet.curvature.hessian_free import DAMPING_RANGE

matplotlib.use("Agg")

KEY = jax.random.PRNGKey(0)
X = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)
CLASSIFIER = pn.Dense(2)
_, CLASSIFIER_PARAMS = CLASSIFIER.init(KEY, (-1, 2))
LINEAR = pn.Dense(1)
_, LINEAR_PARAMS = LINEAR.init(KEY, (-1, 2))
FIT = np.asarray(LINEAR.apply(LINEAR_PARAMS, X))  # targets the linear model already fits exactly
FAR = FIT + np.sin(3 * X[:, :1])  # targets it does not


def hessian_free(model=LINEAR, loss=pn.mean_squared_error):
    return pn.make_hessian_free_step(model, loss)


def operator():
    return pn.model_operator(CLASSIFIER, pn.softmax_cross_entropy, CLASSIFIER_PARAMS, X, Y)


def gradient():
    return jax.grad(lambda p: pn.softmax_cross_entropy(CLASSIFIER.apply(p, X), Y))(CLASSIFIER_PARAMS)


# --------------------------------------------------------------------------
# 7. make_hessian_free_step: damping, data, loss
# --------------------------------------------------------------------------


@pytest.mark.parametrize("damping", [0.0, 1e-12, 1e9])
def test_hessian_free_init_refuses_a_damping_the_rule_cannot_move(damping):
    init, _ = hessian_free()
    with pytest.raises(
        pn.ConfigError, match=r"make_hessian_free_step: damping must lie in \[1e-08, 1e\+08\]"
    ):
        init(LINEAR_PARAMS, damping=damping)


@settings(max_examples=12, deadline=None)
@given(log_damping=st.floats(-8, 8), converged=st.booleans())
@example(log_damping=8, converged=True)  # every step rejected: lambda x 3/2 past the ceiling
@example(log_damping=-8, converged=False)  # a quadratic, rho = 1: lambda x 2/3 past the floor
def test_hessian_free_damping_stays_within_its_floor_and_ceiling(log_damping, converged):
    init, step = hessian_free()
    state = init(LINEAR_PARAMS, damping=10.0**log_damping)
    for _ in range(3):
        state, info = step(state, X, FIT if converged else FAR)
        low, high = (float(np.float32(bound)) for bound in DAMPING_RANGE)
        assert low <= float(state.damping) <= high
        assert np.isfinite(float(info.loss))


def test_a_converged_problem_leaves_the_damping_free_to_train_on_new_data():
    init, step = hessian_free()
    state = init(LINEAR_PARAMS, damping=1e8)
    for _ in range(200):  # before: lambda grew 3/2 a step, to inf after ~175 steps, then NaN forever
        state, _ = step(state, X, FIT)
    assert np.isfinite(float(state.damping))
    for _ in range(10):
        state, info = step(state, X, FAR)
        assert np.isfinite(float(info.new_loss))
    design = np.c_[X, np.ones(len(X))]
    best = np.linalg.lstsq(design, FAR, rcond=None)[0]
    optimum = float(np.mean((design @ best - FAR) ** 2))
    assert float(info.loss) == pytest.approx(optimum, rel=1e-5), (
        "new data trains to its least-squares optimum"
    )


def test_hessian_free_step_refuses_labels_out_of_range():
    init, step = hessian_free(CLASSIFIER, pn.softmax_cross_entropy)
    bad = Y.copy()
    bad[0] = 7
    with pytest.raises(pn.DataError, match=r"hessian-free step: y must be class indices in \[0, 2\)"):
        step(init(CLASSIFIER_PARAMS), X, bad)


def test_hessian_free_step_refuses_nan_inputs_by_name():
    init, step = hessian_free(CLASSIFIER, pn.softmax_cross_entropy)
    x = X.copy()
    x[3, 1] = np.nan
    with pytest.raises(pn.NonFiniteCurvatureError, match=r"hessian-free step at x: x must be finite"):
        step(init(CLASSIFIER_PARAMS), x, Y)


def test_hessian_free_step_refuses_a_loss_that_is_not_finite():
    init, step = hessian_free()
    with pytest.raises(
        pn.NonFiniteCurvatureError, match=r"hessian-free step at loss: the loss is not finite"
    ):
        step(init(LINEAR_PARAMS), X * 1e20, FIT)  # outputs ~1e20: their squares overflow float32


# --------------------------------------------------------------------------
# 19. the operator and the state, by name
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda f, g: pn.cg_solve(f, g),
        lambda f, g: pn.lanczos(f, k=1),
        lambda f, g: pn.spectral_density(f),
        lambda f, g: pn.hutchinson_trace(f),
        lambda f, g: pn.hutchpp_trace(f),
    ],
)
def test_krylov_methods_refuse_a_function_for_the_operator(call):
    f = lambda p: pn.softmax_cross_entropy(CLASSIFIER.apply(p, X), Y)  # noqa: E731
    with pytest.raises(pn.ConfigError, match=r"op must be a CurvatureOperator .* got a function"):
        call(f, gradient())


@pytest.mark.parametrize(
    "model, loss, message",
    [
        (LINEAR, "mse", r"loss must be callable as loss\(outputs, targets\) .* got a str"),
        (lambda p, x: x, pn.mean_squared_error, r"model must be a purenet Layer .* got a function"),
        (LINEAR_PARAMS, pn.mean_squared_error, r"model must be a purenet Layer"),
    ],
)
def test_make_hessian_free_step_refuses_a_model_or_loss_of_the_wrong_kind(model, loss, message):
    # Before: both returned a pair whose first step failed with a bare TypeError or AttributeError.
    with pytest.raises(pn.ConfigError, match=rf"make_hessian_free_step: {message}"):
        pn.make_hessian_free_step(model, loss)


def test_hessian_free_step_refuses_params_for_its_state():
    _, step = hessian_free()
    with pytest.raises(pn.ConfigError, match=r"hessian-free step: state must be the HessianFreeState"):
        step(LINEAR_PARAMS, X, FIT)


# --------------------------------------------------------------------------
# 22 and 27. cg_solve's damping, tol and x0
# --------------------------------------------------------------------------


def test_cg_solve_takes_a_0d_floating_damping_as_the_state_carries_it():
    op, g = operator(), gradient()
    as_array = pn.cg_solve(op, g, damping=jnp.asarray(0.1), maxiter=5)
    as_float = pn.cg_solve(op, g, damping=0.1, maxiter=5)
    assert int(as_array.iterations) == int(as_float.iterations)
    np.testing.assert_allclose(float(as_array.residual_norm), float(as_float.residual_norm), rtol=1e-6)


@pytest.mark.parametrize("damping", [jnp.ones(2), jnp.asarray(True), np.array(True), np.array([0.1])])
def test_cg_solve_refuses_a_damping_array_that_is_not_a_real_scalar(damping):
    with pytest.raises(
        pn.ConfigError, match=r"cg_solve: damping must be a real number or a 0-d integer or floating array"
    ):
        pn.cg_solve(operator(), gradient(), damping=damping)


@pytest.mark.parametrize("damping", [np.array(1), jnp.asarray(1), np.int64(1)])
def test_cg_solve_takes_a_0d_integer_damping_as_it_takes_the_python_int(damping):
    # Before: np.array(1) was refused while damping=1 was accepted.
    op, g = operator(), gradient()
    as_array = pn.cg_solve(op, g, damping=damping, maxiter=5)
    as_int = pn.cg_solve(op, g, damping=1, maxiter=5)
    assert int(as_array.iterations) == int(as_int.iterations)
    np.testing.assert_allclose(float(as_array.residual_norm), float(as_int.residual_norm), rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(tol=st.floats(1.0, 1e6))
def test_cg_solve_refuses_a_relative_tolerance_of_one_or_more(tol):
    with pytest.raises(pn.ConfigError, match=r"cg_solve: tol must be < 1"):
        pn.cg_solve(operator(), gradient(), damping=0.1, tol=tol)


@pytest.mark.parametrize(
    "bad", ["b", "x0", (np.nan, 1e-5), (-1.0, 1e-5), (np.inf, 1e-5), (0.1, 2.0), (0.1, 0.0)]
)
def test_cg_solve_under_a_users_jit_reports_bad_arguments_in_its_result(bad):
    # Before: a NaN b (or NaN damping) gave x exactly 0, a negative damping converged=True, tol=2 passed.
    op, g = operator(), gradient()
    nan = jax.tree_util.tree_map(lambda leaf: leaf.at[0].set(jnp.nan), g)
    if isinstance(bad, tuple):
        result = jax.jit(lambda d, t: pn.cg_solve(op, g, damping=d, tol=t))(*bad)
    else:
        result = jax.jit(lambda v: pn.cg_solve(op, **{"b": g, "x0": None, bad: v}, damping=0.1))(nan)
    assert all(bool(jnp.all(jnp.isnan(leaf))) for leaf in jax.tree_util.tree_leaves(result.x))
    assert not bool(result.converged) and np.isnan(float(result.relative_residual))


def test_cg_solve_blames_a_nan_start_on_x0():
    g = gradient()
    x0 = jax.tree_util.tree_map(lambda leaf: jnp.zeros_like(leaf).at[0].set(jnp.nan), g)
    with pytest.raises(pn.NonFiniteCurvatureError, match=r"cg_solve at x0\['b'\]: x0 must be finite"):
        pn.cg_solve(operator(), g, damping=0.1, x0=x0)


# --------------------------------------------------------------------------
# 9 and 18. a hand-built SpectralDensity
# --------------------------------------------------------------------------

GOOD = SpectralDensity(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), 2)
BAD_DENSITIES = [
    (
        GOOD._replace(nodes=GOOD.nodes[0], weights=GOOD.weights[0]),
        pn.ShapeError,
        r"nodes must have shape \(probes, m\)",
    ),
    (GOOD._replace(nodes=np.zeros((1, 0)), weights=np.zeros((1, 0))), pn.ShapeError, r"got shape \(1, 0\)"),
    (
        GOOD._replace(weights=np.full((1, 3), 1 / 3)),
        pn.ShapeError,
        r"weights must have nodes' shape \(1, 2\)",
    ),
    (GOOD._replace(nodes=[["a", "b"]]), pn.ConfigError, r"nodes must be an array of reals"),
    (GOOD._replace(nodes=np.array([[0.0, np.inf]])), pn.DataError, r"holds NaN or inf in its nodes"),
    (GOOD._replace(weights=np.array([[1.5, -0.5]])), pn.DataError, r"weights must be >= 0"),
    (GOOD._replace(weights=np.zeros((1, 2))), pn.DataError, r"weights must sum to 1 .* got sums from 0 to 0"),
    (GOOD._replace(nodes=np.array([[-1e308, 1e308]])), pn.DataError, r"span \[-1e\+308, 1e\+308\]"),
    *[
        (GOOD._replace(dim=dim), pn.ConfigError, r"dim must be a positive integer")
        for dim in (0, np.array(0), 2.0, np.array(2.0), True, jnp.asarray(True), np.array([2]))
    ],
]


@pytest.mark.parametrize("density, error, message", BAD_DENSITIES)
@pytest.mark.parametrize(
    "where, read",
    [
        ("SpectralDensity.moment", lambda d: d.moment(1)),
        ("SpectralDensity.evaluate", lambda d: d.evaluate(np.linspace(-1, 2, 5))),
        ("SpectralDensity.default_sigma", lambda d: d.default_sigma()),
    ],
)
def test_a_bad_hand_built_density_is_refused_where_it_is_read(density, error, message, where, read):
    with pytest.raises(error, match=rf"{where}: .*{message}"):
        read(density)


@settings(max_examples=25, deadline=None)
@given(
    probes=st.integers(1, 3),
    m=st.integers(1, 4),
    data=st.data(),
)
def test_a_valid_hand_built_density_integrates_to_one_and_lists_are_accepted(probes, m, data):
    nodes = data.draw(
        st.lists(st.lists(st.floats(-3, 3), min_size=m, max_size=m), min_size=probes, max_size=probes)
    )
    raw = np.asarray(
        data.draw(
            st.lists(st.lists(st.floats(0.01, 1), min_size=m, max_size=m), min_size=probes, max_size=probes)
        )
    )
    weights = (raw / raw.sum(axis=1, keepdims=True)).tolist()
    density = SpectralDensity(nodes, weights, m)  # plain lists, as a user may build one
    grid = np.linspace(-6, 6, 4001)
    assert density.evaluate(grid, 0.2).sum() * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-6)
    assert density.moment(0) == pytest.approx(1.0)


@pytest.mark.parametrize("convert", ["numpy", "jax", "checkpoint"])
def test_a_density_whose_dim_became_a_0d_integer_array_is_read(convert, tmp_path):
    # Before: tree_map(np.asarray, d), jnp.asarray or a checkpoint round trip gave dim=array(2), refused.
    if convert == "checkpoint":
        pn.checkpoint.save(tmp_path / "density", GOOD)
        density = pn.checkpoint.load(tmp_path / "density", GOOD)[0]
    else:
        density = jax.tree_util.tree_map(np.asarray if convert == "numpy" else jnp.asarray, GOOD)
    assert np.ndim(density.dim) == 0 and not isinstance(density.dim, int)
    assert density.moment(1) == GOOD.moment(1) == pytest.approx(0.5)
    np.testing.assert_allclose(density.evaluate([0.0, 1.0]), GOOD.evaluate([0.0, 1.0]))


def test_moment_refuses_a_power_that_is_not_a_non_negative_integer():
    with pytest.raises(pn.ConfigError, match=r"SpectralDensity.moment: power must be an integer >= 0"):
        GOOD.moment(-1)


def test_plot_names_the_density_at_fault(tmp_path):
    bad = GOOD._replace(weights=np.zeros((1, 2)))
    with pytest.raises(pn.DataError, match=r"plot_spectral_density: each probe's densities\['b'\].weights"):
        pn.plot_spectral_density({"a": GOOD, "b": bad}, tmp_path / "x.png")


# --------------------------------------------------------------------------
# 8 and 26. plot_spectral_density: the path written, decades, labels
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name, written", [("fig", "fig.png"), ("fig.", "fig.png"), ("fig.svg", "fig.svg")])
def test_plot_returns_the_path_it_wrote(tmp_path, name, written):
    path = pn.plot_spectral_density(GOOD, tmp_path / name)
    assert path == str(tmp_path / written) and os.path.isfile(path)
    assert os.listdir(tmp_path) == [written]


def test_plot_refuses_an_existing_directory_and_writes_nothing_beside_it(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(pn.ConfigError, match=r"plot_spectral_density: path .*out' is an existing directory"):
        pn.plot_spectral_density(GOOD, folder)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_plot_refuses_decades_that_underflow_the_y_limit(tmp_path):
    with pytest.raises(
        pn.ConfigError, match=r"plot_spectral_density: decades=400 puts the lower y-limit .* <= 30"
    ):
        pn.plot_spectral_density(GOOD, tmp_path / "x.png", decades=400)


def test_overlay_keeps_labels_that_start_with_an_underscore(tmp_path, monkeypatch):
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))
    )
    pn.plot_spectral_density({"_init": GOOD, "_trained": GOOD}, tmp_path / "x.png", overlay=True)
    (axes,) = saved[0].axes
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["_init", "_trained"]


def test_plot_of_a_density_too_wide_for_float64_says_so_without_blaming_sigma(tmp_path):
    wide = GOOD._replace(nodes=np.array([[-1e308, 1e308]]))
    with pytest.raises(pn.DataError, match=r"plot_spectral_density: the nodes of densities span") as caught:
        pn.plot_spectral_density(wide, tmp_path / "x.png")
    assert "sigma" not in str(caught.value) and math.isinf(1e308 * 2)


# --------------------------------------------------------------------------
# The checks read concrete values only: under a user's jit or scan they step aside
# --------------------------------------------------------------------------


def test_cg_solve_and_the_hessian_free_step_run_under_a_users_trace():
    op, g = operator(), gradient()
    traced = jax.jit(lambda damping: pn.cg_solve(op, g, damping=damping, maxiter=5).iterations)(0.1)
    assert int(traced) == int(pn.cg_solve(op, g, damping=0.1, maxiter=5).iterations)
    init, step = hessian_free()
    _, losses = jax.lax.scan(
        lambda state, _: (lambda out: (out[0], out[1].loss))(step(state, jnp.asarray(X), jnp.asarray(FAR))),
        init(LINEAR_PARAMS),
        None,
        length=3,
    )
    assert np.all(np.isfinite(np.asarray(losses))) and float(losses[-1]) < float(losses[0])


def _loss(params):
    return pn.softmax_cross_entropy(CLASSIFIER.apply(params, X), Y)


KRYLOV = [
    ("lanczos", lambda op, key=None: pn.lanczos(op, k=2, key=key).values),
    ("spectral_density", lambda op, key=None: pn.spectral_density(op, num_probes=1, key=key).nodes),
    ("hutchinson_trace", lambda op, key=None: pn.hutchinson_trace(op, num_probes=2, key=key).value),
    ("hutchpp_trace", lambda op, key=None: pn.hutchpp_trace(op, num_matvecs=3, key=key).value),
]


@pytest.mark.parametrize("name, method", KRYLOV, ids=[name for name, _ in KRYLOV])
def test_krylov_methods_under_a_users_jit_say_to_call_them_outside(name, method):
    # Before: a bare jax.errors.TracerBoolConversionError from deep inside the method.
    message = rf"{name}: op is traced .* runs its own compiled loop .* call it outside jax.jit"
    with pytest.raises(pn.ConfigError, match=message):
        jax.jit(lambda p: method(pn.hessian_operator(_loss, p)))(CLASSIFIER_PARAMS)
    with pytest.raises(pn.ConfigError, match=message):
        jax.jit(method)(operator())
    with pytest.raises(pn.ConfigError, match=rf"{name}: key is traced"):
        jax.jit(lambda key: method(operator(), key))(KEY)
