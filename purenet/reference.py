"""Network-level reference backprop in NumPy float64: the book's Algorithm 6.2, composed.

Nothing here calls JAX's autodiff (no grad, vjp or jvp): the reference is a
second, independent derivation of every gradient the library produces, which
``purenet.check`` compares with ``jax.grad`` and with finite differences.

A combinator describes itself as a small computational graph (``Graph``)
whose nodes are its children and a few joining ops (sum, concatenation,
tuple selection, a projection), each carrying a ``Reference``.
``graph_reference`` turns that graph into the combinator's own
``Reference``: a forward pass that records every node's value and pullback,
returning a pullback (``GraphPullback``) that sweeps the nodes in reverse
topological order, a
node's gradient being the sum, over its consumers, of what each consumer's
pullback sends back (the grad_table).  Each node's forward runs once per
pass: the pullbacks close over the values the forward computed.  Every
pullback's result is checked against the node's params and input with
``check_like`` before it is used, so a wrong backward is refused at the node
that returned it.

``reference_gradient`` adds the loss and the regularizer: the gradient of
the total cost J = L(f(x; theta), y) + lambda Omega(theta) with respect to
every parameter and the input.  The book's Algorithms 6.3 and 6.4,
transcribed for a plain MLP, are in ``purenet.textbook``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import (
    InputTypeError,
    Layer,
    MissingReferenceError,
    Params,
    Reference,
    check_like,
    describe_tree,
    located,
)
from purenet.losses import loss_reference
from purenet.penalties import penalty_reference
from purenet.shapes import as_float64
from purenet.validate import require_finite

# --------------------------------------------------------------------------
# Algorithm 6.2 over a combinator's graph
# --------------------------------------------------------------------------


class Node(NamedTuple):
    """One operation of a combinator's graph.

    Attributes:
      name: how errors name the node (the child layer's name, or the op's).
      reference: the node's ``Reference``; ``None`` for a child layer that
        has none (refused, naming it, when the graph runs).
      inputs: ids of earlier nodes it consumes; node 0 is the graph's input
        and node i + 1 is ``Graph.nodes[i]``.  A node with several inputs
        receives them as a tuple, and its pullback returns a tuple.
      params_key: where the node's params sit in the combinator's params
        (``2`` for ``params[2]``, ``"block"``), or ``None`` for none.
      apply: the node's JAX twin, ``apply(params, x) -> y``, against which
        ``purenet.check`` compares the node alone to say where a failed
        check went wrong; ``None`` where there is none.
    """

    name: str
    reference: Reference | None
    inputs: tuple[int, ...]
    params_key: Hashable | None = None
    apply: Callable[[Params, Any], Any] | None = None


def layer_node(layer: Layer, inputs: tuple[int, ...], params_key: Hashable | None = None) -> Node:
    """A node that runs a child layer's reference (its JAX twin: the layer's apply in eval mode)."""
    return Node(layer.name, layer.reference, inputs, params_key, lambda params, x: layer.apply(params, x))


def _take_item(params: Params, key: Hashable) -> Params:
    return params[key]


class Graph(NamedTuple):
    """A combinator as a computational graph, nodes in topological order; the last is the output.

    Attributes:
      nodes: the nodes; node i + 1 is ``nodes[i]``, node 0 the input.
      gather: ``gather({key: g_params})`` builds the combinator's params
        gradient from its nodes'.
      take: ``take(params, key)``, a node's params from the combinator's.
    """

    nodes: tuple[Node, ...]
    gather: Callable[[dict], Params]
    take: Callable[[Params, Hashable], Params] = _take_item


def step(key: Hashable | None) -> str:
    """How a params key extends a path: ``[2]``, ``['block']``; nothing for None."""
    if key is None:
        return ""
    return f"[{key!r}]" if isinstance(key, str) else f"[{key}]"


def require_reference(name: str, reference: Reference | None) -> Reference:
    """``reference``, or a MissingReferenceError naming the layer that lacks one."""
    if not isinstance(reference, Reference):
        raise MissingReferenceError(
            name,
            "has no hand-derived reference; build it with Layer(..., reference=Reference(forward)) "
            "(or Reference.from_bprop(np_apply, bprop)), or check it with check_layer first",
        )
    return reference


def node_params(graph: Graph, node: Node, params: Params) -> Params:
    return () if node.params_key is None else graph.take(params, node.params_key)


def node_input(node: Node, values: list) -> Any:
    if len(node.inputs) == 1:
        return values[node.inputs[0]]
    return tuple(values[i] for i in node.inputs)


# pull(index, node, node_params, node_x, g_node) -> (g_params, g_x): one node's step of the sweep
Pull = Callable[[int, Node, Params, Any, Any], tuple[Params, Any]]


def checked_pullback(name: str, params: Params, x: Any, pullback: Callable) -> Callable:
    """``pullback`` with its result checked like ``(params, x)`` before anyone uses it."""

    def checked(g):
        result = pullback(g)
        if not isinstance(result, tuple) or len(result) != 2:
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else describe_tree(result)
            message = f"the reference's backward must return (g_params, g_x), got {got}"
            raise MissingReferenceError(name, message)
        check_like(result[0], params, layer=name, what="the backward's g_params")
        check_like(result[1], x, layer=name, what="the backward's g_x")
        return result

    return checked


def _add(a: Any, b: Any) -> Any:
    """Sum two gradients of one node (arrays, or tuples of them for tuple-valued nodes)."""
    if a is None:
        return b
    return jax.tree_util.tree_map(np.add, a, b)


def graph_forward(graph: Graph, params: Params, x: Any) -> tuple[list, list]:
    """The forward pass of Algorithm 6.2: every node's value (node 0 the input) and raw pullback."""
    values, pullbacks = [x], []
    for node in graph.nodes:
        with located(step(node.params_key)):
            reference = require_reference(node.name, node.reference)
            p_node, node_x = node_params(graph, node, params), node_input(node, values)
            value, pullback = reference.run(p_node, node_x, owner=node.name)
        values.append(value)
        pullbacks.append(pullback)
    return values, pullbacks


def graph_backward(
    graph: Graph, params: Params, values: list, pullbacks: list, g_out: Any, pull: Pull | None = None
) -> tuple[Params, Any]:
    """The backward sweep of Algorithm 6.2.

    ``grad_table[i]`` accumulates dJ/d(node i) from each consumer of node i;
    visiting nodes in reverse topological order means every consumer of a node
    has reported by the time the node itself is visited.  ``pull`` runs each
    node's pullback (``purenet.check`` passes one that also compares it with
    JAX); by default the node's checked pullback.

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
        p_node, node_x = node_params(graph, node, params), node_input(node, values)
        with located(step(node.params_key)):
            if pull is None:
                g_p, g_in = checked_pullback(node.name, p_node, node_x, pullbacks[index])(g_node)
            else:
                g_p, g_in = pull(index, node, p_node, node_x, g_node)
        if node.params_key is not None:
            g_params[node.params_key] = g_p
        g_inputs = (g_in,) if len(node.inputs) == 1 else tuple(g_in)
        for input_id, g in zip(node.inputs, g_inputs, strict=True):
            grad_table[input_id] = _add(grad_table[input_id], g)
    g_x = grad_table[0]
    if g_x is None:
        g_x = jax.tree_util.tree_map(np.zeros_like, values[0])
    return graph.gather(g_params), g_x


class GraphPullback:
    """A combinator's pullback, closed over its graph's forward values.

    Calling it runs Algorithm 6.2's backward sweep; ``kink_margin()`` reads
    the distance to the nearest kink off the same recorded values, asking a
    nested combinator's own pullback rather than running its forward again.
    """

    def __init__(self, graph: Graph, params: Params, values: list, pullbacks: list):
        self.graph, self.params, self.values, self.pullbacks = graph, params, values, pullbacks

    def __call__(self, g_out: Any) -> tuple[Params, Any]:
        return graph_backward(self.graph, self.params, self.values, self.pullbacks, g_out)

    def kink_margin(self) -> float:
        """The smallest distance to a kink over the graph's nodes (inf when all are smooth)."""
        margin = np.inf
        for node, pullback in zip(self.graph.nodes, self.pullbacks):
            if isinstance(pullback, GraphPullback):
                margin = min(margin, pullback.kink_margin())
            elif node.reference.kinks is not None:
                p_node = node_params(self.graph, node, self.params)
                margin = min(margin, node.reference.kinks(p_node, node_input(node, self.values)))
        return float(margin)


def graph_reference(build: Callable[[Params], Graph]) -> Reference:
    """A combinator's ``Reference`` from its graph.

    Args:
      build: ``build(params) -> Graph``; the params are passed because a
        graph may depend on them (a residual's skip has a projection or not).

    Returns:
      A ``Reference`` whose forward runs every node once and returns the
      graph's ``GraphPullback``, and whose kinks are the nodes' smallest.
    """

    def forward(params, x):
        graph = build(params)
        values, pullbacks = graph_forward(graph, params, x)
        return values[-1], GraphPullback(graph, params, values, pullbacks)

    return Reference(forward, lambda params, x: forward(params, x)[1].kink_margin())


def chain(layers: Sequence[Layer]) -> Graph:
    """The graph of ``serial``: node i + 1 applies layer i to node i; params are a tuple."""
    nodes = tuple(layer_node(layer, (i,), i) for i, layer in enumerate(layers))
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


def params_template(model: Layer, x: Any) -> Params:
    """The params ``model.init`` builds for inputs like ``x`` (an array, or a tuple of them), shapes only."""
    return _init_template(model, _input_shapes(model.name, x))


def _input_shapes(owner: str, x: Any) -> Any:
    """``x``'s shapes with the batch axis as -1; anything but an array or a tuple of arrays is refused."""
    if isinstance(x, (tuple, list)):
        return tuple(_input_shapes(owner, part) for part in x)
    if not hasattr(x, "shape") and not isinstance(x, (int, float)):
        raise InputTypeError(owner, f"expected an array input (or a tuple of arrays), got {describe_tree(x)}")
    return (-1, *np.shape(x)[1:])


@functools.lru_cache(maxsize=256)
def _init_template(model: Layer, shapes: Any) -> Params:
    # Cached per model and input shapes: tracing init costs more than a small reference pass.
    return jax.eval_shape(lambda key: model.init(key, shapes)[1], jax.random.PRNGKey(0))


def reference_gradient(
    model: Layer,
    params: Params,
    x: Any,
    targets: Any,
    loss: Callable | Reference,
    regularizer: Any = None,
) -> ReferenceResult:
    """The gradient of J = L(model(x), y) + lambda Omega(params) by the hand-derived reference alone.

    Args:
      model: a layer whose every part carries a ``Reference``.
      params: checked against what ``model.init`` builds for ``x`` (tree,
        shapes, dtype kinds), as ``apply`` would; converted to float64.
      x, targets: one batch; converted to float64.
      loss: a purenet ``Loss`` (it carries its reference), or a loss's
        ``Reference`` itself (``LossReference(value_and_grad)``).
      regularizer: ``None``, or a penalty carrying a ``Reference``
        (``purenet.L2Penalty``, ``purenet.L1Penalty``).

    Returns:
      A ``ReferenceResult``; no JAX autodiff is involved.
    """
    return reference_pass(model, params, x, targets, loss, regularizer)[0]


def reference_pass(
    model: Layer, params: Params, x: Any, targets: Any, loss: Callable | Reference, regularizer: Any = None
) -> tuple[ReferenceResult, Callable[[], float]]:
    """``reference_gradient``'s result and ``margin()``, the network's kink distance, from one forward."""
    reference = require_reference(model.name, model.reference)
    check_like(params, params_template(model, x), layer=model.name)
    require_finite(f"reference_gradient({model.name})", "params", params)
    require_finite(f"reference_gradient({model.name})", "x", x)
    params, x, targets = as_float64(params), as_float64(x), as_float64(targets)
    outputs, pullback = reference.run(params, x, owner=model.name)
    value, g_outputs = loss_reference(loss).value_and_grad(outputs, targets)
    g_params, g_x = checked_pullback(model.name, params, x, pullback)(g_outputs)
    if regularizer is not None:
        penalty, penalty_grad = penalty_reference(regularizer).value_and_grad(params)
        value = value + penalty
        g_params = jax.tree_util.tree_map(np.add, g_params, penalty_grad)
    result = ReferenceResult(float(value), outputs, g_params, g_x)
    return result, lambda: _margin(reference, pullback, params, x)


def _margin(reference: Reference, pullback: Callable, params: Params, x: Any) -> float:
    if isinstance(pullback, GraphPullback):  # read off the recorded forward: nothing runs again
        return pullback.kink_margin()
    return float(np.inf) if reference.kinks is None else float(reference.kinks(params, x))


def kink_margin(model: Layer, params: Params, x: Any) -> float:
    """How far the model's forward pass at (params, x) is from its nearest kink (inf if smooth)."""
    if model.reference is None or model.reference.kinks is None:
        return float(np.inf)
    return float(model.reference.kinks(as_float64(params), as_float64(x)))


__all__ = [
    "Graph",
    "GraphPullback",
    "Node",
    "ReferenceResult",
    "chain",
    "checked_pullback",
    "graph_backward",
    "graph_forward",
    "graph_reference",
    "kink_margin",
    "layer_node",
    "node_input",
    "node_params",
    "params_template",
    "reference_gradient",
    "reference_pass",
    "require_reference",
    "step",
]
