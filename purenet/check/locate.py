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

from purenet.check.engine import jit_for_checks as _jit
from purenet.core import Layer, Params
from purenet.losses import loss_reference
from purenet.penalties import penalty_reference
from purenet.reference import (
    Graph,
    GraphPullback,
    checked_pullback,
    graph_backward,
    node_input,
    node_params,
    step,
)

_ROUNDING = 1e-12  # a floor relative to the node's largest entry: float64 rounding, never a derivation
_RTOL = 1e-9  # per node; the network-level reference tolerance is 1e-10 of a far larger sum


class Culprit(NamedTuple):
    """The node a failed check blames, and how it disagrees with JAX.

    Attributes:
      stage: ``"forward"``, ``"backward"``, ``"loss"`` or ``"penalty"``; for
        a second-order check also ``"R-forward"`` and ``"R-backward"``.
      name: the layer's (or loss's, or penalty's) name.
      path: where it sits: ``params[2]['block'][1]``; ``loss``; ``regularizer``.
      part: which of its results disagrees: ``value``, ``g_x``,
        ``g_params['w']``, ``g_outputs``; second order: ``R{value}``,
        ``R{g_x}``, ``R{g_params}['w']``, ``R{g_outputs}``.
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
        if self.stage == "R-forward":
            return (
                f"the R-forward of {self.name} at {self.path} disagrees with jax.jvp of its own apply: {at}"
            )
        if self.stage == "R-backward":
            return (
                f"the R-backward of {self.name} at {self.path} is wrong: its {self.part} differs from "
                f"jax.jvp of jax.vjp of its own apply by {at}; the leaves upstream of it inherit the error"
            )
        what = "value" if self.part == "value" else f"gradient ({self.part})"
        if self.part.startswith("R{"):
            what = f"Hessian-vector product ({self.part})"
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


class _Record(NamedTuple):
    """One node as the reference ran it: its inputs, its value or cotangent, and what it returned.

    Records are kept in post-order (a combinator after its nodes): a
    combinator's descendants are the records ``first`` to ``own - 1``.
    """

    name: str
    apply: Callable
    path: str
    params: Params
    x: Any
    value: Any  # forward: the reference's output; backward: the cotangent g fed to the pullback
    result: Any  # backward: the reference's (g_params, g_x); forward: None
    first: int
    own: int

    @property
    def composite(self) -> bool:
        return self.first < self.own


def _forward_records(name, apply, pullback, params, x, value, path, records: list) -> None:
    first = len(records)
    if isinstance(pullback, GraphPullback):
        for index, node in enumerate(pullback.graph.nodes):
            _forward_records(
                node.name,
                node.apply,
                pullback.pullbacks[index],
                node_params(pullback.graph, node, pullback.params),
                node_input(node, pullback.values),
                pullback.values[index + 1],
                _node_path(path, node, pullback.graph),
                records,
            )
    if apply is not None:
        records.append(_Record(name, apply, path, params, x, value, None, first, len(records)))


def _backward_records(name, apply, pullback, params, x, g, path, records: list):
    """The reference's backward sweep, recording each node's cotangent and result on the way."""
    first = len(records)
    if isinstance(pullback, GraphPullback):

        def pull(index, node, p, node_x, g_node):
            here = _node_path(path, node, pullback.graph)
            return _backward_records(
                node.name, node.apply, pullback.pullbacks[index], p, node_x, g_node, here, records
            )

        result = graph_backward(pullback.graph, pullback.params, pullback.values, pullback.pullbacks, g, pull)
    else:
        result = checked_pullback(name, params, x, pullback)(g)
    if apply is not None:
        records.append(_Record(name, apply, path, params, x, g, result, first, len(records)))
    return result


def _first_order_twin(stage: str) -> Callable:
    """A record's JAX side: ``apply(params, x)``, or for the backward ``jax.vjp`` of it fed g."""
    if stage == "backward":
        return lambda apply, p, x, g: jax.vjp(apply, p, x)[1](g)
    return lambda apply, p, x, g: apply(p, x)


def _jax_twins(records: list[_Record], twin: Callable) -> list:
    """Each record's JAX side, ``twin(apply, params, x, value)``, in one compiled call.

    One compilation for the whole search: eagerly, every primitive of every
    node would compile on its own for each new shape.
    """

    def twins(inputs):
        return [twin(record.apply, p, x, g) for record, (p, x, g) in zip(records, inputs)]

    return _jit(twins)([(r.params, r.x, r.value) for r in records])


def _blamed(records: list[_Record], stage: str, twin: Callable | None = None, compare=None) -> list[Culprit]:
    """The records that disagree with their JAX twins: the nodes first, combinators only if none does.

    A combinator is compared as a whole (a miswired graph) only when no node
    disagrees, and only if no combinator inside it already does.  ``twin``
    and ``compare`` default to the first order's (``purenet.check.locate_rop``
    passes the R-operator's).
    """
    twin = twin or _first_order_twin(stage)
    compare = compare or _compare
    nodes = [r for r in records if not r.composite]
    culprits = [c for r, t in zip(nodes, _jax_twins(nodes, twin)) if (c := compare(r, t, stage))]
    if culprits:
        return culprits
    composites, blamed = [r for r in records if r.composite], []
    twins = _jax_twins(composites, twin) if composites else []
    for record, twin_value in zip(composites, twins):
        if any(record.first <= inner.own < record.own for inner, _ in blamed):
            continue
        culprit = compare(record, twin_value, stage)
        if culprit is not None:
            blamed.append((record, culprit))
    return [culprit for _, culprit in blamed]


def _compare(record: _Record, twin: Any, stage: str) -> Culprit | None:
    if stage == "forward":
        bad = _worst(record.value, twin)
        return None if bad is None else Culprit(stage, record.name, record.path, "value", bad[1], bad[2])
    for part, ours, theirs in (("g_params", record.result[0], twin[0]), ("g_x", record.result[1], twin[1])):
        bad = _worst(ours, theirs)
        if bad is not None:
            label = "g_x" if part == "g_x" else f"g_params{bad[0]}"
            return Culprit(stage, record.name, record.path, label, bad[1], bad[2])
    return None


def _node_path(path: str, node, graph) -> str:
    if node.params_key is None:
        return f"{path} (its {node.name} node)"
    if graph.take is not Graph._field_defaults["take"]:  # repeat: copy k is slice k of every stacked leaf
        return f"{path} (copy {node.params_key} of the stacked params)"
    return path + step(node.params_key)


def _layer_apply(layer: Layer) -> Callable:
    return lambda params, x: layer.apply(params, x)


def locate_in_layer(layer: Layer, params: Params, x: Any, g_out: Any, path: str = "params") -> list[Culprit]:
    """What disagrees inside ``layer``'s reference at (params, x), the backward fed ``g_out``."""
    value, pullback = layer.reference.run(params, x, owner=layer.name)
    found = _search_forward(layer, pullback, params, x, value, path)
    return found or _search_backward(layer, pullback, params, x, g_out, path)


def _search_forward(layer: Layer, pullback, params, x, value, path: str) -> list[Culprit]:
    records: list[_Record] = []
    _forward_records(layer.name, _layer_apply(layer), pullback, params, x, value, path, records)
    return _blamed(records, "forward")[:1]


def _search_backward(layer: Layer, pullback, params, x, g, path: str) -> list[Culprit]:
    records: list[_Record] = []
    _backward_records(layer.name, _layer_apply(layer), pullback, params, x, g, path, records)
    return _blamed(records, "backward")


def locate_in_cost(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Any,
    jax_loss: Callable,
    regularizer: Any,
    forward_passed: bool = False,
) -> list[Culprit]:
    """What disagrees in the cost J = L(model(x), y) (+ penalty): forward, loss, penalty, backward.

    All arguments are float64; ``loss`` carries the reference and ``jax_loss``
    is its JAX twin (the same object for a purenet ``Loss``).  The nodes'
    forward is searched only when the network's did not agree as a whole.
    """
    outputs, pullback = model.reference.run(params, x, owner=model.name)
    found = [] if forward_passed else _search_forward(model, pullback, params, x, outputs, "params")
    if found:
        return found
    value, g_outputs = loss_reference(loss).value_and_grad(outputs, targets)
    of_loss, of_penalty = _jax_cost_parts(jax_loss, regularizer, outputs, targets, params)
    found = _blame("loss", _name(jax_loss), "loss", (value, g_outputs), of_loss)
    if regularizer is not None:
        penalty = penalty_reference(regularizer).value_and_grad(params)
        found += _blame("penalty", _name(regularizer), "regularizer", penalty, of_penalty, "g_params")
    return found or _search_backward(model, pullback, params, x, g_outputs, "params")


def _jax_cost_parts(jax_loss: Callable, regularizer: Any, outputs, targets, params) -> tuple[Any, Any]:
    """JAX's value and gradient of the loss (at the outputs) and of the penalty, in one compiled call."""

    def parts(outputs, targets, params):
        penalty = None if regularizer is None else jax.value_and_grad(regularizer)(params)
        return jax.value_and_grad(jax_loss)(outputs, targets), penalty

    return _jit(parts)(outputs, targets, params)


def _blame(stage: str, name: str, path: str, ours, theirs, gradient: str = "g_outputs") -> list[Culprit]:
    """The loss or penalty, when its reference value or gradient differs from JAX's."""
    for part, a, b in (("value", ours[0], theirs[0]), (gradient, ours[1], theirs[1])):
        bad = _worst(a, b)
        if bad is not None:
            label = part if part == "value" else part + bad[0]
            return [Culprit(stage, name, path, label, bad[1], bad[2])]
    return []


def _name(fn: Any) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


__all__ = ["Culprit", "locate_in_cost", "locate_in_layer"]
