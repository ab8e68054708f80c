"""Combinators: layers built from layers (stax's algebra, plus skips, dense blocks, repeat).

    serial(*ls)        composition; params: a tuple of the children's params
    parallel(*ls)      a tuple of inputs, one per child; params: a tuple
    fan_out(n)         x -> (x, ..., x); no params
    fan_in_sum()       (x_1, ..., x_n) -> sum; no params
    fan_in_concat()    (x_1, ..., x_n) -> concatenation; no params
    (serial and repeat take remat=True: recompute in segments instead of storing)
    residual(block)    y = x + block(x) (He et al. 2016); params: {"block": ...}
                       and, when the block changes the width, {"proj": {"w": (d, n)}}
    dense_block(*ls)   DenseNet-style (Huang et al. 2017); params: a tuple
    repeat(block, n)   n copies with stacked params, run under lax.scan

Every combinator names each child's place when a child raises
(``params[1]['block'][0]``), so an error deep inside a model says where.

Each combinator also describes itself as a computational graph of its
children (``purenet.reference.Graph``), from which Algorithm 6.2 composes its
hand-derived ``bprop``: gradients reaching a node from all its consumers are
summed.  The joining ops' own backward passes are one line each:

    fan_out        dJ/dx = sum_i dJ/dy_i            (x has n consumers)
    fan_in_sum     dJ/dx_i = dJ/dy
    fan_in_concat  dJ/dx_i = the slice of dJ/dy that x_i filled
    projection     y = x w:  dJ/dw = x^T G,  dJ/dx = G w^T
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import (
    ConfigError,
    Layer,
    ParamsError,
    ShapeError,
    check_input,
    check_no_params,
    check_params,
    check_sequence_params,
    describe_tree,
    init_child,
    is_shape,
    located,
    normalize_shape,
    quiet_init,
    require_positive_int,
    split_key,
    with_width,
)
from purenet.layers.dense import matmul_bprop
from purenet.reference import Graph, Node, chain, graph_reference


def _check_children(name: str, layers: tuple) -> tuple[Layer, ...]:
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
    """Give a weight layer left on the default initializer the one its next unit prefers.

    He initialization suits rectifiers, Glorot suits sigmoid and tanh: the
    choice belongs to the unit, but the weights live in the layer before it.
    """
    resolved = list(layers)
    for i in range(len(resolved) - 1):
        layer, unit = resolved[i], resolved[i + 1]
        if layer.with_init is not None and unit.preferred_init is not None:
            resolved[i] = layer.with_init(unit.preferred_init)
    return tuple(resolved)


def _tuple_of_shapes(name: str, input_shape, count: int | None = None) -> tuple:
    if is_shape(input_shape) or not isinstance(input_shape, (tuple, list)):
        raise ShapeError(name, f"expected a tuple of input shapes, got {input_shape!r}")
    if count is not None and len(input_shape) != count:
        raise ShapeError(name, f"expected a tuple of {count} input shapes, got {len(input_shape)}")
    return tuple(normalize_shape(name, s) for s in input_shape)


def _check_tuple(name: str, xs, count: int | None = None) -> tuple:
    """Check that a multi-input layer got a tuple (of ``count`` inputs, when given)."""
    if not isinstance(xs, (tuple, list)) or (count is not None and len(xs) != count):
        expected = "a tuple of inputs" if count is None else f"a tuple of {count} inputs"
        got = f"a {type(xs).__name__} of {len(xs)}" if isinstance(xs, (tuple, list)) else type(xs).__name__
        raise ShapeError(name, f"expected {expected}, got {got}")
    return tuple(xs)


def _tuple_input(name: str, xs) -> tuple:
    return tuple(check_input(name, x) for x in _check_tuple(name, xs))


def serial(*layers: Layer, remat: bool | int = False) -> Layer:
    """Compose layers: ``serial(f, g, h)(x) = h(g(f(x)))``.

    A weight layer left on its default initializer takes the one preferred
    by the unit right after it (Glorot before Sigmoid and Tanh, He otherwise).

    Args:
      layers: the layers, applied first to last.
      remat: trade compute for memory in back-propagation (the book's
        section 6.5.7): False keeps every child's activations for the
        backward pass; True groups the children into segments of about
        sqrt(n / 2.25) and keeps only each segment's input, recomputing the
        segment's inside when the backward pass reaches it (Chen et al.
        2016, "Training deep nets with sublinear memory cost"); an int k
        uses segments of k children.  It costs about one more forward pass.
        (On XLA's CPU backend the unrolled ``serial`` gains nothing: the
        CPU compiler expands ``jax.checkpoint``'s optimization barriers
        before its CSE and scheduling passes, which then merge the
        recomputation into the forward pass or run it early.  ``repeat``'s
        scan keeps the recomputation in its loop on every backend.)

    Returns:
      A Layer whose params are the tuple of its children's params.
    """
    name = "serial"
    layers = _resolve_default_inits(_check_children(name, layers))
    segment = _segment_length(name, remat, len(layers))

    def init(key, input_shape):
        shape, params = input_shape, []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)))):
            shape, p = init_child(layer, k, shape, f"[{i}]")
            params.append(p)
        return shape, tuple(params)

    def run(first, x, params, keys, train):
        for i, (p, k) in enumerate(zip(params, keys), start=first):
            with located(f"[{i}]"):
                x = layers[i].apply(p, x, key=k, train=train)
        return x

    def apply(params, x, *, key=None, train=False):
        params = check_sequence_params(name, params, len(layers))
        keys = split_key(key, len(layers))
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

    return Layer(init, apply, name=name, children=layers, **graph_reference(graph))


def parallel(*layers: Layer) -> Layer:
    """Apply the i-th layer to the i-th input of a tuple; outputs a tuple.

    Returns:
      A Layer whose params are the tuple of its children's params.
    """
    name = "parallel"
    layers = _check_children(name, layers)

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape, len(layers))
        keys = jax.random.split(key, len(layers))
        results = [
            init_child(layer, k, s, f"[{i}]") for i, (layer, k, s) in enumerate(zip(layers, keys, shapes))
        ]
        return tuple(s for s, _ in results), tuple(p for _, p in results)

    def apply(params, xs, *, key=None, train=False):
        params = check_sequence_params(name, params, len(layers))
        xs = _check_tuple(name, xs, len(layers))
        outputs = []
        for i, (layer, p, x, k) in enumerate(zip(layers, params, xs, split_key(key, len(layers)))):
            with located(f"[{i}]"):
                outputs.append(layer.apply(p, x, key=k, train=train))
        return tuple(outputs)

    def graph(params):
        check_sequence_params(name, params, len(layers))
        count = len(layers)
        picks = [Node(_select(i, count), (0,)) for i in range(count)]
        children = [Node(layer, (1 + i,), i) for i, layer in enumerate(layers)]
        pack = Node(_pack(count), tuple(1 + count + i for i in range(count)))
        return Graph((*picks, *children, pack), gather=lambda grads: tuple(grads[i] for i in range(count)))

    return Layer(init, apply, name=name, children=layers, **graph_reference(graph))


def _select(index: int, count: int) -> Layer:
    """The graph op taking input ``index`` of a tuple; its gradient is zero in the other slots."""
    name = f"select[{index}]"

    def bprop(params, xs, g):
        _check_tuple(name, xs, count)
        zeros = [jax.tree_util.tree_map(np.zeros_like, x) for x in xs]
        zeros[index] = g
        return (), tuple(zeros)

    return Layer(None, None, bprop=bprop, name=name, np_apply=lambda params, xs: xs[index])


def _pack(count: int) -> Layer:
    """The graph op gathering ``count`` nodes into one tuple (and its gradient back apart)."""
    return Layer(
        None,
        None,
        bprop=lambda params, xs, g: ((), tuple(g)),
        name=f"pack({count})",
        np_apply=lambda params, xs: tuple(xs),
    )


def fan_out(count: int) -> Layer:
    """Copy the input into a tuple of ``count`` identical outputs."""
    name = f"fan_out({count})"
    count = require_positive_int(name, "count", count)

    def init(key, input_shape):
        return (tuple(normalize_shape(name, input_shape)),) * count, ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        return (x,) * count

    def bprop(params, x, g):
        _check_tuple(name, g, count)
        total = g[0]
        for g_i in g[1:]:
            total = jax.tree_util.tree_map(np.add, total, g_i)
        return (), total

    return Layer(init, apply, bprop=bprop, name=name, np_apply=lambda params, x: (x,) * count)


def fan_in_sum() -> Layer:
    """Sum a tuple of inputs of one shape: how Algorithm 6.2 joins a node's consumers."""
    name = "fan_in_sum"

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape)
        if any(s != shapes[0] for s in shapes):
            raise ShapeError(name, f"expected inputs of one shape, got {list(shapes)}")
        return shapes[0], ()

    def apply(params, xs, *, key=None, train=False):
        check_no_params(name, params)
        xs = _tuple_input(name, xs)
        if any(x.shape != xs[0].shape for x in xs):
            raise ShapeError(name, f"expected inputs of one shape, got {[x.shape for x in xs]}")
        return sum(xs[1:], xs[0])

    return Layer(
        init,
        apply,
        bprop=lambda params, xs, g: ((), (g,) * len(xs)),
        name=name,
        np_apply=lambda params, xs: sum(xs[1:], xs[0]),
    )


def fan_in_concat() -> Layer:
    """Concatenate a tuple of inputs along the feature (last) axis."""
    name = "fan_in_concat"

    def init(key, input_shape):
        shapes = _tuple_of_shapes(name, input_shape)
        _check_concatenable(name, shapes)
        return with_width(shapes[0], sum(s[-1] for s in shapes)), ()

    def apply(params, xs, *, key=None, train=False):
        check_no_params(name, params)
        xs = _tuple_input(name, xs)
        _check_concatenable(name, [x.shape for x in xs])
        return jnp.concatenate(xs, axis=-1)

    def bprop(params, xs, g):
        boundaries = np.cumsum([np.shape(x)[-1] for x in xs])[:-1]
        return (), tuple(np.split(g, boundaries, axis=-1))

    return Layer(
        init,
        apply,
        bprop=bprop,
        name=name,
        np_apply=lambda params, xs: np.concatenate(xs, axis=-1),
    )


def _check_concatenable(name: str, shapes) -> None:
    leading = {tuple(s[:-1]) for s in shapes}
    if len(leading) > 1:
        raise ShapeError(
            name, f"expected inputs alike in all but the last axis, got {[tuple(s) for s in shapes]}"
        )


def residual(block: Layer, proj_init=jax.nn.initializers.lecun_normal()) -> Layer:
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
    (block,) = _check_children(name, (block,))

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
        block_node = Node(block, (0,), "block")
        if "proj" not in params:  # x feeds both the block and the sum: two consumers
            return Graph((block_node, Node(_ADD, (1, 0))), gather=dict)
        return Graph((block_node, Node(_PROJECTION, (0,), "proj"), Node(_ADD, (1, 2))), gather=dict)

    return Layer(init, apply, name=name, children=(block,), **graph_reference(graph))


def _projection_bprop(params, x, g):
    g_w, g_x = matmul_bprop(x, params["w"], g)
    return {"w": g_w}, g_x


_PROJECTION = Layer(
    None, None, bprop=_projection_bprop, name="projection", np_apply=lambda params, x: x @ params["w"]
)
_ADD = fan_in_sum()


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
    layers = _check_children(name, layers)

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
                nodes.append(Node(_CONCAT, tuple(features)))
                source = len(nodes)
            else:
                source = 0
            nodes.append(Node(layer, (source,), i))
            features.append(len(nodes))
        nodes.append(Node(_CONCAT, tuple(features)))
        return Graph(tuple(nodes), gather=lambda grads: tuple(grads[i] for i in range(len(layers))))

    return Layer(init, apply, name=name, children=layers, **graph_reference(graph))


_CONCAT = fan_in_concat()


def repeat(block: Layer, count: int, *, remat: bool | int = False) -> Layer:
    """``count`` copies of one block in sequence, with stacked params, applied with ``lax.scan``.

    Tracing and compiling see the block once, so compile time does not grow
    with ``count`` (BENCHMARKS.md: flat from depth 4 to 128).

    Args:
      block: a layer that keeps its input shape.
      count: the number of copies, >= 1.
      remat: as for ``serial``: True keeps only the input of each segment of
        about sqrt(count / 2.25) copies (a divisor of ``count``) and
        recomputes the segment in the backward pass (a scan over segments,
        each a checkpointed scan over copies), so activation memory grows as
        sqrt(count) rather than count; an int k uses segments of k copies
        (1: each copy recomputed on its own).

    Returns:
      A Layer whose params are the block's params with a leading axis of
      size ``count`` on every leaf.
    """
    name = f"repeat(n={count})"
    count = require_positive_int(name, "count", count)
    (block,) = _check_children(name, (block,))
    segment = _segment_length(name, remat, count)

    def init(key, input_shape):
        in_shape = normalize_shape(name, input_shape)
        keys = jax.random.split(key, count)
        out_shape, _ = init_child(block, keys[0], in_shape, "")
        if tuple(out_shape) != in_shape:
            raise ShapeError(
                name, f"the block must keep its input shape to be repeated, got {in_shape} -> {out_shape}"
            )
        with quiet_init():
            stacked = jax.vmap(lambda k: block.init(k, in_shape)[1])(keys)
        return in_shape, stacked

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        _check_stacked(name, params, count)
        leaves = jax.tree_util.tree_leaves(params)
        x = x.astype(jnp.result_type(x.dtype, *(leaf.dtype for leaf in leaves)))
        keys = None if key is None else jax.random.split(key, count)

        def step(h, copy):
            copy_params, copy_key = copy
            return block.apply(copy_params, h, key=copy_key, train=train).astype(h.dtype), None

        def copies(h, chunk):  # the chunk's stacked params give the scan its length
            return jax.lax.scan(step, h, chunk)[0]

        if segment is None or not leaves:
            return jax.lax.scan(step, x, (params, keys), length=count)[0]
        return _segmented_scan(copies, x, (params, keys), count, segment)

    def graph(params):
        _check_stacked(name, params, count)
        return Graph(
            tuple(Node(block, (i,), i) for i in range(count)),
            gather=lambda grads: jax.tree_util.tree_map(
                lambda *copies: np.stack(copies), *(grads[i] for i in range(count))
            ),
            take=lambda stacked, i: jax.tree_util.tree_map(lambda leaf: leaf[i], stacked),
        )

    return Layer(init, apply, name=name, children=(block,), **graph_reference(graph))


# Chen et al. 2016: with segments of k blocks, back-propagation holds n/k segment inputs plus one
# segment's activations, k c inputs' worth, least at k = sqrt(n / c).  A Dense-ReLU-Dense residual
# block keeps c = 2.25 input-sized arrays (its float32 input and activation, a boolean mask).
STORED_PER_BLOCK = 2.25


def _segment_length(name: str, remat, count: int) -> int | None:
    """The number of children per recomputed segment, or None when nothing is recomputed.

    ``remat=True`` takes the divisor k of ``count`` that minimizes
    count / k + STORED_PER_BLOCK * k: a divisor, so that no shorter segment
    is left over to run outside the scan (measured: 64 blocks in segments of
    4 hold 4.3x less than without remat on an H200, segments of 8 3.8x).
    """
    if remat is False:
        return None
    if remat is True:
        divisors = [k for k in range(1, count + 1) if count % k == 0]
        return min(divisors, key=lambda k: count / k + STORED_PER_BLOCK * k)
    return min(require_positive_int(name, "remat (False, True or a segment length)", remat), count)


def _segmented_scan(copies, x, stacked, count: int, segment: int):
    """``copies(x, stacked)`` run as checkpointed segments of ``segment`` copies each.

    The outer scan keeps only each segment's input; the backward pass
    recomputes a segment's inner scan, and so holds one segment's
    activations at a time.  A last, shorter segment takes the remainder.
    """
    whole = count // segment * segment
    head = jax.tree_util.tree_map(
        lambda a: a[:whole].reshape((whole // segment, segment, *a.shape[1:])), stacked
    )
    # prevent_cse=False inside scan, as jax.checkpoint's documentation advises: scan already keeps
    # the recomputation from being merged with the forward pass
    recomputed_in_scan = jax.checkpoint(copies, prevent_cse=False)
    h = jax.lax.scan(lambda h, chunk: (recomputed_in_scan(h, chunk), None), x, head)[0]
    if whole < count:
        h = jax.checkpoint(copies)(h, jax.tree_util.tree_map(lambda a: a[whole:], stacked))
    return h


def _check_stacked(name: str, params, count: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = jnp.shape(leaf)
        if not shape or shape[0] != count:
            raise ParamsError(
                name,
                f"expected stacked params with a leading axis of {count} copies, got shape {shape}",
                leaf=jax.tree_util.keystr(path),
            )


__all__ = [
    "dense_block",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "parallel",
    "repeat",
    "residual",
    "serial",
]
