"""The Layer record, errors, shape helpers, count_params and summary."""

import jax.numpy as jnp
import pytest

import purenet as pn
from purenet.shapes import feature_width, normalize_shape, require_positive_int


def test_layer_record_fields_and_defaults():
    layer = pn.Layer(lambda k, s: (s, ()), lambda p, x, **kw: x)
    assert layer.reference is None
    assert layer.children == ()
    assert layer.name == "layer"


def test_a_users_own_layer_composes_with_the_library():
    double = pn.Layer(lambda key, shape: (shape, ()), lambda params, x, *, key=None, train=False: 2 * x)
    model = pn.serial(pn.Dense(3), double)
    out_shape, params = model.init(jnp.zeros(2, jnp.uint32), (-1, 4))
    x = jnp.ones((2, 4))
    assert out_shape == (-1, 3)
    expected = 2 * (x @ params[0]["w"] + params[0]["b"])
    assert jnp.allclose(model.apply(params, x), expected)


def test_error_classes_are_value_or_type_errors():
    assert issubclass(pn.ShapeError, ValueError)
    assert issubclass(pn.ParamsError, ValueError)
    assert issubclass(pn.ConfigError, ValueError)
    assert issubclass(pn.InputTypeError, TypeError)
    for cls in (pn.ShapeError, pn.ParamsError, pn.ConfigError, pn.InputTypeError):
        assert issubclass(cls, pn.PurenetError)


def test_error_message_names_layer_and_path():
    error = pn.ParamsError("Dense(3)", "expected shape (4, 3), got (5, 3)", leaf="['w']")
    error.path[:0] = ["[1]", "['block']"]
    assert str(error) == "Dense(3) at params[1]['block']['w']: expected shape (4, 3), got (5, 3)"
    assert str(pn.ConfigError("Dense(0)", "bad")) == "Dense(0): bad"


@pytest.mark.parametrize("value", [0, -3, 2.5, "4", None, True])
def test_require_positive_int_rejects(value):
    with pytest.raises(pn.ConfigError, match="units must be an integer >= 1"):
        require_positive_int("Dense", "units", value)


def test_shapes_accept_none_or_minus_one_for_the_batch():
    assert normalize_shape("L", (None, 5)) == (-1, 5)
    assert feature_width("L", [None, 7]) == 7


@pytest.mark.parametrize("shape", [(), 5, "(-1, 4)", ((-1, 2), (-1, 3)), (-1, -1), (4, 0)])
def test_bad_input_shapes_are_named(shape):
    with pytest.raises(pn.ShapeError, match="^L"):
        feature_width("L", shape)


def test_count_params():
    params = ({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}, (), {"alpha": jnp.zeros(())})
    assert pn.count_params(params) == 12 + 4 + 1
    assert pn.count_params(()) == 0


def test_summary_lists_every_layer_with_shapes_and_counts():
    model = pn.serial(pn.Dense(8), pn.ReLU(), pn.residual(pn.serial(pn.Dense(8), pn.Tanh())), pn.Dense(2))
    table = pn.summary(model, (-1, 5))
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "params", "path", "output", "shape", "params"]
    body = [line for line in lines[2:-2]]
    assert [line.split()[0] for line in body] == [
        "serial",
        "Dense(8)",
        "ReLU",
        "residual",
        "serial",
        "Dense(8)",
        "Tanh",
        "Dense(2)",
    ]
    # Dense(8) on width 5: 5*8 + 8 = 48; residual Dense(8) on 8: 72; Dense(2) on 8: 18.
    assert "48" in body[1] and "(-1, 8)" in body[1]
    assert "[2]['block'][0]" in body[5] and "72" in body[5]
    assert lines[-1] == "total parameters: 138"
    _, params = model.init(jnp.zeros(2, jnp.uint32), (-1, 5))
    assert pn.count_params(params) == 138


def test_summary_of_repeat_counts_all_copies():
    model = pn.repeat(pn.serial(pn.Dense(4), pn.Tanh()), 3)
    table = pn.summary(model, (-1, 4))
    assert table.splitlines()[-1] == f"total parameters: {3 * 20}"
