"""check_function: a hand-derived gradient or VJP of any function of pytrees, checked and diagnosed.

Each derivation below is written in NumPy from a closed form; the check
compares it with jax.grad / jax.vjp and float64 finite differences.  Slips
are caught and named by argument leaf; a float32 constant or cast inside f
is reported as precision, never as a wrong derivation; anything the check
cannot check is refused before any comparison.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

RNG = np.random.default_rng(0)
A = RNG.standard_normal((5, 3))
X = RNG.standard_normal(3)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def logsumexp_grad(A, x):
    """d/dA and d/dx of logsumexp(A x): p x^T and A^T p with p = softmax(A x)."""
    p = softmax(A @ x)
    return np.outer(p, x), A.T @ p


def lse(A, x):
    return jax.nn.logsumexp(A @ x)


def test_a_right_gradient_of_a_function_of_two_arguments_passes():
    report = pn.check_function(lse, (A, X), grad=logsumexp_grad)
    assert report.passed and report.verdict == "passed"
    assert [leaf.path for leaf in report.leaves] == ["A", "x"]  # named after f's parameters
    assert report.value == pytest.approx(math.log(np.sum(np.exp(A @ X))), rel=1e-14)


def test_a_function_of_pytrees_with_a_jax_written_gradient():
    def f(params, x):
        return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2)

    def grad(params, x):  # in jax.numpy: d/du tanh(u)^2 = 2 tanh(u) (1 - tanh(u)^2)
        t = jnp.tanh(x @ params["w"] + params["b"])
        d = 2 * t * (1 - t**2)
        return {"w": x.T @ d, "b": d.sum(0)}, d @ params["w"].T

    params = {"w": RNG.standard_normal((3, 2)), "b": RNG.standard_normal(2)}
    report = pn.check_function(f, (params, RNG.standard_normal((4, 3))), grad=grad)
    assert report.passed
    assert [leaf.path for leaf in report.leaves] == ["params['b']", "params['w']", "x"]


def test_a_flipped_sign_is_caught_on_the_leaf_it_corrupts():
    def slipped(A, x):
        g_A, g_x = logsumexp_grad(A, x)
        return g_A, -g_x

    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(lse, (A, X), grad=slipped)
    report = caught.value.report
    assert report.verdict == "derivation" and [leaf.path for leaf in report.failures] == ["x"]
    assert (
        "the hand-derived gradient is wrong (JAX and finite differences agree) on 1 of 2 leaves (x)"
        in str(caught.value)
    )


def tanh_layer(W, b):
    return jnp.tanh(W @ np.ones(3) + b)


def tanh_layer_vjp(W, b, g):
    """y = tanh(W 1 + b): dW = (g (1 - y^2)) 1^T, db = g (1 - y^2)."""
    d = g * (1 - np.tanh(W @ np.ones(3) + b) ** 2)
    return np.outer(d, np.ones(3)), d


def test_an_array_valued_function_with_its_vjp():
    args = (RNG.standard_normal((4, 3)), RNG.standard_normal(4))
    assert pn.check_function(tanh_layer, args, vjp=tanh_layer_vjp).passed

    def transposed(W, b, g):  # the slip: the cotangent's outer product the wrong way round
        dW, db = tanh_layer_vjp(W, b, g)
        return dW * 0.5, db

    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(tanh_layer, args, vjp=transposed)
    assert [leaf.path for leaf in caught.value.report.failures] == ["W"]


def test_a_vjp_that_returns_the_wrong_tree_is_refused_naming_the_leaf():
    args = (RNG.standard_normal((4, 3)), RNG.standard_normal(4))
    with pytest.raises(pn.ParamsError, match=r"vjp's result.*\[0\].*expected shape \(4, 3\), got \(4,\)"):
        pn.check_function(tanh_layer, args, vjp=lambda W, b, g: tanh_layer_vjp(W, b, g)[::-1])


def test_a_wrong_custom_vjp_rule_in_jax_is_caught_without_a_hand_derivation():
    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (2 * x**2 * g,))  # the slip: 2 x^2, not 3 x^2
    with pytest.raises(pn.GradientCheckError, match="jax.grad disagrees with finite differences"):
        pn.check_function(lambda x: jnp.sum(cube(x)), X)


def test_a_float32_constant_captured_by_f_is_precision_not_derivation():
    A32 = jnp.asarray(A, jnp.float32)
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(lambda x: jax.nn.logsumexp(A32 @ x), X, grad=lambda x: logsumexp_grad(A, x)[1])
    report = caught.value.report
    assert report.verdict == "precision"
    assert (
        "float32 constant of shape (5, 3)" in report.headline and "test_check_function.py" in report.headline
    )
    assert "not a wrong derivation" in str(caught.value)
    # made float64 inside the function, the same derivation passes
    assert pn.check_function(lambda x: jax.nn.logsumexp(jnp.asarray(A) @ x), X,
                             grad=lambda x: logsumexp_grad(A, x)[1]).passed  # fmt: skip


def test_a_cast_inside_f_is_precision_and_names_the_cast():
    f = lambda x: jnp.sum(jnp.sin(x.astype(jnp.float32)).astype(jnp.float64))  # noqa: E731
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(f, X, grad=lambda x: np.cos(x))
    assert caught.value.report.verdict == "precision"
    assert "a cast from float64 to float32" in caught.value.report.headline


def test_a_real_slip_beside_a_float32_constant_is_still_a_derivation():
    A32 = jnp.asarray(A, jnp.float32)
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(lambda x: jax.nn.logsumexp(A32 @ x), X, grad=lambda x: 2 * logsumexp_grad(A, x)[1])
    assert caught.value.report.verdict == "derivation"


@pytest.mark.parametrize("x64", [False, True])
def test_the_check_is_float64_whether_or_not_x64_is_on(x64):
    with jax.enable_x64(x64):
        report = pn.check_function(lse, (A.astype(np.float32), X.astype(np.float32)), grad=logsumexp_grad)
    assert report.passed and report.leaves[0].reference_vs_jax.rel_error < 1e-13


# ---------------------------------------------------------------------------
# What cannot be checked is refused before any comparison
# ---------------------------------------------------------------------------

CONFIG_REFUSALS = [
    ({"max_coordinates": 0, "directions": 0}, "probe nothing"),
    ({"eps": 0.0}, "eps"),
    ({"eps": float("nan")}, "eps"),
    ({"eps": -1e-5}, "eps"),
    ({"rtol": -1.0}, "rtol"),
    ({"reference_rtol": float("nan")}, "reference_rtol"),
    ({"atol": -1e-9}, "atol"),
    ({"grad": logsumexp_grad, "vjp": tanh_layer_vjp}, "give one of grad="),
    ({"grad": "not a function"}, "grad must be a function"),
]


@pytest.mark.parametrize("kwargs, message", CONFIG_REFUSALS, ids=[m for _, m in CONFIG_REFUSALS])
def test_a_check_that_would_check_nothing_is_refused(kwargs, message):
    kwargs = {"grad": logsumexp_grad, **kwargs}
    with pytest.raises(pn.ConfigError, match=message):
        pn.check_function(lse, (A, X), **kwargs)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(pn.DataError, match=r"args\[1\] must be finite"):
        pn.check_function(lse, (A, np.array([1.0, np.nan, 0.0])), grad=logsumexp_grad)
    with pytest.raises(pn.InputTypeError, match=r"args\[1\] must be a floating array.*int"):
        pn.check_function(lse, (A, np.array([1, 2, 3])), grad=logsumexp_grad)
    with pytest.raises(pn.ConfigError, match="not a scalar: give its vjp"):
        pn.check_function(tanh_layer, (A[:4], X[:1].repeat(4)), grad=logsumexp_grad)
    with pytest.raises(pn.ConfigError, match="f must be a function"):
        pn.check_function("lse", (A, X))
    with pytest.raises(pn.ConfigError, match="args is empty"):
        pn.check_function(lse, ())
    with pytest.raises(pn.DataError, match="nothing to compare"):
        pn.check_function(lambda x: jnp.sum(jnp.log(x - 10.0)), X)


BAD_LEAVES = st.sampled_from(
    [
        np.array([np.inf]),
        np.array([np.nan, 1.0]),
        np.array([1, 2]),
        np.array([True]),
        "text",
        None,
        {"a": "b"},
    ]
)


@settings(max_examples=30, deadline=None)
@given(BAD_LEAVES, st.integers(0, 1))
def test_fuzzed_bad_arguments_end_in_a_purenet_error(bad, where):
    args = [X, X]
    args[where] = bad
    with pytest.raises(pn.PurenetError):
        pn.check_function(lambda a, b: jnp.sum(a * b), tuple(args), grad=lambda a, b: (b, a))


# ---------------------------------------------------------------------------
# Found by a hostile-input hunt against the checker
# ---------------------------------------------------------------------------


def test_a_second_check_of_the_same_function_reads_its_data_afresh():
    data = {"A": np.array([[1.0, 2.0], [3.0, 4.0]])}
    f = lambda x: jnp.sum((jnp.asarray(data["A"]) @ x) ** 2)  # noqa: E731
    grad = lambda x: 2 * data["A"].T @ (data["A"] @ x)  # noqa: E731
    x = np.array([0.5, -1.0])
    assert pn.check_function(f, x, grad=grad).passed
    data["A"] = np.array([[5.0, -1.0], [0.0, 2.0]])  # the next notebook cell
    report = pn.check_function(f, x, grad=grad)
    assert report.passed and report.value == pytest.approx(16.25)


@pytest.mark.parametrize(
    "f, wrong",
    [
        (lambda x: 1e-15 * jnp.sum(x**2), lambda x: -2e-15 * x),  # a tiny gradient, flipped
        (lambda x: 1e13 + 1e-3 * jnp.sum(x**2), lambda x: -2e-3 * x),  # a large constant in f
        (lambda x: 1e-15 * jnp.sum(x**2), lambda x: np.zeros(3)),
    ],
    ids=["tiny", "offset", "zero"],
)
def test_no_absolute_floor_lets_a_wrong_gradient_pass(f, wrong):
    with pytest.raises(pn.GradientCheckError):
        pn.check_function(f, X, grad=wrong)


def test_an_exact_float32_mask_does_not_excuse_a_wrong_custom_vjp():
    @jax.custom_vjp
    def sine(x):
        return jnp.sin(x)

    sine.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (1.05 * jnp.cos(x) * g,))  # 5% off
    mask = jnp.ones(3)  # float32, but ones lose nothing to rounding
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(lambda x: jnp.sum(sine(x) * mask), X)
    assert caught.value.report.verdict == "derivation"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_a_narrow_cast_of_any_float_dtype_is_precision(dtype):
    f = lambda x: jnp.sum(jnp.sin(x).astype(dtype).astype(jnp.float64) * x)  # noqa: E731
    with pytest.raises(pn.GradientCheckError) as caught:
        pn.check_function(f, X, grad=lambda x: np.sin(x) + x * np.cos(x))
    assert caught.value.report.verdict == "precision"


def test_a_gradient_returned_in_float32_is_precision_naming_it():
    with pytest.raises(pn.GradientCheckError, match="your derivative returned float32 for x"):
        pn.check_function(lambda x: jnp.sum(jnp.sin(x)), X, grad=lambda x: np.cos(x).astype(np.float32))


def test_outputs_and_arguments_of_any_pytree_kind():
    assert pn.check_function(lambda x: {"loss": jnp.sum(x**2)}, X, grad=lambda x: 2 * x).passed
    import collections

    Pair = collections.namedtuple("Pair", "w b")
    assert pn.check_function(
        lambda p: jnp.sum(p.w * p.b), Pair(X, X + 1), grad=lambda p: Pair(p.b, p.w)
    ).passed


@pytest.mark.parametrize(
    "call",
    [
        lambda: pn.check_function(lambda k: 1.0, jax.random.key(0)),
        lambda: pn.check_function(lambda x: np.sum(np.sin(x)), X),
        lambda: pn.check_function(lambda x: None, X, vjp=lambda x, g: x),
        lambda: pn.check_function(lambda x: jnp.sum(x), X, directions=10**9),
        lambda: pn.check_layer(pn.Dense(2), None),
        lambda: pn.check_layer(pn.Dense(2), "abc"),
        lambda: pn.check_layer(pn.Dense(2), (-3, 3)),
        lambda: pn.check_layer(lambda x: x),
        lambda: pn.check_layer(pn.Tanh(), (4, 3), bprop=lambda p, x, g: ((), g), np_apply=lambda p, x: None),
        lambda: pn.check_layer(pn.Tanh(), (4, 3), bprop=lambda p, x, g: ((), g), np_apply=lambda p, x: (x,)),
    ],
    ids=[
        "key",
        "numpy f",
        "None f",
        "directions",
        "None shape",
        "str shape",
        "-3",
        "lambda",
        "np None",
        "np tuple",
    ],
)
def test_what_the_checks_cannot_take_is_refused_by_name(call):
    with pytest.raises(pn.PurenetError):
        call()


def test_integer_inputs_to_check_gradients_are_refused_by_name():
    model = pn.serial(pn.Dense(3))
    params = model.init(jax.random.PRNGKey(0), (-1, 4))[1]
    with pytest.raises(pn.InputTypeError, match="x must be floating"):
        pn.check_gradients(
            model, params, np.arange(8).reshape(2, 4), np.array([0, 1]), pn.softmax_cross_entropy
        )
