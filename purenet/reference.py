"""Network-level reference backprop in NumPy float64: the book's Algorithms 6.2 to 6.4.

Nothing here calls JAX's autodiff (no grad, vjp or jvp): the reference is a
second, independent derivation of every gradient the library produces, which
``purenet.check`` compares with ``jax.grad`` and with finite differences.

Two references, each checking the other:

* **Algorithm 6.2, composed.**  A combinator describes itself as a small
  computational graph (``Graph``) whose nodes are its children and a few
  joining ops (sum, concatenation, tuple selection).  ``graph_reference``
  turns that graph into the combinator's ``np_apply`` and ``bprop``: a
  forward pass that records every node's value, then a backward sweep in
  reverse topological order in which a node's gradient is the sum, over its
  consumers, of what each consumer's ``bprop`` sends back (the grad_table).
  Since every layer's ``bprop`` is hand-derived, so is the whole network's.
* **Algorithms 6.3 and 6.4, transcribed.**  ``textbook_mlp_gradient`` runs
  the book's forward and backward passes for a plain MLP, written out as the
  book writes them (g <- g * f'(a); grad_b = g; grad_W = g h^T; g <- W^T g),
  vectorized over the batch.

``reference_gradient`` adds the loss and the regularizer: the gradient of the
total cost J = L(f(x; theta), y) + lambda Omega(theta) with respect to every
parameter and the input.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import (
    Layer,
    MissingReferenceError,
    Params,
    ParamsError,
    as_float64,
    check_sequence_params,
    located,
)

# --------------------------------------------------------------------------
# Algorithm 6.2 over a combinator's graph
# --------------------------------------------------------------------------


class Node(NamedTuple):
    """One operation of a combinator's graph.

    Attributes:
      op: the layer computing the node (a child, or a joining op); it must
        have ``np_apply`` and ``bprop``.
      inputs: ids of earlier nodes it consumes; node 0 is the graph's input
        and node i + 1 is ``Graph.nodes[i]``.  A node with several inputs
        receives them as a tuple, and its ``bprop`` returns a tuple.
      params_key: where the node's params sit in the combinator's params
        (``2`` for ``params[2]``, ``"block"``), or ``None`` for none.
    """

    op: Layer
    inputs: tuple[int, ...]
    params_key: Hashable | None = None


def _take_item(params: Params, key: Hashable) -> Params:
    return params[key]


class Graph(NamedTuple):
    """A combinator as a computational graph, nodes in topological order; the last is the output.

    Attributes:
      nodes: the nodes; node i + 1 is ``nodes[i]``, node 0 the input.
      take: ``take(params, key)``, a node's params from the combinator's.
      gather: ``gather({key: g_params})`` builds the combinator's params
        gradient from its nodes'.
    """

    nodes: tuple[Node, ...]
    gather: Callable[[dict], Params]
    take: Callable[[Params, Hashable], Params] = _take_item


def _step(key: Hashable) -> str:
    return f"[{key!r}]" if isinstance(key, str) else f"[{key}]"


def _require_reference(layer: Layer) -> None:
    if layer.np_apply is None or layer.bprop is None:
        raise MissingReferenceError(
            layer.name,
            "has no hand-derived reference (np_apply and bprop); build it with "
            "Layer(..., np_apply=..., bprop=...), or check it with check_layer first",
        )


def _node_params(graph: Graph, node: Node, params: Params) -> Params:
    return () if node.params_key is None else graph.take(params, node.params_key)


def _node_input(node: Node, values: list) -> Any:
    if len(node.inputs) == 1:
        return values[node.inputs[0]]
    return tuple(values[i] for i in node.inputs)


def graph_forward(graph: Graph, params: Params, x: Any) -> list:
    """The forward pass of Algorithm 6.2: every node's value, node 0 being the input."""
    values = [x]
    for node in graph.nodes:
        step = "" if node.params_key is None else _step(node.params_key)
        with located(step):
            _require_reference(node.op)
            values.append(node.op.np_apply(_node_params(graph, node, params), _node_input(node, values)))
    return values


def _add(a: Any, b: Any) -> Any:
    """Sum two gradients of one node (arrays, or tuples of them for tuple-valued nodes)."""
    if a is None:
        return b
    return jax.tree_util.tree_map(np.add, a, b)


def graph_backward(graph: Graph, params: Params, values: list, g_out: Any) -> tuple[Params, Any]:
    """The backward sweep of Algorithm 6.2.

    ``grad_table[i]`` accumulates dJ/d(node i) from each consumer of node i;
    visiting nodes in reverse topological order means every consumer of a node
    has reported by the time the node itself is visited.

    Returns:
      ``(g_params, g_x)``: the combinator's params gradient and dJ/dx.
    """
    grad_table: list[Any] = [None] * len(values)
    grad_table[-1] = g_out
    g_params: dict = {}
    for index in reversed(range(len(graph.nodes))):
        node, node_id = graph.nodes[index], index + 1
        g_node = grad_table[node_id]
        if g_node is None:  # nothing downstream consumes this node
            g_node = jax.tree_util.tree_map(np.zeros_like, values[node_id])
        node_params = _node_params(graph, node, params)
        step = "" if node.params_key is None else _step(node.params_key)
        with located(step):
            g_p, g_in = node.op.bprop(node_params, _node_input(node, values), g_node)
        if node.params_key is not None:
            g_params[node.params_key] = g_p
        g_inputs = (g_in,) if len(node.inputs) == 1 else tuple(g_in)
        for input_id, g in zip(node.inputs, g_inputs, strict=True):
            grad_table[input_id] = _add(grad_table[input_id], g)
    g_x = grad_table[0]
    if g_x is None:
        g_x = jax.tree_util.tree_map(np.zeros_like, values[0])
    return graph.gather(g_params), g_x


def _graph_kinks(graph: Graph, params: Params, values: list) -> float:
    """The smallest distance to a kink over the graph's nodes."""
    margin = np.inf
    for node in graph.nodes:
        if node.op.kinks is not None:
            node_params = _node_params(graph, node, params)
            margin = min(margin, node.op.kinks(node_params, _node_input(node, values)))
    return float(margin)


def graph_reference(build: Callable[[Params], Graph]) -> dict[str, Callable]:
    """A combinator's ``np_apply``, ``bprop`` and ``kinks`` from its graph.

    Args:
      build: ``build(params) -> Graph``; the params are passed because a
        graph may depend on them (a residual's skip has a projection or not).

    Returns:
      Keyword arguments for ``Layer``: ``np_apply``, ``bprop`` and ``kinks``.
    """

    def np_apply(params, x):
        return graph_forward(build(params), params, x)[-1]

    def bprop(params, x, g_out):
        graph = build(params)
        return graph_backward(graph, params, graph_forward(graph, params, x), g_out)

    def kinks(params, x):
        graph = build(params)
        return _graph_kinks(graph, params, graph_forward(graph, params, x))

    return {"np_apply": np_apply, "bprop": bprop, "kinks": kinks}


def chain(layers: Sequence[Layer]) -> Graph:
    """The graph of ``serial``: node i + 1 applies layer i to node i; params are a tuple."""
    nodes = tuple(Node(layer, (i,), i) for i, layer in enumerate(layers))
    return Graph(nodes, gather=lambda grads: tuple(grads[i] for i in range(len(layers))))


# --------------------------------------------------------------------------
# The whole cost: network, loss and regularizer
# --------------------------------------------------------------------------


class ReferenceResult(NamedTuple):
    """The reference pass over a network and its cost, all NumPy float64.

    Attributes:
      cost: J = L(outputs, targets) (+ lambda Omega(params)).
      outputs: the network's outputs f(x; theta).
      g_params: dJ/dparams, in the params' structure.
      g_x: dJ/dx.
    """

    cost: float
    outputs: Any
    g_params: Params
    g_x: Any


def reference_gradient(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Callable,
    regularizer: Any = None,
) -> ReferenceResult:
    """The gradient of J = L(model(x), y) + lambda Omega(params) by the hand-derived reference alone.

    Args:
      model: a layer whose every part has ``np_apply`` and ``bprop``.
      params, x, targets: as for the JAX path; converted to float64.
      loss: a purenet loss (one with a reference, see
        ``purenet.losses.loss_reference``) or a ``LossReference``.
      regularizer: ``None``, or a penalty with ``reference_grad``
        (``purenet.L2Penalty``, ``purenet.L1Penalty``).

    Returns:
      A ``ReferenceResult``; no JAX autodiff is involved.
    """
    from purenet.losses import loss_reference, penalty_reference

    _require_reference(model)
    params, x, targets = as_float64(params), as_float64(x), as_float64(targets)
    outputs = model.np_apply(params, x)
    value, g_outputs = loss_reference(loss).value_and_grad(outputs, targets)
    g_params, g_x = model.bprop(params, x, g_outputs)
    if regularizer is not None:
        penalty, penalty_grad = penalty_reference(regularizer)
        value = value + penalty(params)
        g_params = jax.tree_util.tree_map(np.add, g_params, penalty_grad(params))
    return ReferenceResult(float(value), outputs, g_params, g_x)


def kink_margin(model: Layer, params: Params, x: Any) -> float:
    """How far the model's forward pass at (params, x) is from its nearest kink (inf if smooth)."""
    if model.kinks is None:
        return float(np.inf)
    return float(model.kinks(as_float64(params), as_float64(x)))


# --------------------------------------------------------------------------
# Algorithms 6.3 and 6.4, transcribed for a plain MLP
# --------------------------------------------------------------------------


def _mlp_units(model: Layer, params: Params) -> list[Layer | None]:
    """Check that the model is serial(Dense, unit, ..., Dense[, unit]); the unit after each Dense."""
    layers = model.children
    if not layers or model.name != "serial":
        raise MissingReferenceError(
            model.name, "Algorithm 6.4 needs serial(Dense, unit, Dense, unit, ..., Dense[, unit])"
        )
    params = check_sequence_params(model.name, params, len(layers))
    units: list[Layer | None] = []
    for i in range(0, len(layers), 2):
        p = params[i]
        if not (isinstance(p, Mapping) and set(p) == {"w", "b"} and np.ndim(p["w"]) == 2):
            raise ParamsError(
                layers[i].name,
                "Algorithm 6.4 expects a Dense layer ({'w': (d, n), 'b': (n,)}) here",
                leaf=f"[{i}]",
            )
        unit = layers[i + 1] if i + 1 < len(layers) else None
        if unit is not None and (params[i + 1] != () or unit.bprop is None):
            raise MissingReferenceError(
                unit.name, f"Algorithm 6.4 expects a parameter-free unit with a reference at params[{i + 1}]"
            )
        units.append(unit)
    return units


def textbook_mlp_gradient(
    model: Layer, params: Params, x: Any, targets: Any, loss: Callable, regularizer: Any = None
) -> tuple[float, Params]:
    """The book's Algorithms 6.3 and 6.4, as written, for ``serial(Dense, unit, ..., Dense[, unit])``.

    Forward (Algorithm 6.3), for k = 1..l:  a(k) = b(k) + W(k) h(k-1),  h(k) = f(a(k)).
    Backward (Algorithm 6.4): g <- grad_yhat J, then for k = l..1:

        g <- g * f'(a(k))
        grad_b(k) J = g + lambda grad_b(k) Omega
        grad_W(k) J = g h(k-1)^T + lambda grad_W(k) Omega
        g <- W(k)^T g

    Rows are examples here, so W(k) h is written h @ w with w = W(k)^T
    (purenet's layout) and the batch sum of g h^T is h^T @ g.  A Dense layer
    with no unit after it has f the identity.  f'(a) is the unit's own
    hand-derived derivative, read off its ``bprop`` with an upstream gradient
    of ones.

    Returns:
      ``(J, g_params)``, g_params in the model's params structure.
    """
    from purenet.losses import loss_reference, penalty_reference

    units = _mlp_units(model, params)
    params, x, targets = as_float64(params), as_float64(x), as_float64(targets)
    pairs = list(zip(params[::2], units))  # (the Dense params, the unit after them)
    # Algorithm 6.3: the forward pass, keeping a(k) and h(k).
    h = [x]
    a = []
    for p, unit in pairs:
        a.append(p["b"] + h[-1] @ p["w"])
        h.append(a[-1] if unit is None else unit.np_apply((), a[-1]))
    cost, g = loss_reference(loss).value_and_grad(h[-1], targets)
    penalty_grad = None
    if regularizer is not None:
        penalty, penalty_grad = penalty_reference(regularizer)
        cost = cost + penalty(params)
        penalty_grad = penalty_grad(params)
    # Algorithm 6.4: the backward pass.
    grads: list[Any] = [()] * len(model.children)
    for k in reversed(range(len(pairs))):
        p, unit = pairs[k]
        if unit is not None:
            f_prime = unit.bprop((), a[k], np.ones_like(a[k]))[1]
            g = g * f_prime
        grad_b = g.sum(axis=0)
        grad_w = h[k].T @ g
        if penalty_grad is not None:
            grad_b = grad_b + penalty_grad[2 * k]["b"]
            grad_w = grad_w + penalty_grad[2 * k]["w"]
        grads[2 * k] = {"w": grad_w, "b": grad_b}
        g = g @ p["w"].T
    return float(cost), tuple(grads)


__all__ = [
    "Graph",
    "Node",
    "ReferenceResult",
    "chain",
    "graph_backward",
    "graph_forward",
    "graph_reference",
    "kink_margin",
    "reference_gradient",
    "textbook_mlp_gradient",
]
