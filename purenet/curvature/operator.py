"""The curvature of a loss as a linear operator on parameter pytrees, over one batch or a dataset.

A ``CurvatureOperator`` packages one product of ``products`` (H v, or the
generalized Gauss-Newton G v of Schraudolph 2002) with the point (the
params) and, optionally, a dataset: its ``matvec`` is then the curvature of
the mean loss over the whole dataset, accumulated batch by batch on the
device with ``lax.scan``.  The operator is a pytree whose functions are
static, so the Krylov methods built on it (``lanczos``, ``spectral_density``,
the trace estimators, ``cg_solve``), jit-compiled once per loss function, do
not compile again when the params or the data change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from purenet.compiled import cached
from purenet.core import ConfigError, Layer, describe_tree
from purenet.curvature.base import (
    METHODS,
    Params,
    check_data,
    check_method,
    check_vector,
    flatten_params,
    require_finite,
    require_finite_result,
    tree_axpy,
)
from purenet.curvature.products import ggn_product, hessian_product
from purenet.validate import is_traced, require_class_labels


@jax.tree_util.register_pytree_node_class
class CurvatureOperator:
    """A symmetric linear map v -> A v on parameter pytrees: the Hessian or the GGN of a loss.

    Build one with ``hessian_operator``, ``ggn_operator`` or ``model_operator``.
    Its pytree children are the params and the data; the loss functions, the
    kind and the batch size are static, so a jit-compiled method over the
    operator compiles once per loss function, not once per params.

    Attributes:
      kind: ``"hessian"`` or ``"ggn"``.
      params: the point the curvature is taken at.
      data: ``None``, or a pytree of arrays whose leading axis runs over examples.
      batch_size: how many examples one product sees when ``data`` is given.
      dim: the number of parameters P.
    """

    def __init__(
        self, kind: str, functions: tuple, params: Params, data: Any, batch_size: int | None, method
    ):
        self.kind = kind
        self.functions = functions
        self.params = params
        self.data = data
        self.batch_size = batch_size
        self.method = method

    def tree_flatten(self):
        return (self.params, self.data), (self.kind, self.functions, self.batch_size, self.method)

    @classmethod
    def tree_unflatten(cls, aux, children):
        kind, functions, batch_size, method = aux
        return cls(kind, functions, children[0], children[1], batch_size, method)

    @property
    def dim(self) -> int:
        return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(self.params))

    def __repr__(self) -> str:
        over = "one batch" if self.data is None else f"a dataset in batches of {self.batch_size}"
        return f"CurvatureOperator({self.kind}, {self.dim} params, over {over})"

    def _batch_product(self, batch: Any, v: Params) -> Params:
        bind = (lambda fn: fn) if batch is None else (lambda fn: lambda a: fn(a, batch))
        if self.kind == "hessian":
            (f,) = self.functions
            return hessian_product(bind(f), self.params, v, self.method)
        outputs_fn, loss_fn = self.functions
        return ggn_product(bind(outputs_fn), bind(loss_fn), self.params, v)

    def _unchecked_matvec(self, v: Params) -> Params:
        """A v without the checks of ``matvec``: traceable, for the compiled methods."""
        if self.data is None:
            return self._batch_product(None, v)
        return self._dataset_product(v)

    def _dataset_product(self, v: Params) -> Params:
        """Sum over batches of (batch size / N) times the batch's product: the mean loss's curvature.

        Equal batches go through one ``lax.scan``; a smaller last batch, if
        any, is one more product, so every example counts exactly once.
        """
        n = jax.tree_util.tree_leaves(self.data)[0].shape[0]
        full, rest = divmod(n, self.batch_size)
        total = jax.tree_util.tree_map(jnp.zeros_like, v)
        if full:
            stacked = jax.tree_util.tree_map(
                lambda a: a[: full * self.batch_size].reshape((full, self.batch_size, *a.shape[1:])),
                self.data,
            )

            def accumulate(acc, batch):
                return tree_axpy(self.batch_size / n, self._batch_product(batch, v), acc), None

            total, _ = jax.lax.scan(accumulate, total, stacked)
        if rest:
            last = jax.tree_util.tree_map(lambda a: a[full * self.batch_size :], self.data)
            total = tree_axpy(rest / n, self._batch_product(last, v), total)
        return total

    def matvec(self, v: Params) -> Params:
        """A v for a pytree ``v`` of the params' structure."""
        where = f"{self.kind} operator"
        check_vector(where, "v", v, self.params)
        product = compiled(self, _matvec)(self, v)
        require_finite(where, "v", v)
        require_finite_result(where, product)
        return product

    def matmat(self, vs: Params) -> Params:
        """A v_i for directions stacked on a leading axis of every leaf, vectorized with ``jax.vmap``."""
        where = f"{self.kind} operator"
        check_vector(where, "vs", vs, self.params, stacked=True)
        products = compiled(self, _matmat)(self, vs)
        require_finite(where, "vs", vs)
        require_finite_result(where, products)
        return products

    def to_dense(self, max_dim: int = 4096) -> jax.Array:
        """The operator as a (P, P) matrix in ``flatten_params`` order, one product per column."""
        if self.dim > max_dim:
            raise ConfigError(
                f"{self.kind} operator", f"{self.dim} params exceed max_dim={max_dim} for a dense matrix"
            )
        matrix = compiled(self, _dense)(self)
        require_finite_result(f"{self.kind} operator", matrix)
        return matrix

    def flat_matvec(self) -> Callable[[jax.Array], jax.Array]:
        """The product on flattened vectors (``flatten_params`` order), for Krylov loops."""
        _, unflatten = flatten_params(self.params)
        return lambda w: ravel_pytree(self._unchecked_matvec(unflatten(w)))[0]


@cached
def _compiled(body: Callable, static: tuple, static_argnames: tuple[str, ...]) -> Callable:
    del static  # only the cache key: one jit-compiled body per (kind, loss functions, batch size, method)
    return jax.jit(body, static_argnames=static_argnames)


def compiled(op: CurvatureOperator, body: Callable, *static_argnames: str) -> Callable:
    """``jax.jit(body)`` for operators with ``op``'s loss functions, kind, batch size and method.

    ``body(op, ...)`` takes the operator as its first argument.  The jitted
    function is built once per (body, static part of ``op``) in purenet's one
    bounded cache (``purenet.compiled``), so a method over a new operator of
    the same loss function (new params, new data of the same shapes)
    compiles nothing, and an evicted entry takes its compiled code with it,
    where one module-level jit would keep every loss function it ever saw.
    """
    return _compiled(body, op.tree_flatten()[1], static_argnames)


def _matvec(op: CurvatureOperator, v: Params) -> Params:
    return op._unchecked_matvec(v)


def _matmat(op: CurvatureOperator, vs: Params) -> Params:
    return jax.vmap(op._unchecked_matvec)(vs)


def _dense(op: CurvatureOperator) -> jax.Array:
    flat, _ = flatten_params(op.params)
    # Column j is A e_j; A is symmetric, so rows and columns agree.
    return jax.vmap(op.flat_matvec())(jnp.eye(flat.size, dtype=flat.dtype)).T


def hessian_operator(
    f: Callable,
    params: Params,
    data: Any = None,
    *,
    batch_size: int | None = None,
    method: str = METHODS[0],
) -> CurvatureOperator:
    """The Hessian of a loss as a ``CurvatureOperator``.

    Args:
      f: ``f(params) -> scalar`` when ``data`` is None; otherwise
        ``f(params, batch) -> scalar``, the *mean* loss over a batch, where a
        batch is ``data`` sliced along its leading axis.
      params: the point.
      data: optional pytree of arrays (inputs, targets, ...) with examples on
        the leading axis; the operator is then the Hessian of the mean loss
        over all of it, accumulated batch by batch on the device.
      batch_size: examples per product when ``data`` is given (default: all).
      method: how H v is formed, see ``hvp``.

    Define ``f`` once and reuse it: the Krylov methods compile once per ``f``.
    """
    require_finite("hessian_operator", "params", params)
    batch_size = check_data("hessian_operator", data, batch_size)
    return CurvatureOperator(
        "hessian", (f,), params, data, batch_size, check_method("hessian_operator", method)
    )


def ggn_operator(
    outputs_fn: Callable,
    loss_fn: Callable,
    params: Params,
    data: Any = None,
    *,
    batch_size: int | None = None,
) -> CurvatureOperator:
    """The generalized Gauss-Newton matrix J^T H_L J as a ``CurvatureOperator``.

    Args:
      outputs_fn: ``outputs_fn(params)``, or ``outputs_fn(params, batch)``
        with ``data``: the network's outputs.
      loss_fn: ``loss_fn(outputs)``, or ``loss_fn(outputs, batch)`` with
        ``data``: the mean loss of those outputs (convex for a PSD operator).
      params: as for ``hessian_operator``.
      data: as for ``hessian_operator``.
      batch_size: as for ``hessian_operator``.
    """
    require_finite("ggn_operator", "params", params)
    batch_size = check_data("ggn_operator", data, batch_size)
    return CurvatureOperator("ggn", (outputs_fn, loss_fn), params, data, batch_size, None)


def model_operator(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    params: Params,
    x: Any,
    y: Any,
    *,
    kind: str = "hessian",
    batch_size: int | None = None,
    regularizer: Callable[[Params], jax.Array] | None = None,
) -> CurvatureOperator:
    """The curvature of ``loss(model.apply(params, x), y)`` (+ a regularizer), mean over (x, y).

    A convenience over ``hessian_operator`` / ``ggn_operator`` for a purenet
    model in eval mode, with ``data=(x, y)``.  The same ``model``, ``loss``
    and ``regularizer`` objects give the same loss functions (purenet's
    bounded cache), so a second operator, at new params or on new data of
    the same shapes, compiles nothing.

    A regularizer is not a loss of the outputs, so it has no Gauss-Newton
    form and ``kind="ggn"`` refuses one.  purenet's ``L2Penalty(lambda)`` is
    lambda/2 ||w||^2 summed over the penalized leaves (every params leaf whose
    innermost dict key is not in its ``skip``: all but the biases ``"b"`` by
    default), so its Hessian is the constant diagonal with lambda on every
    entry of a penalized leaf and 0 on every entry of a skipped one (not
    lambda I, nor 2 lambda I): with the GGN, ``cg_solve(op, g, damping=lambda)``
    adds lambda on the biases too, which is the usual Levenberg-Marquardt
    term rather than the penalty exactly.

    Args:
      model: the network; ``model.apply(params, x)`` runs in eval mode (no dropout).
      loss: ``loss(outputs, y) -> scalar``, the *mean* loss over a batch.
      params: the point, a params pytree of ``model``.
      x: inputs, examples on the leading axis.
      y: targets, with as many examples as ``x``.
      kind: ``"hessian"`` (of the loss plus the regularizer) or ``"ggn"``
        (J^T H_L J, positive semi-definite for a convex loss).
      batch_size: examples per product (default: all at once); the operator
        is the curvature of the mean over all examples either way.
      regularizer: ``regularizer(params) -> scalar`` added to the loss (an
        ``L2Penalty``, say), only with ``kind="hessian"``.

    Returns:
      A ``CurvatureOperator`` over ``data=(x, y)``.

    Raises:
      ConfigError: an unknown ``kind``, a regularizer with ``"ggn"``, or a bad ``batch_size``.
      ParamsError: ``x`` and ``y`` without one common leading (examples) axis.
      NonFiniteCurvatureError: params holding NaN or inf.
    """
    if kind not in ("hessian", "ggn"):
        raise ConfigError("model_operator", f"kind must be 'hessian' or 'ggn', got {kind!r}")
    require_finite("model_operator", "data", (x, y))  # named here, not in the operator it builds
    require_labels("model_operator", model, loss, params, x, y)
    functions = model_functions(model, loss, regularizer)
    if kind == "hessian":
        return hessian_operator(functions.cost, params, (x, y), batch_size=batch_size)
    if regularizer is not None:
        raise ConfigError("model_operator", "a regularizer has no Gauss-Newton form; add it as damping")
    return ggn_operator(functions.outputs, functions.loss, params, (x, y), batch_size=batch_size)


def require_labels(
    where: str, model: Layer, loss: Callable, params: Params, x: Any, y: Any, classes: dict | None = None
) -> None:
    """Integer labels for a loss over class scores lie in [0, classes): -1 must not wrap to the last class.

    Skipped under a trace, where the labels cannot be read.  ``classes``, a
    dict the caller keeps, remembers the class count per input feature shape,
    so a caller checking every step (the Hessian-free step) traces the model once.
    """
    if not getattr(loss, "class_labels", False) or is_traced(x, y, params):
        return
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or not y.size:
        return
    cache = {} if classes is None else classes
    features = np.shape(x)[1:]
    if features not in cache:
        outputs = jax.eval_shape(lambda p, xb: model.apply(p, xb), params, jnp.asarray(x)[:1])  # shapes only
        cache[features] = outputs.shape[-1]
    require_class_labels(where, y, cache[features], argument="y")


def require_operator(where: str, op: Any) -> CurvatureOperator:
    """``op`` if it is a ``CurvatureOperator``; a plain function (the loss itself, say) is refused by name."""
    if not isinstance(op, CurvatureOperator):
        raise ConfigError(
            where,
            "op must be a CurvatureOperator (from hessian_operator, ggn_operator or model_operator), "
            f"got {describe_tree(op)}",
        )
    return op


def require_host_call(where: str, op: CurvatureOperator, **arguments: Any) -> None:
    """Refuse a traced ``op`` (its params or data) or argument: the Krylov methods cannot run under a trace.

    ``lanczos``, ``spectral_density`` and the trace estimators run their own
    compiled loops and read their flags on the host (to grow the basis, to
    raise on a non-finite product, to return Python floats), which a tracer
    cannot give; without this a user's ``jax.jit`` ends in a bare
    ``TracerBoolConversionError``.  ``cg_solve`` does run under a trace.

    Args:
      where: the Krylov method, for the message.
      op: the operator, already checked by ``require_operator``.
      **arguments: the method's other array arguments by name (``key``, ``v0``).
    """
    for name, value in {"op": (op.params, op.data), **arguments}.items():
        if is_traced(value):
            raise ConfigError(
                where,
                f"{name} is traced (called inside jax.jit, vmap or grad?), but {where} runs its own "
                "compiled loop and returns host values (Python floats and bools): call it outside "
                "jax.jit, on concrete params and data",
            )


class ModelFunctions(NamedTuple):
    """A model's cost, outputs and loss of outputs, each ``(params or outputs, batch)`` with batch (x, y)."""

    cost: Callable
    outputs: Callable
    loss: Callable


@cached
def model_functions(model: Layer, loss: Callable, regularizer: Callable | None) -> ModelFunctions:
    """The same three function objects for the same (model, loss, regularizer), so compiled code is reused.

    Kept in purenet's one bounded cache (``purenet.compiled``); a regularizer
    that cannot be hashed gets new functions, and so a new compilation, each time.
    """

    def cost(params, batch):
        x, y = batch
        value = loss(model.apply(params, x), y)
        return value if regularizer is None else value + regularizer(params)

    return ModelFunctions(
        cost, lambda params, batch: model.apply(params, batch[0]), lambda out, batch: loss(out, batch[1])
    )
