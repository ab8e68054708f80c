"""Where a failed second-order check went wrong: the first node whose own R-pass disagrees with JAX.

The same walk as ``purenet.check.locate``, over the R-operator's passes
(Pearlmutter 1994) as the reference runs them:

1. the R-forward, comparing each node's (value, R{value}) with
   ``jax.jvp`` of its own ``apply`` at the inputs and directions the
   reference recorded;
2. the loss and the penalty: value, gradient and Hessian-vector product
   against ``jax.grad`` and ``jax.jvp`` of it;
3. the R-backward sweep, comparing each node's two lanes, fed the
   (g, R{g}) the sweep itself delivered, with ``jax.jvp`` of ``jax.vjp`` of
   its own ``apply``: the derivative of its pullback along its inputs'
   directions, which is where a missing f'' term or a missing cross term
   between weights and inputs shows.

Every comparison is local, so a node disagrees only if its own derivation
does; a combinator is blamed as a whole only when none of its nodes is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.check.engine import jit_for_checks
from purenet.check.locate import Culprit, _blamed, _name, _node_path, _Record, _worst
from purenet.core import Layer, Params
from purenet.loss_record import loss_reference
from purenet.penalties import penalty_reference
from purenet.reference import GraphRPullback, checked_r_pullback, node_input, node_params


def _r_forward_twin(apply, p, x, value):
    """(y, R{y}) = jax.jvp of apply at (params, x) along (v, R{x})."""
    (params, v), (inputs, r_inputs) = p, x
    return jax.jvp(apply, (params, inputs), (v, r_inputs))


def _r_backward_twin(apply, p, x, g):
    """((g_params, g_x), (R{g_params}, R{g_x})): jax.jvp of the pullback along (v, R{x}, R{g})."""
    (params, v), (inputs, r_inputs), (g_out, r_g_out) = p, x, g

    def pullback(params, inputs, g_out):
        return jax.vjp(apply, params, inputs)[1](g_out)

    return jax.jvp(pullback, (params, inputs, g_out), (v, r_inputs, r_g_out))


def _compare(record: _Record, twin: Any, stage: str) -> Culprit | None:
    """The first of the record's results (first order before R) that disagrees with its twin."""
    if stage == "R-forward":
        parts = (("value", record.value[0], twin[0]), ("R{value}", record.value[1], twin[1]))
    else:
        (g_p, g_x), (r_g_p, r_g_x) = record.result
        (t_p, t_x), (t_rp, t_rx) = twin
        parts = (
            ("g_params", g_p, t_p),
            ("g_x", g_x, t_x),
            ("R{g_params}", r_g_p, t_rp),
            ("R{g_x}", r_g_x, t_rx),
        )
    for part, ours, theirs in parts:
        bad = _worst(ours, theirs)
        if bad is not None:
            label = part + bad[0] if "params" in part else part
            return Culprit(stage, record.name, record.path, label, bad[1], bad[2])
    return None


def _r_forward_records(name, apply, pullback, p, x, value, path, records: list) -> None:
    """The R-forward as recorded: ``p`` is (params, v), ``x`` (x, R{x}), ``value`` (y, R{y})."""
    first = len(records)
    if isinstance(pullback, GraphRPullback):
        graph = pullback.graph
        for index, node in enumerate(graph.nodes):
            _r_forward_records(
                node.name,
                node.apply,
                pullback.pullbacks[index],
                (node_params(graph, node, pullback.params), node_params(graph, node, pullback.v)),
                (node_input(node, pullback.values), node_input(node, pullback.r_values)),
                (pullback.values[index + 1], pullback.r_values[index + 1]),
                _node_path(path, node, graph),
                records,
            )
    if apply is not None:
        records.append(_Record(name, apply, path, p, x, value, None, first, len(records)))


def _r_backward_records(name, apply, pullback, p, x, g, path, records: list):
    """The R-backward sweep, recording each node's (g, R{g}) and both lanes it returned."""
    first = len(records)
    if isinstance(pullback, GraphRPullback):
        graph = pullback.graph

        def rpull(index, node, p_node, node_x, g_node):
            here = _node_path(path, node, graph)
            v_node, r_x = node_params(graph, node, pullback.v), node_input(node, pullback.r_values)
            inner = pullback.pullbacks[index]
            return _r_backward_records(
                node.name, node.apply, inner, (p_node, v_node), (node_x, r_x), g_node, here, records
            )

        result = pullback(*g, rpull=rpull)
    else:
        result = checked_r_pullback(name, p[0], x[0], pullback)(*g)
    if apply is not None:
        records.append(_Record(name, apply, path, p, x, g, result, first, len(records)))
    return result


def locate_in_layer_rop(layer: Layer, params, x, v, r_x, g, r_g) -> list[Culprit]:
    """What disagrees inside ``layer``'s R-passes at (params, x) along (v, R{x}), fed (g, R{g})."""
    outputs, r_outputs, pullback = layer.reference.run_rop(params, x, v, r_x, owner=layer.name)
    return _search_forward(layer, pullback, (params, v), (x, r_x), (outputs, r_outputs)) or _search_backward(
        layer, pullback, (params, v), (x, r_x), (g, r_g)
    )


def _apply(layer: Layer) -> Callable:
    return lambda params, inputs: layer.apply(params, inputs)


def _search_forward(layer: Layer, pullback, p, x, value) -> list[Culprit]:
    records: list[_Record] = []
    _r_forward_records(layer.name, _apply(layer), pullback, p, x, value, "params", records)
    return _blamed(records, "R-forward", _r_forward_twin, _compare)[:1]


def _search_backward(layer: Layer, pullback, p, x, g) -> list[Culprit]:
    records: list[_Record] = []
    _r_backward_records(layer.name, _apply(layer), pullback, p, x, g, "params", records)
    return _blamed(records, "R-backward", _r_backward_twin, _compare)


def locate_second_order(
    model: Layer, params: Params, x: Any, targets: Any, loss: Any, regularizer: Any, v: Params, kind: str
) -> list[Culprit]:
    """What disagrees in the R-passes of J = L(model(x), y) (+ penalty): R-forward, loss, penalty, R-backward.

    All arguments are float64; ``loss`` is a purenet ``Loss`` or a loss
    carrying both its reference and its JAX function.
    """
    r_x = jax.tree_util.tree_map(np.zeros_like, x)
    outputs, r_outputs, pullback = model.reference.run_rop(params, x, v, r_x, owner=model.name)
    found = _search_forward(model, pullback, (params, v), (x, r_x), (outputs, r_outputs))
    if found:
        return found
    _, _, loss_pullback = loss_reference(loss).run_rop(outputs, targets, r_outputs, owner=_name(loss))
    g_outputs, h_r_outputs = loss_pullback(1.0, 0.0)
    found = _blame_loss(loss, outputs, targets, r_outputs, (g_outputs, h_r_outputs))
    if regularizer is not None:
        found += _blame_penalty(regularizer, params, v)
    if found:
        return found
    g = (g_outputs, h_r_outputs) if kind == "hessian" else (h_r_outputs, np.zeros_like(h_r_outputs))
    return _search_backward(model, pullback, (params, v), (x, r_x), g)


def _jax_gradient_and_hvp(f: Callable, point: Any, direction: Any) -> tuple[Any, Any]:
    """JAX's gradient of ``f`` at ``point`` and its derivative along ``direction``, compiled once here."""
    return jit_for_checks(lambda p, d: jax.jvp(jax.grad(f), (p,), (d,)))(point, direction)


def _blame_loss(loss: Any, outputs, targets, r_outputs, ours: tuple) -> list[Culprit]:
    """The loss, when its reference gradient or Hessian-vector product differs from JAX's."""
    theirs = _jax_gradient_and_hvp(lambda o: loss(o, targets), outputs, r_outputs)
    return _first_bad("loss", _name(loss), "loss", ours, theirs, ("g_outputs", "R{g_outputs}"))


def _blame_penalty(regularizer: Any, params, v) -> list[Culprit]:
    """The penalty, when its reference gradient or Hessian-vector product differs from JAX's."""
    _, _, pullback = penalty_reference(regularizer).run_rop(params, v, owner="regularizer")
    theirs = _jax_gradient_and_hvp(regularizer, params, v)
    return _first_bad(
        "penalty", _name(regularizer), "regularizer", pullback(1.0, 0.0), theirs, ("g_params", "R{g_params}")
    )


def _first_bad(stage: str, name: str, path: str, ours, theirs, parts: tuple[str, str]) -> list[Culprit]:
    for part, a, b in zip(parts, ours, theirs):
        bad = _worst(a, b)
        if bad is not None:
            return [Culprit(stage, name, path, part + bad[0], bad[1], bad[2])]
    return []


__all__ = ["locate_in_layer_rop", "locate_second_order"]
