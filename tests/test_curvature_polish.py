"""Output polish of the curvature tools: the density plot's axes, and CG's iteration count.

- ``plot_spectral_density``: the figure that is written is inspected on its
  Axes (captured at ``savefig``): each density has its own panel whose
  x-range holds its own Ritz values and is not stretched by another's; the
  line plotted is the density itself, unclipped (no 1e-12 floor); the log
  axis's lower limit is ``10**-decades`` times the plotted peak.
- ``cg_solve``: ``iterations`` against independent counts: k distinct
  eigenvalues take exactly k iterations (Nocedal and Wright, Theorem 5.4),
  a NumPy CG loop written here counts the same iterations to the same
  tolerance, a cap gives iterations == maxiter, an exact warm start gives 0.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn

matplotlib = pytest.importorskip("matplotlib", reason="needs the examples extra (matplotlib)")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def quadratic(eigenvalues, seed=0, shapes=None):
    """f(p) = v^T A v / 2, v the flattened params, A = U diag(eigenvalues) U^T; returns (A, operator)."""
    n = len(eigenvalues)
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    matrix = rotation @ np.diag(eigenvalues) @ rotation.T
    params = {"w": jnp.zeros(n)} if shapes is None else {k: jnp.zeros(s) for k, s in shapes.items()}

    def f(p):
        v = pn.flatten_params(p)[0]
        return 0.5 * v @ (jnp.asarray(matrix) @ v)

    return matrix, pn.hessian_operator(f, params)


# --------------------------------------------------------------------------
# plot_spectral_density
# --------------------------------------------------------------------------

UNTRAINED = np.random.default_rng(1).uniform(-0.1, 0.1, size=60)
TRAINED = np.concatenate([np.random.default_rng(2).normal(0, 0.05, size=55), [-1.0, 5.0, 12.0, 25.0, 60.0]])


@pytest.fixture(scope="module")
def densities():
    with jax.enable_x64(True):
        return {
            "at initialization": pn.spectral_density(
                quadratic(UNTRAINED)[1], num_probes=4, num_iterations=30
            ),
            "after training": pn.spectral_density(quadratic(TRAINED)[1], num_probes=4, num_iterations=30),
        }


@pytest.fixture
def saved(monkeypatch):
    """The figures ``plot_spectral_density`` writes, captured as they are saved."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def nodes_of(density):
    nodes = np.asarray(density.nodes).reshape(-1)
    return nodes.min(), nodes.max()


def test_each_density_gets_its_own_panel_over_its_own_support(densities, saved, tmp_path):
    path = pn.plot_spectral_density(densities, tmp_path / "density.png")
    assert path == str(tmp_path / "density.png")
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[0] > 100
    (figure,) = saved
    assert len(figure.axes) == 2
    for axes, (label, density) in zip(figure.axes, densities.items()):
        low, high = nodes_of(density)
        left, right = axes.get_xlim()
        assert left < low and high < right, "every Ritz value of the curve lies inside its panel"
        # The panel is its own support widened by max(5%, 4 sigma), not the union of every support.
        margin = max(0.05 * (high - low), 4 * density.default_sigma())
        assert left == pytest.approx(low - margin) and right == pytest.approx(high + margin)
        assert axes.get_title() == label and axes.get_yscale() == "log"
    assert figure.axes[0].get_xlim()[1] - figure.axes[0].get_xlim()[0] < 0.3  # untrained: not squashed


def test_the_plotted_curve_is_the_density_itself_without_a_floor(densities, saved, tmp_path):
    pn.plot_spectral_density(densities, tmp_path / "density.png")
    for axes, density in zip(saved[0].axes, densities.values()):
        (line,) = axes.get_lines()
        x, y = np.asarray(line.get_xdata()), np.ma.asarray(line.get_ydata())
        exact = density.evaluate(x)
        np.testing.assert_array_equal(y.filled(0.0), exact)  # unclipped, unfloored
        assert not np.any(y.compressed() == 1e-12) and np.all(y.compressed() > 0)
        assert np.array_equal(np.ma.getmaskarray(y), exact <= 0)  # only exact zeros are left out
        assert np.all(np.isin(np.asarray(density.nodes).reshape(-1), x))  # every peak is sampled
        peak = float(y.max())
        assert axes.get_ylim() == pytest.approx((peak * 1e-8, 2 * peak))


def test_decades_sets_the_lower_limit_below_each_peak(densities, saved, tmp_path):
    pn.plot_spectral_density(densities, tmp_path / "density.png", decades=3)
    for axes in saved[0].axes:
        peak = float(np.ma.asarray(axes.get_lines()[0].get_ydata()).max())
        assert axes.get_ylim()[0] == pytest.approx(peak * 1e-3)


def test_overlay_draws_every_curve_on_one_axis_spanning_every_support(densities, saved, tmp_path):
    pn.plot_spectral_density(densities, tmp_path / "density.png", overlay=True)
    (axes,) = saved[0].axes
    left, right = axes.get_xlim()
    for density in densities.values():
        low, high = nodes_of(density)
        assert left < low and high < right
    assert [text.get_text() for text in axes.get_legend().get_texts()] == list(densities)
    peaks = [float(np.ma.asarray(line.get_ydata()).max()) for line in axes.get_lines()]
    assert axes.get_ylim() == pytest.approx((min(peaks) * 1e-8, 2 * max(peaks)))


def test_a_single_density_plots_without_a_label(densities, saved, tmp_path):
    pn.plot_spectral_density(densities["after training"], str(tmp_path / "one.png"))
    (axes,) = saved[0].axes
    assert axes.get_title() == "" and axes.get_legend() is None


BAD = [
    (lambda d, p: ({}, p), pn.ConfigError, r"plot_spectral_density: densities is empty"),
    (
        lambda d, p: ([d], p),
        pn.ConfigError,
        r"plot_spectral_density: densities must be a SpectralDensity or a mapping",
    ),
    (
        lambda d, p: ({"a": 3.0}, p),
        pn.ConfigError,
        r"plot_spectral_density: densities\['a'\] must be a SpectralDensity",
    ),
    (
        lambda d, p: ({1: d}, p),
        pn.ConfigError,
        r"plot_spectral_density: densities' labels must be strings, got 1 \(int\)",
    ),
    (
        lambda d, p: ({"a": d._replace(nodes=d.nodes * jnp.nan)}, p),
        pn.DataError,
        r"plot_spectral_density: densities\['a'\] holds NaN",
    ),
    (
        lambda d, p: (d, p / "missing" / "x.png"),
        pn.ConfigError,
        r"plot_spectral_density: path .* cannot be written: the directory",
    ),
    (
        lambda d, p: (d, 3),
        pn.ConfigError,
        r"plot_spectral_density: path must be a string or os.PathLike, got 3 \(int\)",
    ),
    (
        lambda d, p: (d, p / "x.notaformat"),
        pn.ConfigError,
        r"plot_spectral_density: path .*x.notaformat' cannot be written",
    ),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_plot_refuses_bad_densities_and_paths(densities, tmp_path, make, error, message):
    args = make(densities["after training"], tmp_path)
    with pytest.raises(error, match=message):
        pn.plot_spectral_density(*args)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(sigma=0.0), "sigma must be a finite real number > 0"),
        (dict(sigma=math.nan), "sigma must be a finite real number > 0"),
        (dict(num_points=1), "num_points must be an integer >= 2"),
        (dict(decades=0), "decades must be a finite real number > 0"),
        (dict(title=None), "title must be a string"),
    ],
)
def test_plot_refuses_bad_settings(densities, tmp_path, arguments, message):
    with pytest.raises(pn.ConfigError, match="plot_spectral_density: " + message):
        pn.plot_spectral_density(densities, tmp_path / "x.png", **arguments)


# --------------------------------------------------------------------------
# cg_solve's iteration count
# --------------------------------------------------------------------------


def numpy_cg(matrix, b, tol, maxiter):
    """Nocedal and Wright, Algorithm 5.2, from x = 0, stopping when ||r|| <= tol ||b||; returns (x, k)."""
    x, r = np.zeros_like(b), b.copy()
    p, k = r.copy(), 0
    while np.linalg.norm(r) > tol * np.linalg.norm(b) and k < maxiter:
        product = matrix @ p
        alpha = (r @ r) / (p @ product)
        x, r_next = x + alpha * p, r - alpha * product
        p, r, k = r_next + (r_next @ r_next) / (r @ r) * p, r_next, k + 1
    return x, k


@pytest.mark.parametrize("distinct", [1, 3, 5])
def test_k_distinct_eigenvalues_take_exactly_k_iterations(distinct):
    eigenvalues = np.repeat(np.arange(1.0, distinct + 1) ** 2, 40 // distinct)
    matrix, op = quadratic(eigenvalues)
    b = np.random.default_rng(3).normal(size=len(eigenvalues))
    result = pn.cg_solve(op, {"w": jnp.asarray(b)}, tol=1e-10)
    assert int(result.iterations) == distinct and bool(result.converged)
    np.testing.assert_allclose(np.asarray(result.x["w"]), np.linalg.solve(matrix, b), rtol=1e-9)


@pytest.mark.parametrize("tol", [5e-2, 1e-4, 1e-7])
def test_iterations_match_a_numpy_cg_on_a_damped_tree(tol):
    # A condition number of 20 keeps CG's rounding small (on a spectrum over [0.5, 101] two float64
    # runs of one loop part by 1e-6 in x after 20 steps), and each tol sits >= 14% from the residuals
    # on either side of the step that crosses it.
    shapes = {"a": (10,), "b": (5, 6)}
    eigenvalues = np.linspace(-0.5, 9.0, 40)  # indefinite: the damping 1 makes it SPD
    matrix, op = quadratic(eigenvalues, seed=4, shapes=shapes)
    b = np.random.default_rng(5).normal(size=40)
    damped = matrix + 1.0 * np.eye(40)
    expected_x, expected_k = numpy_cg(damped, b, tol, maxiter=400)
    result = pn.cg_solve(op, pn.flatten_params(op.params)[1](jnp.asarray(b)), damping=1.0, tol=tol)
    assert int(result.iterations) == expected_k and 1 < expected_k < 40
    assert bool(result.converged)
    np.testing.assert_allclose(np.asarray(pn.flatten_params(result.x)[0]), expected_x, rtol=1e-10, atol=1e-13)


def test_a_reached_cap_gives_maxiter_iterations_and_not_converged():
    _, op = quadratic(np.logspace(0, 3, 30))
    b = {"w": jnp.asarray(np.random.default_rng(6).normal(size=30))}
    capped = pn.cg_solve(op, b, tol=1e-12, maxiter=3)
    assert int(capped.iterations) == 3 and not bool(capped.converged)
    assert pn.cg_solve(op, b, tol=1e-12).iterations > 3


def test_an_exact_warm_start_takes_no_iterations():
    matrix, op = quadratic(np.logspace(0, 2, 20))
    b = np.random.default_rng(7).normal(size=20)
    result = pn.cg_solve(
        op, {"w": jnp.asarray(b)}, tol=1e-8, x0={"w": jnp.asarray(np.linalg.solve(matrix, b))}
    )
    assert int(result.iterations) == 0 and bool(result.converged)


def test_a_zero_right_hand_side_takes_no_iterations():
    _, op = quadratic(np.logspace(0, 2, 20))
    result = pn.cg_solve(op, {"w": jnp.zeros(20)})
    assert int(result.iterations) == 0 and bool(result.converged) and float(result.residual_norm) == 0.0


def test_the_hessian_free_step_reports_cg_solves_own_count():
    model = pn.serial(pn.Dense(6), pn.Tanh(), pn.Dense(1))
    x = jnp.linspace(-2, 2, 32)[:, None]
    y = jnp.sin(2 * x)
    _, params = model.init(jax.random.PRNGKey(0), (-1, 1))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    init, step = pn.make_hessian_free_step(model, pn.mean_squared_error, cg_tol=1e-6, cg_maxiter=30)
    _, info = step(init(params, damping=1.0), x, y)
    op = pn.model_operator(model, pn.mean_squared_error, params, x, y, kind="ggn")
    grads = jax.grad(lambda p: pn.mean_squared_error(model.apply(p, x), y))(params)
    solved = pn.cg_solve(op, grads, damping=1.0, tol=1e-6, maxiter=30)
    assert 1 <= int(info.cg_iterations) <= 30
    assert int(info.cg_iterations) == int(solved.iterations)
    _, capped = pn.make_hessian_free_step(model, pn.mean_squared_error, cg_tol=1e-12, cg_maxiter=2)
    assert int(capped(init(params), x, y)[1].cg_iterations) == 2
