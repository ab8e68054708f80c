"""Where a failed check went wrong: the first node whose own derivation disagrees with JAX.

A wrong backward at one node corrupts the gradient of every leaf upstream of
it, so a network-level check fails on many leaves and names none.  To say
where, the check walks the reference's recorded computation the way the
reference itself runs it (the book's Algorithm 6.2):

1. the forward pass, comparing each node's reference value with its own JAX
   ``apply`` at the inputs the reference recorded;
2. the loss and the penalty, their reference value and gradient against JAX's;
3. the backward sweep, comparing each node's hand-derived pullback, fed the
   cotangent the sweep itself delivered, with ``jax.vjp`` of the node's own
   ``apply`` at its recorded inputs.

Every comparison is local (both sides get the node's own inputs and
cotangent), so a node disagrees only if its own derivation does, however
wrong the nodes after it are.  A combinator is searched inside first and
compared as a whole only when none of its nodes disagrees (a miswired graph).
The first disagreeing node in sweep order is named, with its params path and
which of its results (its value, ``g_x``, or a param's gradient) is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import Layer, Params
from purenet.losses import loss_reference
from purenet.penalties import penalty_reference
from purenet.reference import GraphPullback, checked_pullback, graph_backward, node_input, node_params, step

_ROUNDING = 1e-12  # a floor relative to the node's largest entry: float64 rounding, never a derivation


class Culprit(NamedTuple):
    """The node a failed check blames, and how it disagrees with JAX.

    Attributes:
      stage: ``"forward"``, ``"backward"``, ``"loss"`` or ``"penalty"``.
      name: the layer's (or loss's, or penalty's) name.
      path: where it sits: ``params[2]['block'][1]``; ``loss``; ``regularizer``.
      part: which of its results disagrees: ``value``, ``g_x``,
        ``g_params['w']``, ``g_outputs``.
      rel_error: the worst difference, relative to JAX's largest entry there.
      where: the index of the worst entry.
    """

    stage: str
    name: str
    path: str
    part: str
    rel_error: float
    where: str

    def __str__(self) -> str:
        at = f"{self.rel_error:.1e} relative (worst at {self.where})"
        if self.stage == "forward":
            return f"the forward of {self.name} at {self.path} disagrees with its JAX apply: {at}"
        if self.stage == "backward":
            return (
                f"the backward of {self.name} at {self.path} is wrong: its {self.part} differs from "
                f"jax.vjp of its own apply by {at}; the leaves upstream of it inherit the error"
            )
        what = "value" if self.part == "value" else f"gradient ({self.part})"
        return (
            f"the reference of the {self.stage} {self.name} is wrong: its {what} differs from JAX's by {at}"
        )


def _worst(reference: Any, expected: Any) -> tuple[str, float, str] | None:
    """The worst leaf where ``reference`` and JAX's ``expected`` differ beyond rounding, or None."""
    pairs = jax.tree_util.tree_flatten_with_path(expected)[0]
    ours = jax.tree_util.tree_leaves(reference)
    scale = max((float(np.max(np.abs(np.asarray(e)), initial=0.0)) for _, e in pairs), default=0.0)
    for (path, e), r in zip(pairs, ours):
        e, r = np.asarray(e, np.float64), np.asarray(r, np.float64)
        diff = np.abs(r - e) if r.shape == e.shape else np.full(e.shape or (1,), np.inf)
        leaf_scale = float(np.max(np.abs(e), initial=0.0))
        allowed = _RTOL * leaf_scale + _ROUNDING * scale
        if diff.size and not float(np.max(diff)) <= allowed:
            flat = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)))
            where = str(tuple(int(i) for i in np.unravel_index(flat, e.shape))) if e.shape else "()"
            return jax.tree_util.keystr(path), float(diff.flat[flat]) / max(leaf_scale, 1e-300), where
    return None


_RTOL = 1e-9  # per node; the network-level reference tolerance is 1e-10 of a far larger sum


class _Walk:
    """One search through a reference's recorded computation; ``found`` collects what disagrees."""

    def __init__(self) -> None:
        self.found: list[Culprit] = []

    def forward(self, name: str, apply: Callable | None, pullback, params, x, value, path: str) -> None:
        if isinstance(pullback, GraphPullback):
            before = len(self.found)
            for index, node in enumerate(pullback.graph.nodes):
                here = _node_path(path, node)
                self.forward(
                    node.name,
                    node.apply,
                    pullback.pullbacks[index],
                    node_params(pullback.graph, node, pullback.params),
                    node_input(node, pullback.values),
                    pullback.values[index + 1],
                    here,
                )
                if len(self.found) > before:
                    return
        if apply is not None:
            bad = _worst(value, apply(params, x))
            if bad is not None:
                self.found.append(Culprit("forward", name, path, "value", bad[1], bad[2]))

    def backward(self, name: str, apply: Callable | None, pullback, params, x, g, path: str):
        before = len(self.found)
        if isinstance(pullback, GraphPullback):
            graph = pullback.graph

            def pull(index, node, p, node_x, g_node):
                return self.backward(
                    node.name,
                    node.apply,
                    pullback.pullbacks[index],
                    p,
                    node_x,
                    g_node,
                    _node_path(path, node),
                )

            result = graph_backward(graph, pullback.params, pullback.values, pullback.pullbacks, g, pull)
        else:
            result = checked_pullback(name, params, x, pullback)(g)
        if apply is not None and len(self.found) == before:
            _, vjp = jax.vjp(apply, params, x)
            for part, ours, theirs in (("g_params", result[0], None), ("g_x", result[1], None)):
                theirs = vjp(g)[0 if part == "g_params" else 1]
                bad = _worst(ours, theirs)
                if bad is not None:
                    label = "g_x" if part == "g_x" else f"g_params{bad[0]}"
                    self.found.append(Culprit("backward", name, path, label, bad[1], bad[2]))
                    break
        return result


def _node_path(path: str, node) -> str:
    if node.params_key is None:
        return f"{path} (its {node.name} node)"
    return path + step(node.params_key)


def _layer_apply(layer: Layer) -> Callable:
    return lambda params, x: layer.apply(params, x)


def locate_in_layer(layer: Layer, params: Params, x: Any, g_out: Any, path: str = "params") -> list[Culprit]:
    """What disagrees inside ``layer``'s reference at (params, x), the backward fed ``g_out``."""
    walk = _Walk()
    value, pullback = layer.reference.run(params, x, owner=layer.name)
    walk.forward(layer.name, _layer_apply(layer), pullback, params, x, value, path)
    if not walk.found:
        walk.backward(layer.name, _layer_apply(layer), pullback, params, x, g_out, path)
    return walk.found


def locate_in_cost(
    model: Layer, params: Params, x: Any, targets: Any, loss: Any, jax_loss: Callable, regularizer: Any
) -> list[Culprit]:
    """What disagrees in the cost J = L(model(x), y) (+ penalty): forward, loss, penalty, backward.

    All arguments are float64; ``loss`` carries the reference and ``jax_loss``
    is its JAX twin (the same object for a purenet ``Loss``).
    """
    walk = _Walk()
    apply = _layer_apply(model)
    outputs, pullback = model.reference.run(params, x, owner=model.name)
    walk.forward(model.name, apply, pullback, params, x, outputs, "params")
    if walk.found:
        return walk.found
    value, g_outputs = loss_reference(loss).value_and_grad(outputs, targets)
    jax_value, jax_g = jax.value_and_grad(jax_loss)(outputs, targets)
    _blame(walk, "loss", _name(jax_loss), "loss", (value, g_outputs), (jax_value, jax_g), "g_outputs")
    if regularizer is not None:
        penalty = penalty_reference(regularizer).value_and_grad(params)
        expected = jax.value_and_grad(regularizer)(params)
        _blame(walk, "penalty", _name(regularizer), "regularizer", penalty, expected, "g_params")
    if not walk.found:
        walk.backward(model.name, apply, pullback, params, x, g_outputs, "params")
    return walk.found


def _blame(walk: _Walk, stage: str, name: str, path: str, ours, theirs, gradient: str) -> None:
    """Record the loss or penalty when its reference value or gradient differs from JAX's."""
    for part, a, b in (("value", ours[0], theirs[0]), (gradient, ours[1], theirs[1])):
        bad = _worst(a, b)
        if bad is not None:
            label = part if part == "value" else part + bad[0]
            walk.found.append(Culprit(stage, name, path, label, bad[1], bad[2]))
            return


def _name(fn: Any) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or repr(fn)


__all__ = ["Culprit", "locate_in_cost", "locate_in_layer"]
