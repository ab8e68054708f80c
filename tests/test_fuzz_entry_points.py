"""Issue 15's fuzz: hypothesis draws a public entry point and one bad input for it.

Every draw must end in a purenet error whose message names the entry point
(or the layer it reached): never a bare JAX/NumPy/Python error, never a NaN
or another silent answer, never a hang (each call runs under a time limit).
Each entry point states its bad inputs as strategies, not as a fixed list:
labels drawn outside the class range, NaN at a drawn position, shapes drawn
unlike the right one, wrong dtypes, wrong types, empty batches.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import purenet as pn

KEY = jax.random.PRNGKey(0)
CLASSES, WIDTH, BATCH = 3, 4, 6
MODEL = pn.serial(pn.Dense(5), pn.Tanh(), pn.Dense(CLASSES))
_, PARAMS = MODEL.init(KEY, (-1, WIDTH))
X = np.random.default_rng(0).standard_normal((BATCH, WIDTH)).astype(np.float32)
LABELS = np.arange(BATCH) % CLASSES
TIME_LIMIT_S = 60


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail a call that runs past ``seconds`` (a hang) instead of waiting forever."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------
# Strategies of bad values
# --------------------------------------------------------------------------


def bad_labels(classes: int = CLASSES, count: int = BATCH):
    """Integer labels with at least one outside [0, classes), at a drawn position and dtype."""

    @st.composite
    def draw_labels(draw):
        labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=count, max_size=count)))
        bad = draw(st.one_of(st.integers(-(2**31), -1), st.integers(classes, 2**31 - 1)))
        labels = labels.astype(np.int64)
        labels[draw(st.integers(0, count - 1))] = bad
        return labels.astype(np.int64)

    return draw_labels()


def with_nan(array: np.ndarray):
    """``array`` with NaN or an infinity at a drawn position."""

    @st.composite
    def draw_nan(draw):
        out = np.array(array, dtype=np.float32, copy=True)
        out.reshape(-1)[draw(st.integers(0, out.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return out

    return draw_nan()


def other_shape(shape: tuple):
    """A float32 array of a drawn shape unlike ``shape`` (another rank or another size)."""
    shapes = st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple).filter(lambda s: s != shape)
    return shapes.map(lambda s: np.ones(s, np.float32))


def not_an_array():
    return st.sampled_from(["abc", None, {"x": 1.0}, object()])


def wrong_dtype(shape: tuple):
    return st.sampled_from([np.int32, np.bool_, np.complex64, np.uint8]).map(lambda d: np.ones(shape, d))


def bad_array(shape: tuple, *, nan: bool = True):
    """Any bad stand-in for a float32 array of ``shape``."""
    choices = [other_shape(shape), not_an_array(), wrong_dtype(shape)]
    if nan:
        choices.append(with_nan(np.ones(shape, np.float32)))
    return st.one_of(*choices)


BAD_KEYS = st.sampled_from(["key", None, 0, np.zeros(3, np.uint32), np.zeros(2, np.float32)])
BAD_SHAPES = st.tuples(st.sampled_from([-1, None]), st.sampled_from([True, -2, -7, 2.5, "4"]))


# --------------------------------------------------------------------------
# Entry points: each draws one bad input and returns the call
# --------------------------------------------------------------------------


def _init(draw):
    if draw(st.booleans()):
        return lambda: pn.Dense(3).init(draw(BAD_KEYS), (-1, WIDTH))
    return lambda: MODEL.init(KEY, draw(BAD_SHAPES))


def _apply(draw):
    if draw(st.booleans()):
        # Any leading axes are a batch (one unbatched example of shape (WIDTH,) included): only the
        # feature axis makes an input's shape wrong.
        wrong_width = other_shape((BATCH, WIDTH)).filter(lambda a: a.shape[-1] != WIDTH)
        x = draw(st.one_of(wrong_width, not_an_array(), wrong_dtype((BATCH, WIDTH))))
        return lambda: MODEL.apply(PARAMS, x)
    index, leaf = draw(st.integers(0, 2).filter(lambda i: i != 1)), draw(st.sampled_from(["w", "b"]))
    params = list(PARAMS)
    shape = PARAMS[index][leaf].shape
    params[index] = dict(params[index], **{leaf: draw(bad_array(shape, nan=False))})
    return lambda: MODEL.apply(tuple(params), X)


def _integer_loss(draw):
    loss = draw(st.sampled_from([pn.softmax_cross_entropy, pn.multiclass_hinge]))
    labels = draw(st.one_of(bad_labels(), other_shape((BATCH,)).map(lambda a: a.astype(np.int32))))
    return lambda: loss(jnp.zeros((BATCH, CLASSES)), labels)


def _real_loss(draw):
    loss = draw(st.sampled_from([pn.mean_squared_error, pn.binary_cross_entropy, pn.gaussian_nll]))
    width = 2 * CLASSES if loss is pn.gaussian_nll else CLASSES
    target_shape = (BATCH, CLASSES)
    outputs = jnp.zeros((BATCH, width))
    if draw(st.booleans()):
        return lambda: loss(jnp.zeros((0, width)), np.zeros((0, CLASSES), np.float32))
    complex_targets = st.sampled_from([np.complex64, np.complex128]).map(lambda d: np.ones(target_shape, d))
    targets = draw(st.one_of(with_nan(np.zeros(target_shape)), other_shape(target_shape), complex_targets))
    return lambda: loss(outputs, targets)


def _metric(draw):
    kind = draw(st.sampled_from(["one_logit", "labels", "binary_shape", "empty"]))
    if kind == "one_logit":
        return lambda: pn.accuracy(jnp.zeros((BATCH, 1)), np.zeros(BATCH, np.int32))
    if kind == "labels":
        return lambda: pn.accuracy(jnp.zeros((BATCH, CLASSES)), draw(bad_labels()))
    if kind == "binary_shape":
        return lambda: pn.binary_accuracy(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    return lambda: pn.accuracy(jnp.zeros((0, CLASSES)), np.zeros(0, np.int32))


def _penalty(draw):
    scale = draw(st.sampled_from([-1e-3, math.nan, math.inf, "0.1"]))
    return lambda: pn.l2_penalty(PARAMS, scale)


def _reference_gradient(draw):
    if draw(st.booleans()):
        return lambda: pn.reference_gradient(MODEL, PARAMS, X, draw(bad_labels()), pn.softmax_cross_entropy)
    return lambda: pn.reference_gradient(
        MODEL, PARAMS, draw(bad_array(X.shape)), LABELS, pn.softmax_cross_entropy
    )


def _check_gradients(draw):
    bad = draw(
        st.sampled_from(
            [dict(eps=0.0), dict(eps=math.nan), dict(rtol=-1.0), dict(atol=math.inf), dict(directions=-1)]
        )
    )
    if draw(st.booleans()):
        return lambda: pn.check_gradients(MODEL, PARAMS, X, LABELS, pn.softmax_cross_entropy, **bad)
    return lambda: pn.check_gradients(MODEL, PARAMS, X, draw(bad_labels()), pn.softmax_cross_entropy)


def _evaluate(draw):
    if draw(st.booleans()):
        return lambda: pn.evaluate(MODEL, PARAMS, X, draw(bad_labels()), loss=pn.softmax_cross_entropy)
    return lambda: pn.evaluate(MODEL, PARAMS, draw(bad_array(X.shape)), LABELS, loss=pn.softmax_cross_entropy)


def _fit(draw):
    arguments = dict(loss=pn.softmax_cross_entropy, optimizer=optax.sgd(0.1), epochs=1, batch_size=3, key=KEY)
    kind = draw(st.sampled_from(["labels", "x", "validation", "batch_size", "epochs", "key"]))
    x, y = X, LABELS
    if kind == "labels":
        y = draw(bad_labels())
    elif kind == "x":
        x = draw(bad_array(X.shape))
    elif kind == "validation":
        arguments["validation"] = (draw(bad_array(X.shape)), LABELS)
    elif kind == "batch_size":
        arguments["batch_size"] = draw(st.sampled_from([0, -3, 2.5, "8"]))
    elif kind == "epochs":
        arguments["epochs"] = draw(st.sampled_from([-1, 1.5, "2"]))
    else:
        arguments["key"] = draw(BAD_KEYS)
    return lambda: pn.fit(MODEL, PARAMS, x, y, progress=False, **arguments)


def _cost(params):
    return pn.softmax_cross_entropy(MODEL.apply(params, jnp.asarray(X)), LABELS)


def _hvp(draw):
    v = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    index, leaf = draw(st.sampled_from([0, 2])), draw(st.sampled_from(["w", "b"]))
    v = list(v)
    v[index] = dict(v[index], **{leaf: draw(bad_array(PARAMS[index][leaf].shape))})
    product = draw(st.sampled_from([pn.hvp, lambda f, p, v: pn.hessian_operator(f, p).matvec(v)]))
    return lambda: product(_cost, PARAMS, tuple(v))


def _model_operator(draw):
    return lambda: pn.model_operator(MODEL, pn.softmax_cross_entropy, PARAMS, X, draw(bad_labels()))


def _krylov(draw):
    op = pn.hessian_operator(_cost, PARAMS)
    kind = draw(st.sampled_from(["cg_damping", "cg_tol", "cg_maxiter", "density_sigma", "hf_step"]))
    if kind == "cg_damping":
        return lambda: pn.cg_solve(op, PARAMS, damping=draw(st.sampled_from([math.inf, math.nan, -1.0])))
    if kind == "cg_tol":
        return lambda: pn.cg_solve(op, PARAMS, tol=draw(st.sampled_from([-1.0, 0.0, math.nan])))
    if kind == "cg_maxiter":
        return lambda: pn.cg_solve(op, PARAMS, maxiter=draw(st.sampled_from([0, -2, 1.5])))
    if kind == "density_sigma":
        density = pn.spectral_density(op, num_iterations=4, num_probes=1, key=KEY)
        sigma = draw(st.sampled_from([0.0, -1.0, math.nan]))
        return lambda: density.evaluate(np.linspace(-1, 1, 5), sigma=sigma)
    bad = draw(st.sampled_from([dict(cg_tol=-1.0), dict(cg_maxiter=0), dict(cg_tol=math.nan)]))
    return lambda: pn.make_hessian_free_step(MODEL, pn.softmax_cross_entropy, **bad)


def _checkpoint(draw, tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(draw(st.binary(min_size=0, max_size=64)))
    return lambda: pn.checkpoint.load(path)


def _helpers(draw):
    kind = draw(st.sampled_from(["summary", "count_params", "policy", "batches", "split"]))
    if kind == "summary":
        return lambda: pn.summary(draw(not_an_array()), (-1, WIDTH))
    if kind == "count_params":
        return lambda: pn.count_params(draw(st.sampled_from(["abc", {"w": "x"}])))
    if kind == "policy":
        return lambda: pn.policy(draw(st.sampled_from(["nonsense", "int32", None, 3])))
    if kind == "batches":
        return lambda: list(pn.data.batches(X, LABELS, draw(st.sampled_from([0, -1, 2.5]))))
    return lambda: pn.data.train_test_split(
        X, LABELS, test_fraction=draw(st.sampled_from([0.0, 1.0, math.nan]))
    )


ENTRY_POINTS: dict[str, Callable] = {
    "init": _init,
    "apply": _apply,
    "integer_loss": _integer_loss,
    "real_loss": _real_loss,
    "metric": _metric,
    "penalty": _penalty,
    "reference_gradient": _reference_gradient,
    "check_gradients": _check_gradients,
    "evaluate": _evaluate,
    "fit": _fit,
    "hvp": _hvp,
    "model_operator": _model_operator,
    "krylov": _krylov,
    "checkpoint": _checkpoint,
    "helpers": _helpers,
}


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
@given(data=st.data())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_entry_point_refuses_a_bad_input_by_name(entry_point, data, tmp_path):
    build = ENTRY_POINTS[entry_point]
    call = build(data.draw, tmp_path) if entry_point == "checkpoint" else build(data.draw)
    with time_limit(TIME_LIMIT_S):
        try:
            result = call()
        except pn.PurenetError as error:
            assert str(error).strip(), "a purenet error must say something"
            return
        except Exception as error:  # a bare error from inside a dependency is the failure this test hunts
            pytest.fail(f"{entry_point}: a bare {type(error).__name__} instead of a purenet error: {error}")
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(result) if hasattr(leaf, "dtype")]
    nan = any(np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)) for leaf in leaves)
    pytest.fail(
        f"{entry_point}: a bad input was accepted, returning {'NaN' if nan else 'a value'}: {result!r:.200}"
    )
