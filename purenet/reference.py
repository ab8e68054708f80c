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

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import (
    Layer,
    MissingReferenceError,
    Params,
    Reference,
    check_like,
    describe_tree,
    located,
)

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

    ``pull`` runs each node's pullback (``purenet.check`` passes one that
    also compares it with JAX); by default the node's checked pullback.

    Returns:
      ``(g_params, g_x)``: the combinator's params gradient and dJ/dx.
    """

    def pull_node(index, node, p_node, node_x, g_node):
        if pull is None:
            g_p, g_in = checked_pullback(node.name, p_node, node_x, pullbacks[index])(g_node[0])
        else:
            g_p, g_in = pull(index, node, p_node, node_x, g_node[0])
        return (g_p,), (g_in,)

    (g_params,), (g_x,) = sweep(graph, params, values, (g_out,), pull_node)
    return g_params, g_x


def sweep(graph: Graph, params: Params, values: list, g_out: tuple, pull_node: Callable) -> tuple:
    """Algorithm 6.2's backward sweep over one or more lanes of gradients at once.

    A lane is one gradient flowing back: the first order has one (dJ/d.),
    the R-operator's second pass two (dJ/d. and R{dJ/d.}), and every lane is
    summed over a node's consumers alike.  ``grad_table[i]`` accumulates
    node i's lanes from each consumer; visiting nodes in reverse topological
    order means every consumer of a node has reported by the time the node
    itself is visited.

    Args:
      g_out: the output's gradient in each lane.
      pull_node: ``pull_node(index, node, node_params, node_x, g_node)`` ->
        ``(g_params per lane, g_x per lane)``.

    Returns:
      ``(g_params per lane, g_x per lane)``.
    """
    lanes = len(g_out)
    grad_table: list[Any] = [None] * len(values)
    grad_table[-1] = list(g_out)
    g_params: list[dict] = [{} for _ in range(lanes)]
    for index in reversed(range(len(graph.nodes))):
        node, node_id = graph.nodes[index], index + 1
        g_node = grad_table[node_id] or [_zeros(values[node_id])] * lanes  # nothing downstream consumes it
        p_node, node_x = node_params(graph, node, params), node_input(node, values)
        with located(step(node.params_key)):
            g_p, g_in = pull_node(index, node, p_node, node_x, tuple(g_node))
        for lane in range(lanes):
            if node.params_key is not None:
                g_params[lane][node.params_key] = g_p[lane]
            g_inputs = (g_in[lane],) if len(node.inputs) == 1 else tuple(g_in[lane])
            for input_id, g in zip(node.inputs, g_inputs, strict=True):
                table = grad_table[input_id] = grad_table[input_id] or [None] * lanes
                table[lane] = _add(table[lane], g)
    g_x = grad_table[0] or [_zeros(values[0])] * lanes
    return tuple(graph.gather(g) for g in g_params), tuple(g_x)


def _zeros(value: Any) -> Any:
    return jax.tree_util.tree_map(np.zeros_like, value)


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


# --------------------------------------------------------------------------
# The R-operator over a combinator's graph (Pearlmutter 1994)
# --------------------------------------------------------------------------


def checked_r_pullback(name: str, params: Params, x: Any, pullback: Callable) -> Callable:
    """An R-pullback ``(g, R{g}) -> ((g_params, g_x), (R{g_params}, R{g_x}))``, each lane checked."""
    shape = "((g_params, g_x), (R{g_params}, R{g_x}))"
    labels = (("g_params", "g_x"), ("R{g_params}", "R{g_x}"))

    def checked(g, r_g):
        result = pullback(g, r_g)
        lanes_ok = isinstance(result, tuple) and len(result) == 2
        if not (lanes_ok and all(isinstance(lane, tuple) and len(lane) == 2 for lane in result)):
            raise MissingReferenceError(
                name, f"the rop's pullback must return {shape}, got {describe_tree(result)}"
            )
        for (g_params, g_x), (params_label, x_label) in zip(result, labels):
            check_like(g_params, params, layer=name, what=f"the rop's {params_label}")
            check_like(g_x, x, layer=name, what=f"the rop's {x_label}")
        return result

    return checked


def graph_rforward(graph: Graph, params: Params, v: Params, x: Any, r_x: Any) -> tuple[list, list, list]:
    """The R-forward pass: every node's value and R{value} (node 0 the input's), and its raw R-pullback."""
    values, r_values, pullbacks = [x], [r_x], []
    for node in graph.nodes:
        with located(step(node.params_key)):
            reference = require_reference(node.name, node.reference)
            p_node, v_node = node_params(graph, node, params), node_params(graph, node, v)
            node_x, r_node_x = node_input(node, values), node_input(node, r_values)
            value, r_value, pullback = reference.run_rop(p_node, node_x, v_node, r_node_x, owner=node.name)
        values.append(value)
        r_values.append(r_value)
        pullbacks.append(pullback)
    return values, r_values, pullbacks


# rpull(index, node, node_params, node_x, (g, R{g})) -> ((g_params, g_x), (R{g_params}, R{g_x}))
RPull = Callable[[int, Node, Params, Any, tuple], tuple[tuple, tuple]]


class GraphRPullback(NamedTuple):
    """A combinator's R-pullback, closed over its graph's R-forward: both lanes swept at once.

    Calling it with ``(g, R{g})`` returns ``((g_params, g_x), (R{g_params},
    R{g_x}))``; ``rpull`` replaces each node's checked R-pullback, as
    ``graph_backward``'s ``pull`` does (``purenet.check`` records the sweep).
    """

    graph: Graph
    params: Params
    v: Params
    values: list
    r_values: list
    pullbacks: list

    def __call__(self, g_out: Any, r_g_out: Any, rpull: RPull | None = None) -> tuple[tuple, tuple]:
        def pull_node(index, node, p_node, node_x, g_node):
            if rpull is None:
                result = checked_r_pullback(node.name, p_node, node_x, self.pullbacks[index])(*g_node)
            else:
                result = rpull(index, node, p_node, node_x, g_node)
            (g_p, g_in), (r_g_p, r_g_in) = result
            return (g_p, r_g_p), (g_in, r_g_in)

        (g_params, r_g_params), (g_x, r_g_x) = sweep(
            self.graph, self.params, self.values, (g_out, r_g_out), pull_node
        )
        return (g_params, g_x), (r_g_params, r_g_x)


def graph_reference(build: Callable[[Params], Graph]) -> Reference:
    """A combinator's ``Reference`` from its graph.

    Args:
      build: ``build(params) -> Graph``; the params are passed because a
        graph may depend on them (a residual's skip has a projection or not).

    Returns:
      A ``Reference`` whose forward runs every node once and returns the
      graph's ``GraphPullback``, whose kinks are the nodes' smallest, and
      whose ``rop`` runs every node's R-pass and returns a ``GraphRPullback``.
    """

    def forward(params, x):
        graph = build(params)
        values, pullbacks = graph_forward(graph, params, x)
        return values[-1], GraphPullback(graph, params, values, pullbacks)

    def rop(params, x, v, r_x):
        graph = build(params)
        values, r_values, pullbacks = graph_rforward(graph, params, v, x, r_x)
        return values[-1], r_values[-1], GraphRPullback(graph, params, v, values, r_values, pullbacks)

    return Reference(forward, lambda params, x: forward(params, x)[1].kink_margin(), rop)


def chain(layers: Sequence[Layer]) -> Graph:
    """The graph of ``serial``: node i + 1 applies layer i to node i; params are a tuple."""
    nodes = tuple(layer_node(layer, (i,), i) for i, layer in enumerate(layers))
    return Graph(nodes, gather=lambda grads: tuple(grads[i] for i in range(len(layers))))


__all__ = [
    "Graph",
    "GraphPullback",
    "GraphRPullback",
    "Node",
    "RPull",
    "chain",
    "checked_pullback",
    "checked_r_pullback",
    "graph_backward",
    "graph_forward",
    "graph_reference",
    "graph_rforward",
    "layer_node",
    "node_input",
    "node_params",
    "require_reference",
    "step",
    "sweep",
]
