"""The Layer record, shape and parameter checks, and the library's errors.

A layer is three functions in one record (DESIGN.md):

    init(key, input_shape)                      -> (output_shape, params)
    apply(params, x, *, key=None, train=False)  -> y
    bprop(params, x, g_out)                     -> (g_params, g_x)

``init`` infers every shape from ``input_shape`` alone, whose batch axis is
written ``-1`` or ``None``.  ``apply`` is written in ``jax.numpy`` and is
jit-able.  ``bprop`` is the hand-derived backward pass in NumPy float64,
written beside ``np_apply``, the same forward formula in NumPy, so that the
reference runs end to end without JAX (``purenet.reference``); both are
``None`` where no reference is written (a user's own layer, say).

Every check here runs at trace time, on static shapes and dtypes, so a
checked ``apply`` costs nothing once it is jit-compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple  # a tuple of ints, with -1 or None for the batch axis
Params = Any  # a pytree of arrays
Initializer = Callable[..., jax.Array]  # jax.nn.initializers signature
InitFn = Callable[[jax.Array, Shape], tuple[Shape, Params]]
ApplyFn = Callable[..., jax.Array]
BpropFn = Callable[[Params, np.ndarray, np.ndarray], tuple[Params, np.ndarray]]
NpApplyFn = Callable[[Params, np.ndarray], np.ndarray]
KinksFn = Callable[[Params, np.ndarray], float]


class Layer(NamedTuple):
    """One building block: pure functions over a plain parameter pytree.

    Attributes:
      init: ``init(key, input_shape) -> (output_shape, params)``.
      apply: ``apply(params, x, *, key=None, train=False) -> y``.
      bprop: the hand-derived backward pass
        ``bprop(params, x, g_out) -> (g_params, g_x)`` in NumPy float64, or
        ``None`` where the layer has none.  ``g_out`` is dJ/dy for the output
        y; it returns dJ/dparams (the params' structure) and dJ/dx.
      name: how errors and summaries name the layer, e.g. ``"Dense(64)"``.
      children: the sub-layers of a combinator, in order; empty for a leaf.
      preferred_init: for a unit (an activation), the weight initializer that
        suits the weights feeding it: He for the rectifier family, Glorot for
        sigmoid and tanh.  ``serial`` hands it to the layer before the unit.
      with_init: for a weight layer built without an explicit weight
        initializer, ``with_init(initializer)`` rebuilds it with that one;
        ``None`` when the user chose the initializer.
      np_apply: the forward in NumPy float64, ``np_apply(params, x) -> y``,
        the same formula as ``apply`` (in evaluation mode: dropout is off);
        ``None`` where the layer has no reference.
      kinks: for a layer that is not differentiable everywhere,
        ``kinks(params, x) -> distance``: how far the point is from the
        nearest kink (the smallest |z| at a rectifier, the smallest gap
        between a maxout unit's top two pieces), so that a finite-difference
        check can tell when its steps straddle one.  ``None`` means smooth.
    """

    init: InitFn
    apply: ApplyFn
    bprop: BpropFn | None = None
    name: str = "layer"
    children: tuple[Layer, ...] = ()
    preferred_init: Initializer | None = None
    with_init: Callable[[Initializer], Layer] | None = None
    np_apply: NpApplyFn | None = None
    kinks: KinksFn | None = None


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class PurenetError(Exception):
    """Base of purenet's errors: names the layer and where in the model it sits.

    ``path`` is the position in the params tree (and so in the model), built
    outward as the error passes up through combinators: ``params[1]['block']``.
    ``root`` names the tree the path runs in (``params``, or ``v``, or
    ``g_params returned by the reference``).
    """

    def __init__(self, layer: str, message: str, leaf: str = "", root: str = "params"):
        super().__init__(message)
        self.layer = layer
        self.message = message
        self.leaf = leaf
        self.root = root
        self.path: list[str] = []

    def __str__(self) -> str:
        where = "".join(self.path) + self.leaf
        if not where:
            return f"{self.layer}: {self.message}"
        return f"{self.layer} at {self.root}{where}: {self.message}"


class ShapeError(PurenetError, ValueError):
    """An input of the wrong rank or width, at init or at apply."""


class ParamsError(PurenetError, ValueError):
    """A params tree that does not fit the model."""


class ConfigError(PurenetError, ValueError):
    """A layer built with an argument out of range (a size below 1, say)."""


class InputTypeError(PurenetError, TypeError):
    """An input of the wrong dtype: integers where floats are needed."""


class MissingReferenceError(PurenetError, TypeError):
    """A layer or loss without the hand-derived reference a check or reference pass needs."""


@contextlib.contextmanager
def located(step: str) -> Iterator[None]:
    """Prefix ``step`` (``"[2]"``, ``"['block']"``) to the path of any error raised inside."""
    try:
        yield
    except PurenetError as error:
        error.path.insert(0, step)
        raise


# --------------------------------------------------------------------------
# The one tree check
# --------------------------------------------------------------------------


def dtype_kind(dtype: Any) -> str:
    """``"floating"``, ``"complex"``, ``"integer"``, ``"bool"`` or ``"other"`` (bfloat16 is floating)."""
    for kind, base in (("floating", jnp.floating), ("complex", jnp.complexfloating)):
        if jnp.issubdtype(dtype, base):
            return kind
    if jnp.issubdtype(dtype, jnp.integer):
        return "integer"
    return "bool" if jnp.issubdtype(dtype, jnp.bool_) else "other"


def _is_container(node: Any) -> bool:
    return node is None or isinstance(node, (Mapping, list, tuple))


def describe_tree(tree: Any) -> str:
    """A short description of a tree node for error messages."""
    if tree is None:
        return "None"
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return f"a {type(tree).__name__}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of {len(tree)} entries"
    if isinstance(tree, Mapping):
        return f"a dict with keys {sorted(map(str, tree))}"
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return f"an array of shape {tuple(tree.shape)} ({tree.dtype})"
    return f"a {type(tree).__name__}"


class _Mismatch(Exception):  # noqa: N818 - internal signal, caught in check_like
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _compare_leaf(leaf: Any, spec: Any, path: str, leading: tuple, context: str, dtypes: bool) -> None:
    if _is_container(leaf):
        raise _Mismatch(path, f"expected an array, got {describe_tree(leaf)}")
    try:
        got_shape, got_dtype = tuple(np.shape(leaf)), jnp.result_type(leaf)
    except (TypeError, ValueError):
        raise _Mismatch(path, f"expected an array, got {describe_tree(leaf)}") from None
    want_shape = (*leading, *tuple(spec.shape))
    if got_shape != want_shape:
        raise _Mismatch(path, f"expected shape {want_shape}{context}, got {got_shape}")
    if dtypes:
        want_kind, got_kind = dtype_kind(spec.dtype), dtype_kind(got_dtype)
        if want_kind != got_kind:
            raise _Mismatch(path, f"expected a {want_kind} dtype like {spec.dtype}, got {got_dtype}")


def _compare(tree: Any, spec: Any, path: str, leading: tuple, context: str, dtypes: bool) -> None:
    """Walk ``spec`` and ``tree`` together; raise ``_Mismatch`` at the first difference."""
    if isinstance(spec, Mapping):
        if not isinstance(tree, Mapping):
            keys = sorted(map(str, spec))
            raise _Mismatch(path, f"expected a dict with keys {keys}, got {describe_tree(tree)}")
        if set(tree) != set(spec):
            raise _Mismatch(path, f"expected keys {sorted(map(str, spec))}, got {sorted(map(str, tree))}")
        for key in sorted(spec, key=str):
            _compare(tree[key], spec[key], f"{path}[{key!r}]", leading, context, dtypes)
    elif isinstance(spec, (tuple, list)) and not hasattr(spec, "_fields"):
        if type(tree) is not type(spec) or len(tree) != len(spec):
            raise _Mismatch(path, f"expected {describe_tree(spec)}, got {describe_tree(tree)}")
        for index, (t, s) in enumerate(zip(tree, spec)):
            _compare(t, s, f"{path}[{index}]", leading, context, dtypes)
    elif spec is None:
        if tree is not None:
            raise _Mismatch(path, f"expected None, got {describe_tree(tree)}")
    elif hasattr(spec, "shape") and hasattr(spec, "dtype") and not _is_container(spec):
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

    The one tree check of the library.  Structure means the same containers
    (dict keys, tuple or list lengths) all the way down; every leaf must have
    the template leaf's shape (after a leading axis, with ``leading``) and the
    same dtype kind (floating, complex, integer, bool), any precision.

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

    Returns:
      The leading axis length when ``leading`` is given, else ``None``.

    Raises:
      ``error`` naming the first mismatching path, what was expected and what came.
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


# --------------------------------------------------------------------------
# Checks on constructor arguments, shapes and params
# --------------------------------------------------------------------------


def require_positive_int(layer: str, argument: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(layer, f"{argument} must be an integer >= 1, got {value!r}")
    return int(value)


def is_shape(shape: Any) -> bool:
    """Whether ``shape`` is one shape (a tuple of ints/None) rather than a tuple of shapes."""
    return isinstance(shape, (tuple, list)) and all(
        d is None or isinstance(d, (int, np.integer)) for d in shape
    )


def normalize_shape(layer: str, shape: Any) -> Shape:
    """Check one input shape and write its unknown (batch) axes as -1."""
    if not is_shape(shape) or len(shape) == 0:
        raise ShapeError(layer, f"expected an input shape such as (-1, features), got {shape!r}")
    return tuple(-1 if d is None else int(d) for d in shape)


def feature_width(layer: str, shape: Any, min_rank: int = 1) -> int:
    """Check an input shape at init and return its last (feature) axis."""
    shape = normalize_shape(layer, shape)
    if len(shape) < min_rank:
        raise ShapeError(layer, f"expected an input of rank >= {min_rank}, got shape {shape}")
    if shape[-1] < 1:
        raise ShapeError(
            layer,
            f"the feature (last) axis of the input must be a known size >= 1, got shape {shape}",
        )
    return shape[-1]


def with_width(shape: Shape, width: int) -> Shape:
    """``shape`` with its last axis replaced by ``width``."""
    return (*tuple(shape[:-1]), width)


def check_input(layer: str, x: Any, min_rank: int = 1) -> jax.Array:
    """Return ``x`` as an array after checking it is floating point of rank >= ``min_rank``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputTypeError(
            layer,
            f"expected a floating-point input, got dtype {x.dtype}; "
            "cast it first, e.g. x.astype(jnp.float32)",
        )
    if x.ndim < min_rank:
        raise ShapeError(layer, f"expected an input of rank >= {min_rank}, got shape {x.shape}")
    return x


def check_no_params(layer: str, params: Params) -> None:
    """A parameter-free layer's params must be empty (``()``)."""
    if jax.tree_util.tree_leaves(params):
        raise ParamsError(
            layer,
            f"this layer has no parameters and expects (), got {describe_tree(params)}",
        )


def check_params(layer: str, params: Params, expected: Mapping[str, tuple], width: int | None = None) -> None:
    """Check that ``params`` is a dict with exactly ``expected``'s keys and shapes.

    ``width``, the input's feature width, is quoted in the message when given,
    since a wrong input and wrong params look alike from inside a layer.
    """
    if not isinstance(params, Mapping):
        raise ParamsError(
            layer,
            f"expected a dict with keys {sorted(expected)}, got {describe_tree(params)}",
        )
    if set(params) != set(expected):
        raise ParamsError(layer, f"expected keys {sorted(expected)}, got {sorted(map(str, params))}")
    for key, shape in expected.items():
        got = np.shape(params[key])
        if got != tuple(shape):
            raise ParamsError(
                layer,
                f"expected shape {tuple(shape)}"
                + ("" if width is None else f" for an input of width {width}")
                + f", got {got}",
                leaf=f"[{key!r}]",
            )


def check_sequence_params(layer: str, params: Params, count: int) -> Sequence:
    """A combinator's params must be a sequence with one entry per child."""
    if not isinstance(params, (tuple, list)) or len(params) != count:
        raise ParamsError(
            layer,
            f"expected a tuple of {count} entries (one per child layer), got {describe_tree(params)}",
        )
    return params


# --------------------------------------------------------------------------
# NumPy float64, for the reference
# --------------------------------------------------------------------------


def as_float64(tree: Any) -> Any:
    """A copy of a pytree with every floating leaf as a NumPy float64 array (integers kept)."""

    def convert(leaf):
        array = np.asarray(leaf)
        # jnp.issubdtype also knows bfloat16, which NumPy's does not count as floating.
        return array.astype(np.float64) if jnp.issubdtype(array.dtype, jnp.floating) else array

    return jax.tree_util.tree_map(convert, tree)


def sum_to_shape(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over its leading (batch) axes down to ``shape``: the gradient of a broadcast."""
    g = np.asarray(g)
    return g.reshape(-1, *shape).sum(axis=0) if shape else np.asarray(g.sum())


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def split_key(key: jax.Array | None, count: int) -> list[jax.Array | None]:
    """Split an optional PRNG key into ``count`` keys (``None`` stays ``None``)."""
    if key is None:
        return [None] * count
    return list(jax.random.split(key, count))


# --------------------------------------------------------------------------
# Initializing children, with summary rows recorded
# --------------------------------------------------------------------------


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
    """The number of scalar parameters in a params pytree."""
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))


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
    """Initialize ``layer`` and return a row per layer in the model, outermost first."""
    recorder = _Recorder()
    token = _RECORDER.set(recorder)
    try:
        init_child(layer, jax.random.PRNGKey(0) if key is None else key, input_shape, "")
    finally:
        _RECORDER.reset(token)
    return recorder.rows


def summary(layer: Layer, input_shape: Shape, key: jax.Array | None = None) -> str:
    """A table of every layer's output shape and parameter count.

    Args:
      layer: the model.
      input_shape: its input shape, batch axis as -1.
      key: PRNG key for the throwaway initialization (default ``PRNGKey(0)``).

    Returns:
      The table as a string, one row per layer (children indented under their
      combinator, whose count includes theirs) and the total at the bottom.
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
