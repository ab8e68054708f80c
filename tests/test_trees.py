"""check_like, the one tree check, and every site that goes through it.

Each site must refuse a wrong tree before any number is compared, with a
message naming the leaf, what was expected and what came: apply's params,
what a reference's backward returns (check_layer's bprop, a node inside a
network), repeat's stacked params and the reference's params.  (Curvature
vectors and checkpoints have their own tests beside their modules.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purenet as pn

# --------------------------------------------------------------------------
# check_like itself: a property test over random trees and one planted change
# --------------------------------------------------------------------------

leaf_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def trees(depth: int = 3):
    leaf = leaf_shapes.map(lambda shape: np.zeros(shape, np.float32))
    if depth == 0:
        return leaf
    child = trees(depth - 1)
    return st.one_of(
        leaf,
        st.dictionaries(st.sampled_from("abcd"), child, min_size=1, max_size=3),
        st.lists(child, min_size=1, max_size=3).map(tuple),
    )


def leaf_paths(tree):
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def mutate(tree, target: int, kind: str, counter: list):
    """``tree`` with leaf number ``target`` (in flattening order) changed in shape, dtype or kind."""
    if isinstance(tree, dict):
        return {key: mutate(tree[key], target, kind, counter) for key in sorted(tree)}
    if isinstance(tree, tuple):
        return tuple(mutate(value, target, kind, counter) for value in tree)
    index, counter[0] = counter[0], counter[0] + 1
    if index != target:
        return tree
    if kind == "shape":
        return np.zeros((*tree.shape, 2), np.float32)
    if kind == "dtype":
        return tree.astype(np.int32)
    return {"w": tree}  # a container where a leaf belongs


@settings(max_examples=150, deadline=None)
@given(trees(), st.data())
def test_check_like_accepts_the_tree_itself_and_refuses_any_planted_change(tree, data):
    assert pn.check_like(tree, tree, layer="probe") is None
    # any float precision is the same dtype kind
    pn.check_like(jax.tree_util.tree_map(lambda a: a.astype(np.float64), tree), tree, layer="probe")
    paths = leaf_paths(tree)
    if not paths:
        return
    target = data.draw(st.integers(0, len(paths) - 1))
    kind = data.draw(st.sampled_from(("shape", "dtype", "leaf_for_container")))
    changed = mutate(tree, target, kind, [0])
    with pytest.raises(pn.ParamsError) as caught:
        pn.check_like(changed, tree, layer="probe", what="tree")
    message = str(caught.value)
    assert message.startswith("probe at tree" + paths[target] + ": expected"), (message, paths[target])


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ([np.zeros(2), np.zeros(3)], "probe: expected a dict with keys ['b', 'w'], got a list of 2 entries"),
        ({"w": np.zeros(3), "c": np.zeros(2)}, "probe: expected keys ['b', 'w'], got ['c', 'w']"),
        ({"w": np.zeros(3), "b": np.zeros(1)}, "probe at params['b']: expected shape (2,), got (1,)"),
        ({"w": np.zeros(3, np.int32), "b": np.zeros(2)}, "probe at params['w']: expected a floating dtype"),
        ({"w": np.zeros(3, bool), "b": np.zeros(2)}, "probe at params['w']: expected a floating dtype"),
        ({"w": np.zeros(3), "b": (np.zeros(2),)}, "probe at params['b']: expected an array, got a tuple"),
        ({"w": np.zeros(3), "b": None}, "probe at params['b']: expected an array, got None"),
    ],
)
def test_check_like_names_the_first_mismatch(tree, message):
    template = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(pn.ParamsError) as caught:
        pn.check_like(tree, template, layer="probe")
    assert str(caught.value).startswith(message), str(caught.value)


def test_check_like_with_a_leading_axis():
    template = {"w": np.zeros((3, 2)), "b": np.zeros(2)}
    stacked = {"w": np.zeros((5, 3, 2)), "b": np.zeros((5, 2))}
    assert pn.check_like(stacked, template, layer="probe", leading=True) == 5
    assert pn.check_like(stacked, template, layer="probe", leading=5) == 5
    with pytest.raises(pn.ParamsError, match=r"probe at params\['w'\]: expected shape \(4, 3, 2\), got \(5, 3, 2\)"):
        pn.check_like(stacked, template, layer="probe", leading=4)
    ragged = {"w": np.zeros((5, 3, 2)), "b": np.zeros((4, 2))}
    with pytest.raises(pn.ParamsError, match=r"every leaf of params needs the same leading axis, got lengths \[4, 5\]"):
        pn.check_like(ragged, template, layer="probe", leading=True)


# --------------------------------------------------------------------------
# apply's params: the layout comes from init, dtype kinds included
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_dense_refuses_integer_or_boolean_params(key, dtype):
    layer = pn.Dense(3)
    _, params = layer.init(key, (-1, 2))
    bad = {"w": params["w"].astype(dtype), "b": params["b"]}
    with pytest.raises(pn.ParamsError, match=rf"Dense\(3\) at params\['w'\]: expected a floating dtype like float32, got {jnp.dtype(dtype)}"):
        layer.apply(bad, jnp.ones((1, 2)))


def test_repeat_refuses_integer_stacked_params(key):
    model = pn.repeat(pn.Dense(4), 2)
    _, params = model.init(key, (-1, 4))
    bad = {"w": params["w"].astype(jnp.int32), "b": params["b"]}
    with pytest.raises(pn.ParamsError, match=r"repeat\(n=2\) at params\['w'\]: expected a floating dtype"):
        model.apply(bad, jnp.ones((1, 4)))


def test_reference_gradient_refuses_params_that_apply_refuses(key):
    model = pn.serial(pn.Dense(3))
    _, params = model.init(key, (-1, 2))
    broadcastable = ({"w": params[0]["w"], "b": np.zeros(1)},)
    with pytest.raises(pn.ParamsError) as applied:
        model.apply(broadcastable, jnp.ones((4, 2)))
    with pytest.raises(pn.ParamsError) as referenced:
        pn.reference_gradient(model, broadcastable, np.ones((4, 2)), np.zeros((4, 3)), pn.mean_squared_error)
    assert str(referenced.value) == "serial at params[0]['b']: expected shape (3,), got (1,)"
    assert "params[0]['b']: expected shape (3,)" in str(applied.value)
    with pytest.raises(pn.ParamsError, match=r"^serial at params\[0\]\['b'\]: expected shape \(3,\), got \(1,\)$"):
        pn.textbook_mlp_gradient(model, broadcastable, np.ones((4, 2)), np.zeros((4, 3)), pn.mean_squared_error)


# --------------------------------------------------------------------------
# What a backward returns, checked before any number is compared
# --------------------------------------------------------------------------


def dense_grads(params, x, g):
    return pn.layers.dense.DENSE_REFERENCE.bprop(params, x, g)


def as_list(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return [g_params["b"], g_params["w"]], g_x


def wrong_key(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return {"w": g_params["w"], "c": g_params["b"]}, g_x


def wrong_shape(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return {"w": g_params["w"], "b": g_params["b"][:1]}, g_x


def wrong_dtype(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return {"w": g_params["w"].astype(np.int64), "b": g_params["b"]}, g_x


def swapped(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return g_x, g_params


def wrong_g_x(params, x, g):
    g_params, g_x = dense_grads(params, x, g)
    return g_params, g_x.T


WRONG_BACKWARDS = {
    as_list: r"Dense\(3\) at the backward's g_params: expected a dict with keys \['b', 'w'\], got a list of 2 entries",
    wrong_key: r"Dense\(3\) at the backward's g_params: expected keys \['b', 'w'\], got \['c', 'w'\]",
    wrong_shape: r"Dense\(3\) at the backward's g_params\['b'\]: expected shape \(3,\), got \(1,\)",
    wrong_dtype: r"Dense\(3\) at the backward's g_params\['w'\]: expected a floating dtype like float64, got int64",
    swapped: r"Dense\(3\) at the backward's g_params: expected a dict with keys \['b', 'w'\], got an array of shape \(4, 2\)",
    wrong_g_x: r"Dense\(3\) at the backward's g_x: expected shape \(4, 2\), got \(2, 4\)",
}


@pytest.mark.parametrize("bprop", list(WRONG_BACKWARDS), ids=lambda f: f.__name__)
def test_check_layer_refuses_a_backward_returning_the_wrong_tree(bprop):
    with pytest.raises(pn.ParamsError, match=WRONG_BACKWARDS[bprop]):
        pn.check_layer(pn.Dense(3), (4, 2), bprop=bprop)


def test_a_parameter_free_backward_with_swapped_outputs_is_refused_by_both_checks(key):
    def swapped_unit(params, z, g):
        return g, ()

    with pytest.raises(pn.ParamsError, match=r"Tanh at the backward's g_params: expected a tuple of 0 entries, got an array"):
        pn.check_layer(pn.Tanh(), (4, 3), bprop=swapped_unit)
    wrong_tanh = pn.Tanh().replace(reference=pn.Reference.from_bprop(lambda p, z: np.tanh(z), swapped_unit))
    model = pn.serial(pn.Dense(3), wrong_tanh, pn.Dense(2))
    params = model.init(key, (-1, 4))[1]
    with pytest.raises(pn.ParamsError) as caught:
        pn.check_gradients(model, params, np.ones((2, 4)), np.zeros((2, 2)), pn.mean_squared_error)
    assert caught.value.path == ["[1]"]  # located: the node inside the network is named
    assert str(caught.value).startswith(
        "Tanh at params[1], the backward's g_params: expected a tuple of 0 entries, got an array of shape (2, 3)"
    )


def test_a_users_reference_returning_the_wrong_tree_inside_a_network_is_located(key):
    def forward(params, x):
        return x @ params["w"], lambda g: ({"w": x.T @ g, "extra": 0.0}, g @ params["w"].T)

    def init(k, shape):
        return (*shape[:-1], 2), {"w": jax.random.normal(k, (shape[-1], 2))}

    custom = pn.Layer(init, lambda p, x, **kw: x @ p["w"], name="MyLinear", reference=pn.Reference(forward))
    model = pn.serial(pn.Dense(3), pn.Tanh(), custom)
    params = model.init(key, (-1, 4))[1]
    with pytest.raises(pn.ParamsError) as caught:
        pn.reference_gradient(model, params, np.ones((2, 4)), np.zeros((2, 2)), pn.mean_squared_error)
    assert str(caught.value) == "MyLinear at params[2], the backward's g_params: expected keys ['w'], got ['extra', 'w']"


def test_a_reference_that_breaks_the_protocol_is_refused_naming_the_layer(key):
    no_pullback = pn.Tanh().replace(reference=pn.Reference(lambda p, z: np.tanh(z)))
    model = pn.serial(pn.Dense(3), no_pullback)
    params = model.init(key, (-1, 2))[1]
    expected = r"Tanh at params\[1\]: its reference's forward must return \(value, pullback: g -> gradients\), got an array"
    with pytest.raises(pn.MissingReferenceError, match=expected):
        pn.reference_gradient(model, params, np.ones((2, 2)), np.zeros((2, 3)), pn.mean_squared_error)
    with pytest.raises(pn.MissingReferenceError, match=r"^Tanh: its reference's forward must return"):
        pn.check_layer(no_pullback, (2, 3))
    for result, got in ((None, "None"), ((1, 2, 3), "a tuple of 3")):
        with pytest.raises(pn.MissingReferenceError, match=rf"Dense\(3\): the reference's backward must return \(g_params, g_x\), got {got}"):
            pn.check_layer(pn.Dense(3), (4, 2), bprop=lambda p, x, g, result=result: result)
