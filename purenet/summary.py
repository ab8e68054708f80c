"""Initializing a combinator's children with their place recorded, and ``summary``'s table.

Combinators initialize each child through ``init_child``, which locates the
child's errors (``params[1]['block']``) and, while ``summary`` is recording,
notes the child's name, output shape and parameter count.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from purenet.core import ConfigError, Layer, Params, ParamsError, Shape, describe_tree, located


@dataclasses.dataclass
class SummaryRow:
    """One line of ``summary``: a layer's place, name, output shape and parameter count."""

    depth: int
    path: str
    name: str
    output_shape: Any
    params: int


@dataclasses.dataclass
class _Recorder:
    rows: list[SummaryRow] = dataclasses.field(default_factory=list)
    depth: int = 0
    path: str = ""
    quiet: bool = False


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "purenet_summary_recorder", default=None
)


def count_params(params: Params) -> int:
    """The number of scalar parameters in a params pytree (of arrays; anything else is refused).

    Examples:
      >>> import jax
      >>> import purenet as pn
      >>> _, params = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dense(2)).init(jax.random.PRNGKey(0), (-1, 4))
      >>> pn.count_params(params)  # (4 * 8 + 8) + (8 * 2 + 2)
      58
    """
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not hasattr(leaf, "shape") and not isinstance(leaf, (int, float, np.number)):
            raise ParamsError(
                "count_params",
                f"expected a params pytree of arrays, got {describe_tree(leaf)}",
                leaf=jax.tree_util.keystr(path),
            )
        total += int(np.prod(np.shape(leaf)))
    return total


def init_child(child: Layer, key: jax.Array, input_shape: Shape, step: str) -> tuple[Shape, Params]:
    """Initialize a combinator's child at ``step``: locate its errors, record its summary row."""
    recorder = _RECORDER.get()
    with located(step):
        if recorder is None or recorder.quiet:
            return child.init(key, input_shape)
        row = len(recorder.rows)
        outer_path = recorder.path
        recorder.rows.append(SummaryRow(recorder.depth, outer_path + step, child.name, None, 0))
        recorder.depth += 1
        recorder.path = outer_path + step
        try:
            output_shape, params = child.init(key, input_shape)
        finally:
            recorder.depth -= 1
            recorder.path = outer_path
        recorder.rows[row].output_shape = output_shape
        recorder.rows[row].params = count_params(params)
        return output_shape, params


@contextlib.contextmanager
def quiet_init() -> Iterator[None]:
    """Record no summary rows inside (for the copies ``repeat`` stacks)."""
    recorder = _RECORDER.get()
    if recorder is None:
        yield
        return
    previous, recorder.quiet = recorder.quiet, True
    try:
        yield
    finally:
        recorder.quiet = previous


def summary_rows(layer: Layer, input_shape: Shape, key: jax.Array | None = None) -> list[SummaryRow]:
    """Initialize ``layer`` and return a row per layer in the model, outermost first.

    Only shapes are computed (``jax.eval_shape``), so the key's value does not
    matter; ``None`` uses ``PRNGKey(0)``, documented as such, and no random
    numbers are drawn.
    """
    if not isinstance(layer, Layer):
        raise ConfigError("summary", f"expected a purenet Layer, got {type(layer).__name__}")
    recorder = _Recorder()
    token = _RECORDER.set(recorder)
    try:
        key = jax.random.PRNGKey(0) if key is None else key
        jax.eval_shape(lambda k: init_child(layer, k, input_shape, "")[1], key)
    finally:
        _RECORDER.reset(token)
    return recorder.rows


def summary(layer: Layer, input_shape: Shape, key: jax.Array | None = None) -> str:
    """A table of every layer's output shape and parameter count.

    Args:
      layer: the model.
      input_shape: its input shape, batch axis as -1.
      key: PRNG key for the shape-only initialization; its value cannot
        change the table, so ``None`` (``PRNGKey(0)``) is as good as any.

    Returns:
      The table as a string, one row per layer (children indented under their
      combinator, whose count includes theirs) and the total at the bottom.

    Examples:
      >>> import purenet as pn
      >>> print(pn.summary(pn.serial(pn.Dense(8), pn.ReLU(), pn.Dense(2)), (-1, 4)))
      layer       params path  output shape  params
      ---------------------------------------------
      serial      params       (-1, 2)           58
        Dense(8)  [0]          (-1, 8)           40
        ReLU      [1]          (-1, 8)            0
        Dense(2)  [2]          (-1, 2)           18
      ---------------------------------------------
      total parameters: 58
    """
    rows = summary_rows(layer, input_shape, key)
    names = ["  " * r.depth + r.name for r in rows]
    paths = [r.path or "params" for r in rows]
    shapes = [str(r.output_shape) for r in rows]
    counts = [f"{r.params:,}" for r in rows]
    headers = ("layer", "params path", "output shape", "params")
    columns = [names, paths, shapes, counts]
    widths = [max(len(h), *(len(c) for c in col)) for h, col in zip(headers, columns)]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:-1], widths)]
        return "  ".join([*left, cells[-1].rjust(widths[-1])])

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    body = [line(cells) for cells in zip(*columns)]
    total = f"total parameters: {rows[0].params:,}"
    return "\n".join([line(headers), rule, *body, rule, total])
