"""Combinators: layers built from layers (stax's algebra, plus skips and dense blocks).

    serial(*ls)        composition; params: a tuple of the children's params
    parallel(*ls)      a tuple of inputs, one per child; params: a tuple
    residual(block)    y = x + block(x) (He et al. 2016); params: {"block": ...}
                       and, when the block changes the width, {"proj": {"w": (d, n)}}
    dense_block(*ls)   DenseNet-style (Huang et al. 2017); params: a tuple

The joins (``fan_out``, ``fan_in_sum``, ``fan_in_concat``) are layers in
``purenet.layers.joins``; ``repeat`` (stacked params under ``lax.scan``) is in
``purenet.repeat``; ``serial(remat=...)`` recomputes in segments
(``purenet.remat``).

Every combinator names each child's place when a child raises
(``params[1]['block'][0]``), so an error deep inside a model says where.

Each combinator also describes itself as a computational graph of its
children (``purenet.reference.Graph``), from which Algorithm 6.2 composes its
hand-derived ``Reference``: gradients reaching a node from all its consumers
are summed.  The joining nodes reuse the joins' references; the residual's
projection is y = x w, with dJ/dw = x^T G and dJ/dx = G w^T.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from purenet.core import (
    ConfigError,
    Initializer,
    Layer,
    ParamsError,
    Reference,
    ShapeError,
    describe_tree,
    located,
)
from purenet.layers.dense import matmul_bprop, matmul_r_bprop
from purenet.layers.joins import (
    CONCAT_REFERENCE,
    PACK_REFERENCE,
    SUM_REFERENCE,
    check_tuple,
    concat_apply,
    pack_apply,
    select_apply,
    select_reference,
    sum_apply,
    tuple_of_shapes,
)
from purenet.reference import Graph, Node, chain, graph_reference, layer_node
from purenet.remat import segment_length
from purenet.shapes import (
    check_input,
    check_params,
    check_promised_shape,
    check_sequence_params,
    is_shape,
    normalize_shape,
    split_key,
    with_width,
)
from purenet.summary import init_child


def check_children(name: str, layers: tuple) -> tuple[Layer, ...]:
    if not layers:
        raise ConfigError(name, "needs at least one layer")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer) and hasattr(layer, "__name__"):
                hint = f"; did you mean {layer.__name__}()?"
            raise ConfigError(name, f"argument {index} must be a Layer, got {type(layer).__name__}{hint}")
    return layers


def _resolve_default_inits(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """Apply the init policy: a weight layer on its default initializer takes the one its next unit prefers.

    He initialization suits rectifiers, Glorot suits sigmoid and tanh: the
    choice belongs to the unit, but the weights live in the layer before it
    (``purenet.core.InitPolicy``).  Only layers built without an explicit
    weight initializer declare ``rebuild``, so a user's choice is never replaced.
    """
    resolved = list(layers)
    for i in range(len(resolved) - 1):
        rebuild, prefers = resolved[i].init_policy.rebuild, resolved[i + 1].init_policy.prefers
        if rebuild is not None and prefers is not None:
            # Only the initializer changes: the layer's apply, name and reference stay its own.
            settled = dataclasses.replace(resolved[i].init_policy, rebuild=None)
            resolved[i] = resolved[i].replace(init=rebuild(prefers).init, init_policy=settled)
    return tuple(resolved)


_SERIAL_LAYERS: weakref.WeakSet[Layer] = weakref.WeakSet()


def is_serial(layer: Layer) -> bool:
    """Whether ``layer`` was built by ``serial`` (not merely named so)."""
    return layer in _SERIAL_LAYERS


def serial(*layers: Layer, remat: bool | int = False) -> Layer:
    """Compose layers: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Init policy: a weight layer built without an explicit weight initializer
    (``Dense(64)``, not ``Dense(64, w_init=...)``) takes the one preferred by
    the unit right after it: Glorot before Sigmoid, Tanh and HardTanh, He
    before the rectifiers (``purenet.core.InitPolicy``).  An initializer you
    pass is always kept.

    Args:
      layers: the layers, applied first to last.
      remat: trade compute for memory in back-propagation (the book's
        section 6.5.7): False keeps every child's activations for the
        backward pass; True groups the children into segments of about
        sqrt(n / 2.25) and keeps only each segment's input, recomputing the
        segment's inside when the backward pass reaches it (Chen et al.
        2016, "Training deep nets with sublinear memory cost"); an int k
        uses segments of k children.  It costs about one more forward pass
        (and saves nothing on XLA's CPU backend: ``purenet.remat`` says why).

    Returns:
      A Layer whose params are the tuple of its children's params.
    """
    name = "serial"
    layers = _resolve_default_inits(check_children(name, layers))
    segment = segment_length(name, remat, len(layers))

    def init(key, input_shape):
        shape, params = input_shape, []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)))):
            shape, p = init_child(layer, k, shape, f"[{i}]")
            params.append(p)
        return shape, tuple(params)

    def run(first, x, params, keys, train):
        for i, (p, k) in enumerate(zip(params, keys), start=first):
            with located(f"[{i}]"):
                y = layers[i].apply(p, x, key=k, train=train)
                check_promised_shape(layers[i], x, y)
            x = y
        return x

    def apply(params, x, *, key=None, train=False):
        params = check_sequence_params(name, params, len(layers))
        keys = split_key(key, len(layers), name)
        if segment is None:
            return run(0, x, params, keys, train)
        for first in range(0, len(layers), segment):
            part = slice(first, first + segment)
            recomputed = jax.checkpoint(functools.partial(run, first, train=train))
            x = recomputed(x, params[part], keys[part])
        return x

    def graph(params):
        check_sequence_params(name, params, len(layers))
        return chain(layers)

    model = Layer(init, apply, name=name, children=layers, reference=graph_reference(graph))
    _SERIAL_LAYERS.add(model)
    return model


def parallel(*layers: Layer) -> Layer:
    """Apply the i-th layer to the i-th input of a tuple; outputs a tuple.

    Returns:
      A Layer whose params are the tuple of its children's params.
    """
    name = "parallel"
    layers = check_children(name, layers)

    def init(key, input_shape):
        shapes = tuple_of_shapes(name, input_shape, len(layers))
        keys = jax.random.split(key, len(layers))
        results = [
            init_child(layer, k, s, f"[{i}]") for i, (layer, k, s) in enumerate(zip(layers, keys, shapes))
        ]
        return tuple(s for s, _ in results), tuple(p for _, p in results)

    def apply(params, xs, *, key=None, train=False):
        params = check_sequence_params(name, params, len(layers))
        xs = check_tuple(name, xs, len(layers))
        outputs = []
        for i, (layer, p, x, k) in enumerate(zip(layers, params, xs, split_key(key, len(layers)))):
            with located(f"[{i}]"):
                outputs.append(layer.apply(p, x, key=k, train=train))
        return tuple(outputs)

    def graph(params):
        check_sequence_params(name, params, len(layers))
        count = len(layers)
        picks = [
            Node(f"select[{i}]", select_reference(i, count), (0,), apply=select_apply(i))
            for i in range(count)
        ]
        children = [layer_node(layer, (1 + i,), i) for i, layer in enumerate(layers)]
        pack = Node(
            f"pack({count})", PACK_REFERENCE, tuple(range(1 + count, 1 + 2 * count)), apply=pack_apply
        )
        return Graph((*picks, *children, pack), gather=lambda grads: tuple(grads[i] for i in range(count)))

    return Layer(init, apply, name=name, children=layers, reference=graph_reference(graph))


def residual(block: Layer, proj_init: Initializer = jax.nn.initializers.lecun_normal()) -> Layer:
    """The skip connection: ``y = x + block(x)`` (He et al. 2016; the book's section 6.4).

    When the block changes the width from d to n, the skip path carries a
    learned linear projection, ``y = x @ proj_w + block(x)``.

    Args:
      block: the layer on the main path (usually a ``serial``).
      proj_init: initializer of the projection ``w`` (d, n), used only when
        the widths differ; LeCun normal keeps the skip path's variance.

    Returns:
      A Layer with params ``{"block": block_params}``, plus
      ``{"proj": {"w": (d, n)}}`` when the block changes the width.
    """
    name = "residual"
    (block,) = check_children(name, (block,))

    def init(key, input_shape):
        block_key, proj_key = jax.random.split(key)
        in_shape = normalize_shape(name, input_shape)
        out_shape, block_params = init_child(block, block_key, in_shape, "['block']")
        if not is_shape(out_shape) or len(out_shape) != len(in_shape) or out_shape[:-1] != in_shape[:-1]:
            raise ShapeError(
                name,
                f"the block must keep every axis but the last, got {in_shape} -> {out_shape}",
            )
        params = {"block": block_params}
        if out_shape[-1] != in_shape[-1]:
            params["proj"] = {"w": proj_init(proj_key, (in_shape[-1], out_shape[-1]))}
        return out_shape, params

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        if not isinstance(params, Mapping) or "block" not in params:
            raise ParamsError(
                name, f"expected a dict with key 'block' (and 'proj'), got {describe_tree(params)}"
            )
        with located("['block']"):
            y = block.apply(params["block"], x, key=key, train=train)
        return y + _skip(name, params, x, y.shape[-1])

    def graph(params):
        if not isinstance(params, Mapping) or not {"block"} <= set(params) <= {"block", "proj"}:
            raise ParamsError(
                name, f"expected a dict with key 'block' (and 'proj'), got {describe_tree(params)}"
            )
        block_node = layer_node(block, (0,), "block")
        add = Node("add", SUM_REFERENCE, (1, 0), apply=sum_apply)
        if "proj" not in params:  # x feeds both the block and the sum: two consumers
            return Graph((block_node, add), gather=dict)
        projection = Node("projection", _PROJECTION_REFERENCE, (0,), "proj", lambda p, x: x @ p["w"])
        return Graph((block_node, projection, add._replace(inputs=(1, 2))), gather=dict)

    return Layer(init, apply, name=name, children=(block,), reference=graph_reference(graph))


def _projection_forward(params, x):
    """The skip's y = x w; pullback: dJ/dw = x^T G, dJ/dx = G w^T."""

    def pullback(g):
        g_w, g_x = matmul_bprop(x, params["w"], g)
        return {"w": g_w}, g_x

    return x @ params["w"], pullback


def _projection_rop(params, x, v, r_x):
    """R{y} = R{x} w + x v_w; the R-pullback's cross terms as for Dense (``matmul_r_bprop``)."""

    def pullback(g, r_g):
        (g_w, g_x), (r_g_w, r_g_x) = matmul_r_bprop(x, params["w"], r_x, v["w"], g, r_g)
        return ({"w": g_w}, g_x), ({"w": r_g_w}, r_g_x)

    return x @ params["w"], r_x @ params["w"] + x @ v["w"], pullback


_PROJECTION_REFERENCE = Reference(_projection_forward, rop=_projection_rop)


def _skip(name: str, params: Mapping, x: jax.Array, width: int) -> jax.Array:
    """The residual's skip path: x itself, or its projection to ``width``."""
    if x.shape[-1] == width:
        if set(params) != {"block"}:
            raise ParamsError(
                name, f"the block keeps the width {width}, so expected keys ['block'], got {sorted(params)}"
            )
        return x
    if set(params) != {"block", "proj"}:
        raise ParamsError(
            name, f"the block changes the width, so expected keys ['block', 'proj'], got {sorted(params)}"
        )
    with located("['proj']"):
        check_params(name, params["proj"], {"w": (x.shape[-1], width)}, x.shape[-1])
    return x @ params["proj"]["w"]


def dense_block(*layers: Layer) -> Layer:
    """A DenseNet-style block (Huang et al. 2017) of feedforward layers.

    Layer j sees the concatenation of the block's input and the outputs of
    layers 0..j-1; the block outputs the concatenation of its input and all
    the layers' outputs, so its width is d + sum of the layers' widths.

    Returns:
      A Layer whose params are the tuple of its children's params.
    """
    name = "dense_block"
    layers = check_children(name, layers)

    def init(key, input_shape):
        in_shape = normalize_shape(name, input_shape)
        width = in_shape[-1]
        params = []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)))):
            out_shape, p = init_child(layer, k, with_width(in_shape, width), f"[{i}]")
            if not is_shape(out_shape) or tuple(out_shape[:-1]) != in_shape[:-1]:
                raise ShapeError(
                    name, f"layer {i} must keep every axis but the last, got {in_shape} -> {out_shape}"
                )
            width += out_shape[-1]
            params.append(p)
        return with_width(in_shape, width), tuple(params)

    def apply(params, x, *, key=None, train=False):
        params = check_sequence_params(name, params, len(layers))
        features = [check_input(name, x)]
        for i, (layer, p, k) in enumerate(zip(layers, params, split_key(key, len(layers)))):
            with located(f"[{i}]"):
                features.append(layer.apply(p, jnp.concatenate(features, axis=-1), key=k, train=train))
        return jnp.concatenate(features, axis=-1)

    def graph(params):
        check_sequence_params(name, params, len(layers))
        nodes, features = [], [0]  # ids of the nodes concatenated so far; 0 is the input
        for i, layer in enumerate(layers):
            if len(features) > 1:
                nodes.append(Node("concat", CONCAT_REFERENCE, tuple(features), apply=concat_apply))
                source = len(nodes)
            else:
                source = 0
            nodes.append(layer_node(layer, (source,), i))
            features.append(len(nodes))
        nodes.append(Node("concat", CONCAT_REFERENCE, tuple(features), apply=concat_apply))
        return Graph(tuple(nodes), gather=lambda grads: tuple(grads[i] for i in range(len(layers))))

    return Layer(init, apply, name=name, children=layers, reference=graph_reference(graph))


__all__ = ["check_children", "dense_block", "is_serial", "parallel", "residual", "serial"]
