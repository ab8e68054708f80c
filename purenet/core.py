"""The Layer and Reference records, the library's errors, and the one tree check.

A layer is a small, hashable record (DESIGN.md):

    init(key, input_shape)                      -> (output_shape, params)
    apply(params, x, *, key=None, train=False)  -> y

``init`` infers every shape from ``input_shape`` alone, whose batch axis is
written ``-1`` or ``None``.  ``apply`` is written in ``jax.numpy`` and is
jit-able.  Everything hand-derived sits apart, in one ``Reference`` record
that layers, losses and penalties all carry the same way: the forward in
NumPy float64 returning a pullback (the backward, reusing the forward's
values as micrograd's closures do), the distance to the nearest kink, and a
slot for the second-order R-operator pass.

``check_like`` is the one place trees are compared (params, what a backward
returns, curvature vectors, checkpoints); it names the first mismatching leaf.
Layer checks: arguments and shapes in ``purenet.shapes``, apply's signature
and ``train`` under ``jax.jit`` in ``purenet.layer_contract``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from purenet.errors import (  # noqa: F401 - re-exported: purenet.core is where errors are imported from
    ConfigError,
    InputTypeError,
    MissingKeyError,
    MissingReferenceError,
    ParamsError,
    PurenetError,
    ShapeError,
    describe_tree,
    dtype_kind,
    is_container,
    located,
)
from purenet.layer_contract import check_key, checked_init, contract_apply  # noqa: F401 - check_key re-exported

Shape = tuple  # a tuple of ints, with -1 or None for the batch axis
Params = Any  # a pytree of arrays
Initializer = Callable[..., jax.Array]  # jax.nn.initializers signature
InitFn = Callable[[jax.Array, Shape], tuple[Shape, Params]]
ApplyFn = Callable[..., jax.Array]
Pullback = Callable[[Any], Any]


# --------------------------------------------------------------------------
# The records
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """A hand-derived reference, in NumPy float64 and independent of JAX.

    One record serves layers, losses and penalties; only the arguments differ:

    ========  =========================  ====================================
    owner     ``forward(*args)``         ``pullback(g)``
    ========  =========================  ====================================
    layer     ``(params, x)``            ``g_y -> (g_params, g_x)``
    loss      ``(outputs, targets)``     ``g_L -> g_outputs``
    penalty   ``(params,)``              ``g_value -> g_params``
    ========  =========================  ====================================

    ``forward(*args)`` returns ``(value, pullback)``: the pullback is the
    book's ``op.bprop`` (Algorithm 6.2) closed over the forward's values, so
    the backward never recomputes the forward.

    ``rop`` is the same pass with Pearlmutter's (1994) R-operator beside it,
    R{a} = d/dr a(theta + r v) at r = 0: it takes a tangent after the
    arguments it differentiates (``R{x}`` for a layer's input, ``v`` for
    its params; a loss's targets are constants) and returns
    ``(value, R{value}, pullback)`` with ``pullback(g, R{g}) -> (grads,
    R{grads})``, ``grads`` being what the first-order pullback returns:

        layer    rop(params, x, v_params, R{x})      grads = (g_params, g_x)
        loss     rop(outputs, targets, R{outputs})   grads = g_outputs
        penalty  rop(params, v)                      grads = g_params

    Attributes:
      forward: the forward formula, returning ``(value, pullback)``.
      kinks: for a function that is not differentiable everywhere,
        ``kinks(*args) -> distance``: how far the point is from the nearest
        kink (the smallest |z| at a rectifier, the smallest gap between a
        maxout unit's top two pieces), so that a finite-difference check can
        tell when its steps straddle one.  ``None`` means smooth.
      rop: the second-order pass above; ``None`` for none (then a
        second-order check or ``reference_hvp`` refuses, naming the owner).
    """

    forward: Callable[..., tuple[Any, Pullback]]
    kinks: Callable[..., float] | None = None
    rop: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        for field in ("forward", "kinks", "rop"):
            if field == "forward" or getattr(self, field) is not None:
                _require_callable("Reference", field, getattr(self, field))

    @classmethod
    def from_bprop(
        cls,
        np_apply: Callable[[Params, Any], Any],
        bprop: Callable[[Params, Any, Any], tuple[Params, Any]],
        kinks: Callable[[Params, Any], float] | None = None,
    ) -> Reference:
        """A layer's reference from a NumPy forward and a ``bprop(params, x, g_y) -> (g_params, g_x)``."""
        return cls(lambda params, x: (np_apply(params, x), lambda g: bprop(params, x, g)), kinks)

    def run(self, *args: Any, owner: str = "reference") -> tuple[Any, Pullback]:
        """``forward(*args)``, refused naming ``owner`` unless it returned ``(value, callable pullback)``."""
        result = self.forward(*args)
        if not (isinstance(result, tuple) and len(result) == 2 and callable(result[1])):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else describe_tree(result)
            raise MissingReferenceError(
                owner, f"its reference's forward must return (value, pullback: g -> gradients), got {got}"
            )
        return result

    def run_rop(self, *args: Any, owner: str = "reference") -> tuple[Any, Any, Callable]:
        """``rop(*args)``, refused naming ``owner`` when missing or not ``(value, R{value}, pullback)``."""
        if self.rop is None:
            message = "has no second-order reference: give its Reference a rop (Pearlmutter's R-operator, "
            raise MissingReferenceError(
                owner, message + "see purenet.Reference), or check it to first order only"
            )
        result = self.rop(*args)
        if not (isinstance(result, tuple) and len(result) == 3 and callable(result[2])):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else describe_tree(result)
            if isinstance(result, tuple) and len(result) == 3:  # the pullback is not callable
                got = f"a {type(result[2]).__name__} for the pullback"
            raise MissingReferenceError(owner, f"its rop must return (y, R{{y}}, pullback), got {got}")
        check_like(result[1], result[0], layer=owner, what="the rop's R{value}", dtypes=False)
        return result

    @classmethod
    def linear(cls, forward: Callable[..., tuple[Any, Pullback]]) -> Reference:
        """A parameter-free op linear in x (a reshape, a join): R{y} = op(R{x}), R{g_x} = pullback(R{g})."""

        def rop(params, x, v_params, r_x):
            value, pullback = forward(params, x)
            return value, forward(params, r_x)[0], lambda g, r_g: (pullback(g), pullback(r_g))

        return cls(forward, rop=rop)

    def value(self, *args: Any) -> Any:
        """The forward's value alone (a layer's output, a loss's or penalty's value)."""
        return self.run(*args)[0]

    def bprop(self, *args: Any) -> Any:
        """``bprop(*args, g)``: the backward at ``args`` for the upstream gradient ``g``."""
        *inputs, g = args
        return self.run(*inputs)[1](g)

    def value_and_grad(self, *args: Any) -> tuple[Any, Any]:
        """For a scalar (a loss, a penalty): ``(value, gradient)``, the pullback of 1."""
        value, pullback = self.run(*args)
        return value, pullback(1.0)


@dataclasses.dataclass(frozen=True)
class InitPolicy:
    """Which initializer the weights feeding a unit get, and from whom.

    He initialization suits rectifiers and Glorot suits sigmoid and tanh
    (Glorot and Bengio 2010; He et al. 2015): the unit chooses, but the
    weights live in the layer before it.  A unit states what it prefers, a
    weight layer built without a weight initializer how to rebuild itself
    with one, and ``serial`` joins the two.  A user's initializer is kept.

    Attributes:
      prefers: for a unit, the initializer it wants for the weights before it.
      rebuild: for a weight layer on its default initializer,
        ``rebuild(initializer) -> Layer``, the same layer with that one.
    """

    prefers: Initializer | None = None
    rebuild: Callable[[Initializer], Layer] | None = None


NO_INIT_POLICY = InitPolicy()


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One building block: pure functions over a plain parameter pytree.

    Hashable by identity and not a pytree: a model can be closed over or passed
    to ``jax.jit`` as a static argument, and never flattens into functions.

    Attributes:
      init: ``init(key, input_shape) -> (output_shape, params)``.
      apply: ``apply(params, x, *, key=None, train=False) -> y``, refused when
        built if it cannot take ``key=`` and ``train=``.
      name: how errors and summaries name the layer, e.g. ``"Dense(64)"``.
      children: the sub-layers of a combinator, in order; empty for a leaf.
      reference: the hand-derived ``Reference`` (forward returning its
        pullback, kinks), or ``None`` where none is written.
      init_policy: the ``InitPolicy`` that ``serial`` reads (what a unit
        prefers for the weights before it; how a weight layer on its default
        initializer is rebuilt with another).
    """

    init: InitFn
    apply: ApplyFn
    name: str = "layer"
    children: tuple[Layer, ...] = ()
    reference: Reference | None = None
    init_policy: InitPolicy = NO_INIT_POLICY

    def __post_init__(self) -> None:  # a wrong field fails here, naming it, not deep inside a trace
        if not isinstance(self.name, str):
            raise ConfigError("Layer", f"name must be a string, got {type(self.name).__name__}")
        _require_callable(self.name, "init", self.init)
        _require_callable(self.name, "apply", self.apply)
        children = self.children
        if not (isinstance(children, tuple) and all(isinstance(c, Layer) for c in children)):
            raise ConfigError(self.name, f"children must be a tuple of Layers, got {describe_tree(children)}")
        for field, kind in (("reference", Reference), ("init_policy", InitPolicy)):
            value, got = getattr(self, field), type(getattr(self, field)).__name__
            if not (isinstance(value, kind) or (field == "reference" and value is None)):
                raise ConfigError(self.name, f"{field} must be a purenet.{kind.__name__}, got {got}")

        # Shared behaviour of every layer, stated once (as Neural Tangents' stax decorator does):
        object.__setattr__(self, "init", checked_init(self.name, self.init))
        object.__setattr__(self, "apply", contract_apply(self.name, self.apply))

    def replace(self, **changes: Any) -> Layer:
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"Layer({self.name})"


def _require_callable(owner: str, field: str, value: Any) -> None:
    if not callable(value):
        raise ConfigError(owner, f"{field} must be callable, got {type(value).__name__}")


class _Mismatch(Exception):  # noqa: N818 - internal signal, caught in check_like
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


def _shape_and_dtype(leaf: Any) -> tuple[tuple, Any]:
    """A leaf's shape and its own dtype (not JAX's canonical one: an int64 array says int64)."""
    dtype = getattr(leaf, "dtype", None)
    return tuple(np.shape(leaf)), (np.result_type(leaf) if dtype is None else dtype)


def _compare_leaf(leaf: Any, spec: Any, path: str, leading: tuple, context: str, dtypes: bool) -> None:
    if is_container(leaf):
        raise _Mismatch(path, f"expected an array, got {describe_tree(leaf)}")
    try:
        got_shape, got_dtype = _shape_and_dtype(leaf)
    except (TypeError, ValueError):
        raise _Mismatch(path, f"expected an array, got {describe_tree(leaf)}") from None
    spec_shape, spec_dtype = _shape_and_dtype(spec)
    want_shape = (*leading, *spec_shape)
    if got_shape != want_shape:
        raise _Mismatch(path, f"expected shape {want_shape}{context}, got {got_shape}")
    if dtypes:
        want_kind, got_kind = dtype_kind(spec_dtype), dtype_kind(got_dtype)
        if want_kind != got_kind:
            article = "an" if want_kind[0] in "aeiou" else "a"
            raise _Mismatch(path, f"expected {article} {want_kind} dtype like {spec_dtype}, got {got_dtype}")


def _compare(tree: Any, spec: Any, path: str, leading: tuple, context: str, dtypes: bool) -> None:
    """Walk ``spec`` and ``tree`` together; raise ``_Mismatch`` at the first difference."""
    if isinstance(spec, Mapping):
        if not isinstance(tree, Mapping):
            keys = sorted(map(str, spec))
            raise _Mismatch(path, f"expected a dict with keys {keys}, got {describe_tree(tree)}")
        if set(tree) != set(spec):
            raise _Mismatch(path, f"expected keys {sorted(map(str, spec))}, got {sorted(map(str, tree))}")
        for key in tree:  # the tree's own order: the user's dict reads as they wrote it
            _compare(tree[key], spec[key], f"{path}[{key!r}]", leading, context, dtypes)
    elif isinstance(spec, (tuple, list)) and not hasattr(spec, "_fields"):
        if type(tree) is not type(spec) or len(tree) != len(spec):
            raise _Mismatch(path, f"expected {describe_tree(spec)}, got {describe_tree(tree)}")
        for index, (t, s) in enumerate(zip(tree, spec)):
            _compare(t, s, f"{path}[{index}]", leading, context, dtypes)
    elif spec is None:
        if tree is not None:
            raise _Mismatch(path, f"expected None, got {describe_tree(tree)}")
    elif not is_container(spec) and jax.tree_util.all_leaves([spec]):  # an array, a scalar, a spec
        _compare_leaf(tree, spec, path, leading, context, dtypes)
    else:  # any other registered pytree node (a NamedTuple, an optax state): same treedef, then leaves
        tree_leaves, tree_def = jax.tree_util.tree_flatten_with_path(tree)
        spec_leaves, spec_def = jax.tree_util.tree_flatten_with_path(spec)
        if tree_def != spec_def:
            raise _Mismatch(path, f"expected the structure {spec_def}, got {tree_def}")
        for (key, t), (_, s) in zip(tree_leaves, spec_leaves):
            _compare(t, s, path + jax.tree_util.keystr(key), leading, context, dtypes)


def check_like(
    tree: Any,
    template: Any,
    *,
    layer: str,
    what: str = "params",
    leading: int | bool | None = None,
    context: str = "",
    dtypes: bool = True,
    error: type[PurenetError] = ParamsError,
) -> int | None:
    """Check that ``tree`` has ``template``'s structure, leaf shapes and dtype kinds.

    The same containers (dict keys, tuple or list lengths) all the way down;
    each leaf the template leaf's shape (after ``leading``) and dtype kind.

    Args:
      tree: the tree to check (params, a gradient, a vector, a checkpoint).
      template: arrays or ``jax.ShapeDtypeStruct`` leaves, e.g. from
        ``jax.eval_shape(layer.init, ...)``.
      layer: who checks, for the message (``"Dense(3)"``, ``"hvp"``).
      what: the tree's name, the root of the path in the message.
      leading: ``None``; an int n: every leaf carries a leading axis of n
        (stacked params, a batch of vectors); ``True``: a leading axis of one
        common length, which is returned.
      context: appended to the expected shape, e.g. ``" for an input of width 4"``.
      dtypes: also compare dtype kinds.
      error: the ``PurenetError`` subclass raised.

    Returns the leading axis length when ``leading`` is given, else ``None``;
    raises ``error`` naming the first mismatching path, what was expected and what came.
    """
    count = _leading_count(tree, layer, what, error) if leading is True else leading
    prefix = () if count is None or count is False else (int(count),)
    try:
        _compare(tree, template, "", prefix, context, dtypes)
    except _Mismatch as mismatch:
        raise error(layer, mismatch.message, leaf=mismatch.path, root=what) from None
    return None if count is None or count is False else int(count)


def _leading_count(tree: Any, layer: str, what: str, error: type[PurenetError]) -> int:
    """The common length of the leading axis of every leaf of ``tree``."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if np.ndim(leaf) == 0:
            where = jax.tree_util.keystr(path)
            raise error(layer, "expected a leading axis on every leaf, got a scalar", where, what)
    counts = {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(tree)}
    if len(counts) != 1:
        raise error(layer, f"every leaf of {what} needs the same leading axis, got lengths {sorted(counts)}")
    return counts.pop()
