"""Curvature products and Krylov methods, each against an independent computation.

- H v against central differences (float64, 4-point stencil) of the
  hand-derived reference gradient, which involves no JAX autodiff, and
  against ``jax.hessian``.
- G v against J^T H_L J formed explicitly: J row by row from the reference
  backward pass, H_L in closed form.
- Lanczos against ``numpy.linalg.eigh`` of the full Hessian; SLQ against the
  Gauss quadrature identity sum_i w_i theta_i^p = q^T A^p q; trace estimators
  against exact traces; CG against ``numpy.linalg.solve``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn
from purenet import curvature as cv
from purenet.shapes import as_float64


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def problem(model, loss, *, n=12, d=4, targets="classes", seed=0):
    """Float64 params, inputs and targets for ``model``, and the cost ``f(params)``."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    out_shape, params = model.init(keys[0], (-1, d))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(keys[1], (n, d), jnp.float64)
    if targets == "classes":
        y = jax.random.randint(keys[2], (n,), 0, out_shape[-1])
    elif targets == "binary":
        y = jax.random.bernoulli(keys[2], 0.5, (n, out_shape[-1])).astype(jnp.float64)
    else:
        y = jax.random.normal(keys[2], (n, targets), jnp.float64)
    return params, x, y, lambda p: loss(model.apply(p, x), y)


def random_like(params, seed):
    flat, unflatten = cv.flatten_params(params)
    return unflatten(jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype))


def flat(tree):
    return np.asarray(cv.flatten_params(tree)[0])


def flat_rows(stacked):
    """A (count, P) matrix from a pytree whose leaves stack ``count`` vectors on their leading axis."""
    return np.asarray(jax.vmap(lambda tree: cv.flatten_params(tree)[0])(stacked))


MODELS = {
    "tanh MLP, softmax CE": (
        pn.serial(pn.Dense(6), pn.Tanh(), pn.Dense(3)),
        pn.softmax_cross_entropy,
        "classes",
    ),
    "residual softplus, MSE": (
        pn.serial(pn.Dense(5), pn.residual(pn.serial(pn.Softplus(), pn.Dense(5))), pn.Dense(2)),
        pn.mean_squared_error,
        2,
    ),
    "sigmoid, BCE": (pn.serial(pn.Dense(5), pn.Sigmoid(), pn.Dense(2)), pn.binary_cross_entropy, "binary"),
    "Gaussian output, NLL": (pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(2)), pn.gaussian_nll, 1),
}


@pytest.mark.parametrize("method", cv.METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_hvp_matches_finite_differences_of_the_reference_gradient(name, method):
    model, loss, targets = MODELS[name]
    params, x, y, f = problem(model, loss, targets=targets)
    v = random_like(params, 1)

    def reference_grad(step):
        point = jax.tree_util.tree_map(lambda p, d: p + step * d, params, v)
        return flat(pn.reference_gradient(model, point, x, y, loss).g_params)

    eps = 1e-3  # the 4-point stencil's error is O(eps^4)
    fd = (
        8 * (reference_grad(eps) - reference_grad(-eps))
        - (reference_grad(2 * eps) - reference_grad(-2 * eps))
    ) / (12 * eps)
    product = flat(cv.hvp(f, params, v, method=method))
    np.testing.assert_allclose(product, fd, rtol=0, atol=1e-8 * np.max(np.abs(fd)))


@pytest.mark.parametrize("method", cv.METHODS)
def test_hvp_matches_jax_hessian_and_batched_matches_single(method):
    model, loss, targets = MODELS["residual softplus, MSE"]
    params, _, _, f = problem(model, loss, targets=targets)
    hessian = np.asarray(cv.hessian(f, params))
    vs = [random_like(params, seed) for seed in range(4)]
    for v in vs:
        np.testing.assert_allclose(flat(cv.hvp(f, params, v, method=method)), hessian @ flat(v), atol=1e-12)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *vs)
    batched = cv.batched_hvp(f, params, stacked, method=method)
    np.testing.assert_allclose(flat_rows(batched), np.stack([hessian @ flat(v) for v in vs]), atol=1e-12)


def test_hessian_is_symmetric_and_flatten_round_trips():
    params, _, _, f = problem(*MODELS["tanh MLP, softmax CE"][:2])
    hessian = np.asarray(cv.hessian(f, params))
    assert hessian.shape == (pn.count_params(params),) * 2
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-14)
    vector, unflatten = cv.flatten_params(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unflatten(vector), params)


def reference_jacobian(model, params, x, width):
    """J = d vec(outputs) / d theta, one row per output entry, from the reference bprop (no JAX autodiff)."""
    p64 = as_float64(params)
    rows = []
    for i in range(x.shape[0] * width):
        g_out = np.zeros((x.shape[0], width))
        g_out.flat[i] = 1.0
        rows.append(flat(model.reference.bprop(p64, np.asarray(x), g_out)[0]))
    return np.stack(rows)


def softmax_ce_output_hessian(logits):
    """Closed form: the mean over N rows of softmax CE has row Hessians (diag(q) - q q^T) / N."""
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    blocks = [(np.diag(row) - np.outer(row, row)) / len(q) for row in q]
    return jax.scipy.linalg.block_diag(*blocks)


@pytest.mark.parametrize("loss_name", ["softmax CE", "MSE"])
def test_ggn_vp_matches_explicit_jt_h_j(loss_name):
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    loss = pn.softmax_cross_entropy if loss_name == "softmax CE" else pn.mean_squared_error
    params, x, y, _ = problem(model, loss, n=6, targets="classes" if loss_name == "softmax CE" else 3)
    jacobian = reference_jacobian(model, params, x, 3)
    outputs = np.asarray(model.apply(params, x))
    if loss_name == "softmax CE":
        output_hessian = np.asarray(softmax_ce_output_hessian(outputs))
    else:  # mean over N K entries of (z - y)^2
        output_hessian = 2.0 / outputs.size * np.eye(outputs.size)
    ggn = jacobian.T @ output_hessian @ jacobian
    for seed in range(3):
        v = random_like(params, seed)
        product = cv.ggn_vp(lambda p: model.apply(p, x), lambda z: loss(z, y), params, v)
        np.testing.assert_allclose(flat(product), ggn @ flat(v), atol=1e-13)


def test_ggn_is_positive_semidefinite_and_equals_the_hessian_of_a_linear_model():
    model = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(3))
    params, x, y, _ = problem(model, pn.softmax_cross_entropy)
    op = cv.ggn_operator(lambda p: model.apply(p, x), lambda z: pn.softmax_cross_entropy(z, y), params)
    eigenvalues = np.linalg.eigvalsh(np.asarray(op.to_dense()))
    assert eigenvalues.min() >= -1e-12 * eigenvalues.max()

    linear = pn.Dense(2)
    params, x, y, f = problem(linear, pn.mean_squared_error, targets=2)
    op = cv.ggn_operator(lambda p: linear.apply(p, x), lambda z: pn.mean_squared_error(z, y), params)
    np.testing.assert_allclose(np.asarray(op.to_dense()), np.asarray(cv.hessian(f, params)), atol=1e-14)
    # Closed form: for z = x w + b and the mean over N*2 entries, d2/dw_ik dw_jk = 2 x_i . x_j / (2 N).
    xa = np.concatenate([np.asarray(x), np.ones((len(x), 1))], axis=1)
    gram = 2.0 * xa.T @ xa / (2 * len(x))
    hessian = np.asarray(cv.hessian(f, params))  # flatten order: b (2,), then w (4, 2)
    w_block = hessian[2:, 2:].reshape(4, 2, 4, 2)
    np.testing.assert_allclose(w_block[:, 0, :, 0], gram[:4, :4], atol=1e-14)
    np.testing.assert_allclose(w_block[:, 0, :, 1], 0.0, atol=1e-14)


def sharp_problem():
    model = pn.serial(pn.Dense(10), pn.Tanh(), pn.Dense(10), pn.Softplus(), pn.Dense(3))
    return problem(model, pn.softmax_cross_entropy, n=40, d=5)


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_lanczos_matches_eigh_of_the_full_hessian(which):
    params, _, _, f = sharp_problem()
    hessian = np.asarray(cv.hessian(f, params))
    exact, exact_vectors = np.linalg.eigh(hessian)
    if which == "top":
        exact, exact_vectors = exact[::-1], exact_vectors[:, ::-1]
    result = cv.lanczos(cv.hessian_operator(f, params), 5, which=which, tol=1e-8)
    assert result.converged and result.iterations < hessian.shape[0]
    np.testing.assert_allclose(result.values, exact[:5], rtol=1e-6)
    vectors = flat_rows(result.vectors)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(5), atol=1e-10)
    for vector, value, bound in zip(vectors, result.values, result.residuals):
        assert np.linalg.norm(hessian @ vector - value * vector) <= 1.01 * bound + 1e-13
    np.testing.assert_allclose(np.abs(np.sum(vectors * exact_vectors[:, :5].T, axis=1)), 1.0, atol=1e-6)


def test_lanczos_survives_breakdown_on_a_low_rank_ggn():
    # Batch 2 x 3 outputs with softmax: rank(G) <= 2 * 2 = 4 << P, so the Krylov space is exhausted.
    model = pn.serial(pn.Dense(6), pn.Tanh(), pn.Dense(3))
    params, x, y, _ = problem(model, pn.softmax_cross_entropy, n=2)
    op = cv.ggn_operator(lambda p: model.apply(p, x), lambda z: pn.softmax_cross_entropy(z, y), params)
    exact = np.linalg.eigvalsh(np.asarray(op.to_dense()))[::-1]
    result = cv.lanczos(op, 6, max_iterations=20, tol=1e-10)
    assert np.all(np.isfinite(result.values)) and result.converged
    np.testing.assert_allclose(result.values, exact[:6], rtol=1e-8, atol=1e-12 * exact[0])


def test_lanczos_in_float32_agrees_with_float64_to_float32_accuracy():
    params, _, _, f = sharp_problem()
    exact = np.linalg.eigvalsh(np.asarray(cv.hessian(f, params)))[::-1]
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    f32 = jax.jit(lambda p: f(jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p)))
    result = cv.lanczos(cv.hessian_operator(f32, params32), 3, tol=1e-4)
    assert result.values.dtype == jnp.float32 and result.converged
    np.testing.assert_allclose(result.values, exact[:3], rtol=1e-4)


def test_krylov_methods_compile_once_per_loss_function():
    traces = []
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(2))
    _, x, y, _ = problem(model, pn.softmax_cross_entropy)

    def f(p):
        traces.append(1)  # runs only while JAX traces f
        return pn.softmax_cross_entropy(model.apply(p, x), y)

    for seed in range(3):
        params, *_ = problem(model, pn.softmax_cross_entropy, seed=seed)
        cv.lanczos(cv.hessian_operator(f, params), 2, max_iterations=10)
    assert len(traces) == 1


def test_slq_is_the_gauss_quadrature_of_each_probe():
    params, _, _, f = sharp_problem()
    hessian = np.asarray(cv.hessian(f, params))
    op = cv.hessian_operator(f, params)
    steps = 12
    starts = jax.random.normal(jax.random.PRNGKey(3), (3, op.dim))
    nodes, weights, finite = cv.density._quadrature(op, starts, jax.random.PRNGKey(4), steps=steps)
    assert bool(jnp.all(finite))
    for start, node, weight in zip(np.asarray(starts), np.asarray(nodes), np.asarray(weights)):
        q = start / np.linalg.norm(start)
        power = q.copy()
        for p in range(2 * steps):  # m-point Gauss quadrature is exact for degree < 2m
            np.testing.assert_allclose(np.sum(weight * node**p), q @ power, rtol=1e-8, atol=1e-12)
            power = hessian @ power


def test_spectral_density_is_a_probability_density_within_the_spectrum():
    params, _, _, f = sharp_problem()
    exact = np.linalg.eigvalsh(np.asarray(cv.hessian(f, params)))
    density = cv.spectral_density(cv.hessian_operator(f, params), num_probes=64, num_iterations=30)
    np.testing.assert_allclose(np.sum(np.asarray(density.weights), axis=1), 1.0, atol=1e-12)
    assert (
        exact[0] - 1e-9 <= float(jnp.min(density.nodes)) and float(jnp.max(density.nodes)) <= exact[-1] + 1e-9
    )
    # The extreme Ritz values converge first: the top node of every probe is the top eigenvalue.
    np.testing.assert_allclose(np.asarray(density.nodes).max(axis=1), exact[-1], rtol=1e-8)
    sigma = density.default_sigma()
    grid = np.linspace(exact[0] - 10 * sigma, exact[-1] + 10 * sigma, 20000)
    assert abs(np.trapezoid(density.evaluate(grid), grid) - 1.0) < 1e-6
    # Unbiased moments: each probe's quadrature is q^T H^p q for a uniform unit q, whose mean is tr(H^p) / P.
    for power in (1, 2):
        per_probe = np.sum(np.asarray(density.weights) * np.asarray(density.nodes) ** power, axis=1)
        exact_moment = np.sum(exact**power) / exact.size
        error = abs(density.moment(power) - exact_moment)
        assert error <= 4 * np.std(per_probe, ddof=1) / np.sqrt(per_probe.size)


def test_plot_spectral_density_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the examples extra (matplotlib)")
    params, _, _, f = sharp_problem()
    density = cv.spectral_density(cv.hessian_operator(f, params), num_probes=2, num_iterations=10)
    path = cv.plot_spectral_density({"init": density}, str(tmp_path / "density.png"))
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith(
        "density.png"
    )


def quadratic(eigenvalues, seed=0):
    """f(p) = p^T A p / 2 with A = U diag(eigenvalues) U^T: Hessian A in closed form."""
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    matrix = rotation @ np.diag(eigenvalues) @ rotation.T
    return (
        matrix,
        (lambda p: 0.5 * p["w"] @ (jnp.asarray(matrix) @ p["w"])),
        {"w": jnp.zeros(len(eigenvalues))},
    )


def test_hutchinson_is_exact_on_a_diagonal_and_unbiased_on_a_network_hessian():
    diagonal = jnp.arange(1.0, 8.0)
    op = cv.hessian_operator(lambda p: 0.5 * jnp.sum(diagonal * p["w"] ** 2), {"w": jnp.ones(7)})
    estimate = cv.hutchinson_trace(op, num_probes=5)  # z_i^2 = 1 for Rademacher z: z^T D z = tr D
    assert estimate.value == pytest.approx(28.0, abs=1e-12) and estimate.standard_error < 1e-12

    params, _, _, f = sharp_problem()
    exact = np.trace(np.asarray(cv.hessian(f, params)))
    estimate = cv.hutchinson_trace(cv.hessian_operator(f, params), num_probes=2000)
    assert abs(estimate.value - exact) <= 4 * estimate.standard_error


def test_hutchpp_is_exact_with_a_full_sketch_and_beats_hutchinson_on_a_decaying_spectrum():
    matrix, f, params = quadratic(1.0 / np.arange(1, 61) ** 2)
    op = cv.hessian_operator(f, params)
    assert cv.hutchpp_trace(op, num_matvecs=182).value == pytest.approx(np.trace(matrix), rel=1e-10)
    errors = {"hutchinson": [], "hutch++": []}
    for seed in range(30):
        key = jax.random.PRNGKey(seed)
        errors["hutchinson"].append(
            abs(cv.hutchinson_trace(op, num_probes=24, key=key).value - np.trace(matrix))
        )
        errors["hutch++"].append(abs(cv.hutchpp_trace(op, num_matvecs=24, key=key).value - np.trace(matrix)))
    assert np.mean(errors["hutch++"]) < 0.25 * np.mean(errors["hutchinson"])


def test_cg_reaches_its_tolerance_and_solves_the_damped_system():
    params, _, _, f = sharp_problem()
    op = cv.hessian_operator(f, params)
    hessian = np.asarray(cv.hessian(f, params))
    damping = 1.0 - np.linalg.eigvalsh(hessian)[0]  # makes H + damping I positive definite
    g = jax.grad(f)(params)
    result = cv.cg_solve(op, g, damping=damping, tol=1e-10)
    assert bool(result.converged) and float(result.relative_residual) <= 1e-10 * 1.01
    expected = np.linalg.solve(hessian + damping * np.eye(len(hessian)), flat(g))
    # ||x - x*|| <= ||r|| / lambda_min(H + damping I), and lambda_min is 1 by the choice of damping.
    assert np.linalg.norm(flat(result.x) - expected) <= 1.01 * float(result.residual_norm)
    capped = cv.cg_solve(op, g, damping=damping, tol=1e-10, maxiter=2)
    assert not bool(capped.converged) and float(capped.relative_residual) > 1e-10


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_hessian_free_steps_train_a_network(curvature):
    model = pn.serial(pn.Dense(8), pn.Tanh(), pn.Dense(1))
    x = jnp.linspace(-2, 2, 64)[:, None]
    y = jnp.sin(2 * x)
    _, params = model.init(jax.random.PRNGKey(0), (-1, 1))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    init, step = cv.make_hessian_free_step(model, pn.mean_squared_error, curvature=curvature)
    state, first = init(params), None
    for _ in range(30):
        state, info = step(state, x, y)
        first = first if first is not None else float(info.loss)
        assert float(info.new_loss) < float(info.loss) or not bool(info.accepted)
    final = float(pn.mean_squared_error(model.apply(state.params, x), y))
    assert final < 0.02 * first
    assert np.all(np.isfinite(flat(state.params)))


@pytest.mark.parametrize("batch_size", [5, 7, 40])
def test_dataset_operators_equal_the_full_batch_curvature(batch_size):
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(3))
    params, x, y, f = problem(model, pn.softmax_cross_entropy, n=35)
    hessian_op = cv.model_operator(model, pn.softmax_cross_entropy, params, x, y, batch_size=batch_size)
    np.testing.assert_allclose(
        np.asarray(hessian_op.to_dense()), np.asarray(cv.hessian(f, params)), atol=1e-14
    )
    ggn_op = cv.model_operator(
        model, pn.softmax_cross_entropy, params, x, y, kind="ggn", batch_size=batch_size
    )
    full_ggn = cv.ggn_operator(lambda p: model.apply(p, x), lambda z: pn.softmax_cross_entropy(z, y), params)
    np.testing.assert_allclose(np.asarray(ggn_op.to_dense()), np.asarray(full_ggn.to_dense()), atol=1e-14)
    v = random_like(params, 0)
    np.testing.assert_allclose(
        flat(hessian_op.matvec(v)), np.asarray(cv.hessian(f, params)) @ flat(v), atol=1e-14
    )


def test_model_operator_adds_the_regularizer_hessian():
    model = pn.serial(pn.Dense(4), pn.Tanh(), pn.Dense(2))
    params, x, y, f = problem(model, pn.softmax_cross_entropy)
    penalty = pn.L2Penalty(0.3)
    op = cv.model_operator(model, pn.softmax_cross_entropy, params, x, y, regularizer=penalty)
    difference = np.asarray(op.to_dense()) - np.asarray(cv.hessian(f, params))
    is_weight = flat(
        jax.tree_util.tree_map_with_path(lambda path, a: jnp.full(a.shape, "'w'" in str(path)), params)
    )
    np.testing.assert_allclose(difference, 0.3 * np.diag(is_weight.astype(float)), atol=1e-14)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.fixture
def small():
    model = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
    params, _, _, f = problem(model, pn.softmax_cross_entropy)
    return params, f


def test_a_direction_of_the_wrong_tree_is_refused(small):
    params, f = small
    with pytest.raises(
        pn.ParamsError, match=r"hvp at v: expected a tuple of 3 entries, got a dict with keys \['b', 'w'\]"
    ):
        cv.hvp(f, params, params[0])
    wrong = jax.tree_util.tree_map(lambda a: a, params)
    wrong[2]["w"] = jnp.zeros((2, 3))
    with pytest.raises(pn.ParamsError, match=r"hvp at v\[2\]\['w'\]: expected shape \(3, 2\), got \(2, 3\)"):
        cv.hvp(f, params, wrong)
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), params)
    stacked[0]["b"] = stacked[0]["b"][:1]
    with pytest.raises(
        pn.ParamsError,
        match=r"batched_hvp at vs\[0\]\['b'\]: expected shape \(2, 3\), got \(1, 3\)",
    ):
        cv.batched_hvp(f, params, stacked)


def test_k_beyond_the_dimension_and_bad_sizes_are_refused(small):
    params, f = small
    op = cv.hessian_operator(f, params)
    with pytest.raises(
        pn.ConfigError, match=r"lanczos: k must be at most the number of parameters \(23\), got k=24"
    ):
        cv.lanczos(op, 24)
    with pytest.raises(
        pn.ConfigError, match="max_iterations must lie between k=3 and the number of parameters 23"
    ):
        cv.lanczos(op, 3, max_iterations=2)
    with pytest.raises(pn.ConfigError, match="which must be 'top' or 'bottom', got 'largest'"):
        cv.lanczos(op, 1, which="largest")
    with pytest.raises(pn.ConfigError, match="method must be one of"):
        cv.hvp(f, params, params, method="forward")
    with pytest.raises(pn.ConfigError, match="num_matvecs must be at least 3"):
        cv.hutchpp_trace(op, num_matvecs=2)
    with pytest.raises(pn.ConfigError, match="damping must be a finite real number >= 0"):
        cv.cg_solve(op, params, damping=-1.0)
    with pytest.raises(pn.ConfigError, match=r"hessian: the params hold 23 numbers.*max_dim is 10"):
        cv.hessian(f, params, max_dim=10)
    with pytest.raises(pn.ConfigError, match="batch_size is only meaningful together with data"):
        cv.hessian_operator(f, params, batch_size=4)
    with pytest.raises(
        pn.ParamsError,
        match=r"hessian_operator: every leaf of data needs the same leading axis, got lengths \[4, 5\]",
    ):
        cv.hessian_operator(lambda p, b: f(p), params, (jnp.zeros((5, 2)), jnp.zeros(4)))


def test_non_finite_inputs_and_products_are_reported(small):
    params, f = small
    bad = jax.tree_util.tree_map(lambda a: a, params)
    bad[0]["w"] = bad[0]["w"].at[0, 0].set(jnp.nan)
    with pytest.raises(cv.NonFiniteCurvatureError, match=r"hvp at v\[0\]\['w'\]: v must be finite"):
        cv.hvp(f, params, bad)
    with pytest.raises(
        cv.NonFiniteCurvatureError, match=r"hessian_operator at params\[0\]\['w'\]: params must be finite"
    ):
        cv.hessian_operator(f, bad)

    def blows_up(p):  # sqrt'' at a negative argument is NaN
        return f(p) + jnp.sum(jnp.sqrt(p[0]["b"] - 10.0))

    with pytest.raises(
        cv.NonFiniteCurvatureError, match="lanczos: the hessian-vector product was not finite at step 1"
    ):
        cv.lanczos(cv.hessian_operator(blows_up, params), 2)
    with pytest.raises(
        cv.NonFiniteCurvatureError, match="spectral_density: a hessian-vector product was not finite"
    ):
        cv.spectral_density(cv.hessian_operator(blows_up, params), num_probes=2, num_iterations=4)
    with pytest.raises(
        cv.NonFiniteCurvatureError, match="hutchinson_trace: a hessian-vector product was not finite"
    ):
        cv.hutchinson_trace(cv.hessian_operator(blows_up, params), num_probes=3)
