"""``repeat``: n copies of one block with stacked params, run under ``lax.scan``.

    repeat(block, n)   params: the block's params with a leading axis of n on every leaf

Its reference unrolls the copies into a chain of n nodes (Algorithm 6.2),
each taking its slice of the stacked params; the gradient is stacked back.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from purenet.combinators import check_children
from purenet.core import Layer, ShapeError, check_like
from purenet.reference import Graph, graph_reference, layer_node
from purenet.remat import segment_length, segmented_scan
from purenet.shapes import check_input, normalize_shape, require_positive_int
from purenet.summary import init_child, quiet_init


def repeat(block: Layer, count: int, *, remat: bool | int = False) -> Layer:
    """``count`` copies of one block in sequence, with stacked params, applied with ``lax.scan``.

    Tracing and compiling see the block once, so compile time does not grow
    with ``count`` (benchmarks/compile.py; RESULTS.md: flat from depth 4 to 128).

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
    (block,) = check_children(name, (block,))
    segment = segment_length(name, remat, count)
    note = f" (stacked params with a leading axis of {count} copies)"

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

    @functools.lru_cache(maxsize=64)
    def block_params(feature_shape):
        """What ``block.init`` builds for one copy, as shapes and dtypes: the stacked layout's unit."""
        return jax.eval_shape(lambda k: block.init(k, (-1, *feature_shape))[1], jax.random.PRNGKey(0))

    def apply(params, x, *, key=None, train=False):
        x = check_input(name, x)
        features = x.shape[1:] if x.ndim >= 2 else x.shape  # one example, under vmap, has no batch axis
        check_like(params, block_params(features), layer=name, leading=count, context=note)
        return _scan_copies(block, count, segment, params, x, key, train)

    def graph(params):
        per_copy = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), params)
        check_like(params, per_copy, layer=name, leading=count, context=note)
        return _unrolled(block, count)

    return Layer(init, apply, name=name, children=(block,), reference=graph_reference(graph))


def _scan_copies(block: Layer, count: int, segment: int | None, params, x, key, train: bool):
    """The copies applied in turn by ``lax.scan`` over the stacked params (in segments, with remat)."""
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
    return segmented_scan(copies, x, (params, keys), count, segment)


def _unrolled(block: Layer, count: int) -> Graph:
    """The reference's graph: a chain of ``count`` copies, each on its slice of the stacked params."""
    return Graph(
        tuple(layer_node(block, (i,), i) for i in range(count)),
        gather=lambda grads: jax.tree_util.tree_map(
            lambda *copies: np.stack(copies), *(grads[i] for i in range(count))
        ),
        take=lambda stacked, i: jax.tree_util.tree_map(lambda leaf: leaf[i], stacked),
    )


__all__ = ["repeat"]
