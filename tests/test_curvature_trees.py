"""Curvature vectors go through the one tree check, and a second operator or product compiles nothing.

Every entry point that takes a params-shaped tree (hvp, batched_hvp,
ggn_vp, matvec, matmat, cg_solve's b and x0, lanczos's v0) refuses a
wrong tree with a ParamsError naming the leaf's path, what was expected
there and what came.  Compilations are counted with JAX's own monitoring
event for a backend compile.
"""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purenet as pn
from purenet import compiled
from purenet import curvature as cv

# Params: ({"b": (3,), "w": (4, 3)}, (), {"b": (2,), "w": (3, 2)}).
MODEL = pn.serial(pn.Dense(3), pn.Tanh(), pn.Dense(2))
X = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
Y = jnp.arange(6) % 2


def loss(p):
    return pn.softmax_cross_entropy(MODEL.apply(p, X), Y)


@pytest.fixture(scope="module")
def params():
    return MODEL.init(jax.random.PRNGKey(0), (-1, 4))[1]


def copy(tree):
    """A copy of the containers of a params tuple of dicts as a list, so that entries can be replaced."""
    return [dict(entry) if isinstance(entry, dict) else entry for entry in tree]


def stack(tree, count=2):
    return jax.tree_util.tree_map(lambda a: jnp.stack([a] * count), tree)


# Each entry point: (where, what, whether it takes stacked vectors, call(params, vector)).
ENTRIES = {
    "hvp": ("hvp", "v", False, lambda p, v: cv.hvp(loss, p, v)),
    "batched_hvp": ("batched_hvp", "vs", True, lambda p, vs: cv.batched_hvp(loss, p, vs)),
    "ggn_vp": ("ggn_vp", "v", False, lambda p, v: cv.ggn_vp(lambda q: MODEL.apply(q, X), jnp.sum, p, v)),
    "matvec": ("hessian operator", "v", False, lambda p, v: cv.hessian_operator(loss, p).matvec(v)),
    "matmat": (
        "ggn operator",
        "vs",
        True,
        lambda p, vs: cv.model_operator(MODEL, pn.softmax_cross_entropy, p, X, Y, kind="ggn").matmat(vs),
    ),
    "cg_solve b": ("cg_solve", "b", False, lambda p, b: cv.cg_solve(cv.hessian_operator(loss, p), b)),
    "cg_solve x0": (
        "cg_solve",
        "x0",
        False,
        lambda p, x0: cv.cg_solve(cv.hessian_operator(loss, p), p, x0=x0),
    ),
    "lanczos v0": ("lanczos", "v0", False, lambda p, v0: cv.lanczos(cv.hessian_operator(loss, p), v0=v0)),
}


def list_for_dict(v):
    v = copy(v)
    v[2] = [v[2]["b"], v[2]["w"]]
    return tuple(v), "[2]", r"expected a dict with keys \['b', 'w'\], got a list of 2 entries"


def wrong_key(v):
    v = copy(v)
    v[2] = {"b": v[2]["b"], "weights": v[2]["w"]}
    return tuple(v), "[2]", r"expected keys \['b', 'w'\], got \['b', 'weights'\]"


def wrong_leaf_shape(v):
    v = copy(v)
    lead = v[0]["w"].shape[:-2]  # () for one vector, (2,) for a stack
    v[0]["w"] = jnp.zeros((*lead, 3, 4))
    want, got = (*lead, 4, 3), (*lead, 3, 4)
    return tuple(v), "[0]['w']", re.escape(f"expected shape {want}, got {got}")


def integer_dtype(v):
    v = copy(v)
    v[2]["b"] = v[2]["b"].astype(jnp.int32)
    return tuple(v), "[2]['b']", "expected a floating dtype like float32, got int32"


CASES = {f.__name__: f for f in (list_for_dict, wrong_key, wrong_leaf_shape, integer_dtype)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_every_curvature_vector_is_checked_against_the_params(params, entry, case):
    where, what, stacked, call = ENTRIES[entry]
    vector = stack(params) if stacked else params
    bad, path, message = CASES[case](vector)
    with pytest.raises(pn.ParamsError, match=rf"^{where} at {what}{re.escape(path)}: {message}$"):
        call(params, bad)


def test_a_list_where_the_params_are_a_dict_is_refused_at_the_root():
    params = pn.Dense(2).init(jax.random.PRNGKey(0), (-1, 3))[1]

    def f(p):
        return jnp.sum(pn.Dense(2).apply(p, jnp.ones((1, 3))) ** 2)

    as_list = [params["b"], params["w"]]
    expected = r"expected a dict with keys \['b', 'w'\], got a list of 2 entries$"
    with pytest.raises(pn.ParamsError, match=r"^hvp at v: " + expected):
        cv.hvp(f, params, as_list)
    with pytest.raises(pn.ParamsError, match=r"^hessian operator at vs: " + expected):
        cv.hessian_operator(f, params).matmat(stack(as_list))


def test_matmat_without_the_leading_axis_is_refused_at_a_leaf(params):
    op = cv.hessian_operator(loss, params)
    # The whole stacking axis missing: one vector where a stack is due.
    with pytest.raises(
        pn.ParamsError,
        match=r"^hessian operator at vs\[0\]\['b'\]: expected shape \(n, 3\), n vectors stacked on a "
        r"leading axis, got \(3,\): a single vector shaped like the params$",
    ):
        op.matmat(params)
    # One leaf missing it: named against the other leaves' count.
    partly = copy(stack(params))
    partly[2]["w"] = params[2]["w"]
    partly = tuple(partly)
    with pytest.raises(pn.ParamsError, match=r"^hessian operator at vs\[2\]\['w'\]: expected shape \(2, 3, 2\), got \(3, 2\)$"):  # fmt: skip
        op.matmat(partly)
    # A scalar leaf cannot carry the axis.
    scalar = pn.PReLU(shared=True).init(jax.random.PRNGKey(0), (-1, 3))[1]
    with pytest.raises(
        pn.ParamsError,
        match=r"^batched_hvp at vs\['alpha'\]: expected a leading axis on every leaf, got a scalar$",
    ):
        cv.batched_hvp(lambda p: jnp.sum(p["alpha"] ** 2), scalar, scalar)


def test_python_scalar_leaves_are_compared_as_arrays():
    # check_like is given shapes and dtypes, never a bare Python float as a template leaf.
    product = cv.hvp(lambda p: p["a"] ** 3, {"a": 2.0}, {"a": 1.0})
    assert float(product["a"]) == pytest.approx(12.0)
    with pytest.raises(pn.ParamsError, match=r"^hvp at v\['a'\]: expected shape \(\), got \(2,\)$"):
        cv.hvp(lambda p: p["a"] ** 3, {"a": 2.0}, {"a": jnp.ones(2)})


# --------------------------------------------------------------------------
# Compilations
# --------------------------------------------------------------------------

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counted_compiles():
    """Yield a list that collects one entry per backend compilation inside the block."""
    compiles, listening = [], [True]

    def listener(event, duration, **kwargs):
        if listening[0] and event == BACKEND_COMPILE:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        listening[0] = False  # the guard, where the installed JAX cannot unregister
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            unregister(listener)


def two_points():
    """Params at two points of the same shapes, and a direction for each, all made before counting."""
    first = MODEL.init(jax.random.PRNGKey(0), (-1, 4))[1]
    second = MODEL.init(jax.random.PRNGKey(7), (-1, 4))[1]
    flat, unflatten = cv.flatten_params(first)
    directions = [unflatten(jax.random.normal(jax.random.PRNGKey(s), flat.shape)) for s in (2, 3)]
    return (first, directions[0]), (second, directions[1])


def test_counting_sees_a_compilation():
    ones = jnp.ones(5)
    with counted_compiles() as compiles:
        jax.jit(lambda a: a * 3.0 + 1.0)(ones).block_until_ready()
    assert len(compiles) == 1


def test_a_second_model_operator_and_matvec_compile_nothing():
    (params, v), (params2, v2) = two_points()
    penalty = pn.L2Penalty(0.1)

    def matvec(p, w):
        op = cv.model_operator(MODEL, pn.softmax_cross_entropy, p, X, Y, batch_size=4, regularizer=penalty)
        return jax.block_until_ready(op.matvec(w))

    matvec(params, v)
    with counted_compiles() as compiles:
        product = matvec(params2, v2)
    assert compiles == []
    # The reused compiled code is the curvature at params2, not the one at params.
    expected = cv.hvp(lambda p: loss(p) + penalty(p), params2, v2)
    np.testing.assert_allclose(
        cv.flatten_params(product)[0], cv.flatten_params(expected)[0], rtol=1e-4, atol=1e-6
    )


def test_a_second_hvp_with_the_same_function_compiles_nothing():
    (params, v), (params2, v2) = two_points()
    jax.block_until_ready(cv.hvp(loss, params, v))
    with counted_compiles() as compiles:
        product = jax.block_until_ready(cv.hvp(loss, params2, v2))
    assert compiles == []
    dense = cv.hessian(loss, params2)
    np.testing.assert_allclose(
        cv.flatten_params(product)[0], dense @ cv.flatten_params(v2)[0], rtol=1e-4, atol=1e-5
    )


def test_compiled_curvature_functions_live_in_the_one_bounded_cache(params):
    compiled.clear()
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    cv.hvp(loss, params, v)
    assert compiled.size() == 1  # the jitted product for (loss, method)
    # Operators of ever new loss functions (built, not compiled): the cache stays bounded,
    # and the oldest loss's functions are evicted rather than kept alive.
    losses = [
        lambda out, y, i=i: i * pn.softmax_cross_entropy(out, y) for i in range(compiled.MAX_ENTRIES + 3)
    ]
    first = cv.model_operator(MODEL, losses[0], params, X, Y).functions
    assert cv.model_operator(MODEL, losses[0], params, X, Y).functions == first
    for each in losses[1:]:
        cv.model_operator(MODEL, each, params, X, Y)
    assert compiled.size() == compiled.MAX_ENTRIES
    assert cv.model_operator(MODEL, losses[0], params, X, Y).functions != first
