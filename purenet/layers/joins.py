"""Joins: the parameter-free layers that split and merge tuples of inputs (stax's FanOut/FanIn).

    fan_out(n)        x -> (x, ..., x)
    fan_in_sum()      (x_1, ..., x_n) -> x_1 + ... + x_n
    fan_in_concat()   (x_1, ..., x_n) -> concatenation on the last axis

Hand-derived backward passes, one line each (Algorithm 6.2's joins):

    fan_out        dJ/dx = sum_i dJ/dy_i            (x has n consumers)
    fan_in_sum     dJ/dx_i = dJ/dy
    fan_in_concat  dJ/dx_i = the slice of dJ/dy that x_i filled

Every join is linear in its inputs and has no params, so its R-operator
pass (second order) is the join itself on R{x} and its pullback of R{G}
(``Reference.linear``): no curvature of its own.

The combinators' graphs reuse these references (and ``select``/``pack``,
which take one entry of a tuple and gather nodes into one) as their joining
nodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import Layer, Reference, ShapeError
from purenet.shapes import (
    check_input,
    check_no_params,
    is_shape,
    normalize_shape,
    require_positive_int,
    with_width,
)


def tuple_of_shapes(name: str, input_shape, count: int | None = None) -> tuple:
    if is_shape(input_shape) or not isinstance(input_shape, (tuple, list)):
        raise ShapeError(name, f"expected a tuple of input shapes, got {input_shape!r}")
    if count is not None and len(input_shape) != count:
        raise ShapeError(name, f"expected a tuple of {count} input shapes, got {len(input_shape)}")
    return tuple(normalize_shape(name, s) for s in input_shape)


def check_tuple(name: str, xs, count: int | None = None) -> tuple:
    """Check that a multi-input layer got a tuple (of ``count`` inputs, when given)."""
    if not isinstance(xs, (tuple, list)) or (count is not None and len(xs) != count):
        expected = "a tuple of inputs" if count is None else f"a tuple of {count} inputs"
        got = f"a {type(xs).__name__} of {len(xs)}" if isinstance(xs, (tuple, list)) else type(xs).__name__
        raise ShapeError(name, f"expected {expected}, got {got}")
    return tuple(xs)


def tuple_input(name: str, xs) -> tuple:
    return tuple(check_input(name, x) for x in check_tuple(name, xs))


def fan_out(count: int) -> Layer:
    """Copy the input into a tuple of ``count`` identical outputs."""
    name = f"fan_out({count})"
    count = require_positive_int(name, "count", count)

    def init(key, input_shape):
        return (tuple(normalize_shape(name, input_shape)),) * count, ()

    def apply(params, x, *, key=None, train=False):
        check_no_params(name, params)
        return (x,) * count

    def forward(params, x):
        def pullback(g):  # x has ``count`` consumers: dJ/dx = sum_i dJ/dy_i
            check_tuple(name, g, count)
            total = g[0]
            for g_i in g[1:]:
                total = jax.tree_util.tree_map(np.add, total, g_i)
            return (), total

        return (x,) * count, pullback

    return Layer(init, apply, name=name, reference=Reference.linear(forward))


def fan_in_sum() -> Layer:
    """Sum a tuple of inputs of one shape: how Algorithm 6.2 joins a node's consumers."""
    name = "fan_in_sum"

    def init(key, input_shape):
        shapes = tuple_of_shapes(name, input_shape)
        if any(s != shapes[0] for s in shapes):
            raise ShapeError(name, f"expected inputs of one shape, got {list(shapes)}")
        return shapes[0], ()

    def apply(params, xs, *, key=None, train=False):
        check_no_params(name, params)
        xs = tuple_input(name, xs)
        if any(x.shape != xs[0].shape for x in xs):
            raise ShapeError(name, f"expected inputs of one shape, got {[x.shape for x in xs]}")
        return sum(xs[1:], xs[0])

    return Layer(init, apply, name=name, reference=SUM_REFERENCE)


# dJ/dx_i = dJ/dy for every summand.
SUM_REFERENCE = Reference.linear(lambda params, xs: (sum(xs[1:], xs[0]), lambda g: ((), (g,) * len(xs))))


def fan_in_concat() -> Layer:
    """Concatenate a tuple of inputs along the feature (last) axis."""
    name = "fan_in_concat"

    def init(key, input_shape):
        shapes = tuple_of_shapes(name, input_shape)
        _check_concatenable(name, shapes)
        return with_width(shapes[0], sum(s[-1] for s in shapes)), ()

    def apply(params, xs, *, key=None, train=False):
        check_no_params(name, params)
        xs = tuple_input(name, xs)
        _check_concatenable(name, [x.shape for x in xs])
        return jnp.concatenate(xs, axis=-1)

    return Layer(init, apply, name=name, reference=CONCAT_REFERENCE)


def _concat_forward(params, xs):
    """Concatenation on the last axis; each x_i gets back the slice of dJ/dy it filled."""
    boundaries = np.cumsum([np.shape(x)[-1] for x in xs])[:-1]
    return np.concatenate(xs, axis=-1), lambda g: ((), tuple(np.split(g, boundaries, axis=-1)))


CONCAT_REFERENCE = Reference.linear(_concat_forward)


def _check_concatenable(name: str, shapes) -> None:
    leading = {tuple(s[:-1]) for s in shapes}
    if len(leading) > 1:
        raise ShapeError(
            name, f"expected inputs alike in all but the last axis, got {[tuple(s) for s in shapes]}"
        )


def select_reference(index: int, count: int) -> Reference:
    """The graph op taking input ``index`` of a tuple; its gradient is zero in the other slots."""

    def forward(params, xs):
        def pullback(g):
            check_tuple(f"select[{index}]", xs, count)
            zeros = [jax.tree_util.tree_map(np.zeros_like, x) for x in xs]
            zeros[index] = g
            return (), tuple(zeros)

        return xs[index], pullback

    return Reference.linear(forward)


# The graph op gathering nodes into one tuple, and its gradient back apart.
PACK_REFERENCE = Reference.linear(lambda params, xs: (tuple(xs), lambda g: ((), tuple(g))))


# The graph ops' JAX twins, against which a check compares each op alone (purenet.check.locate).
def sum_apply(params, xs):
    return sum(xs[1:], xs[0])


def concat_apply(params, xs):
    return jnp.concatenate(xs, axis=-1)


def pack_apply(params, xs):
    return tuple(xs)


def select_apply(index: int):
    return lambda params, xs: xs[index]


__all__ = [
    "CONCAT_REFERENCE",
    "concat_apply",
    "pack_apply",
    "select_apply",
    "sum_apply",
    "PACK_REFERENCE",
    "SUM_REFERENCE",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "check_tuple",
    "select_reference",
    "tuple_of_shapes",
]
