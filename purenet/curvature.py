"""Curvature: Hessian- and Gauss-Newton-vector products, and the Krylov methods built on them.

Products on parameter pytrees (Pearlmutter 1994; Schraudolph 2002):

    H v = d/de grad f(theta + e v) |_{e=0}    forward over reverse: jax.jvp of jax.grad
        = grad_theta <grad f(theta), v>       reverse over reverse: jax.grad of a dot product
    G v = J^T H_L J v                         generalized Gauss-Newton: a jvp, the loss Hessian, a vjp

where J = d outputs / d theta and H_L is the Hessian of the loss in the
network's outputs; G is positive semi-definite whenever the loss is convex in
the outputs (Martens 2020, "New insights and perspectives on the natural
gradient method", section 8).

A ``CurvatureOperator`` packages one of these products with the point (the
params) and, optionally, a dataset: its ``matvec`` is then the curvature of
the mean loss over the whole dataset, accumulated batch by batch on the device
with ``lax.scan``.  The operator is a pytree whose functions are static, so
the Krylov methods below, jit-compiled once per loss function, do not
compile again when the params or the data change.

Krylov methods, each a device-resident loop over flattened parameter vectors
(``jax.flatten_util.ravel_pytree``) with pytrees in and out:

- ``lanczos``: Lanczos with full reorthogonalization (Golub and Van Loan,
  Matrix Computations, 4th ed., section 10.1), top-k or bottom-k eigenpairs,
  stopped by the Ritz residual bound ``beta_j |s_{j,i}| <= tol |theta_i|``.
- ``spectral_density``: stochastic Lanczos quadrature (Golub and Meurant 1994;
  Ghorbani, Krishnan and Xiao 2019, "An investigation into neural net
  optimization via Hessian eigenvalue density").
- ``hutchinson_trace`` (Hutchinson 1989) and ``hutchpp_trace`` (Meyer, Musco,
  Musco and Woodruff 2021, "Hutch++").
- ``cg_solve`` and ``make_hessian_free_step``: conjugate gradients for
  (A + lambda I) x = g, the damped Newton step of Hessian-free optimization
  (Martens 2010, "Deep learning via Hessian-free optimization").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from purenet.core import ConfigError, Layer, ParamsError, PurenetError
from purenet.shapes import require_positive_int
from purenet.trees import first_nonfinite_leaf

Params = Any
METHODS = ("forward_over_reverse", "reverse_over_reverse")


class NonFiniteCurvatureError(PurenetError, ArithmeticError):
    """A curvature product or its input held a NaN or an infinity."""


# --------------------------------------------------------------------------
# Flattening and input checks
# --------------------------------------------------------------------------


def flatten_params(params: Params) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
    """Ravel a params pytree into one vector, in ``jax.tree_util`` leaf order.

    Returns:
      ``(vector, unflatten)``, where ``unflatten(vector)`` rebuilds the tree
      (each leaf back in its own dtype).  This is the order of the rows and
      columns of ``hessian`` and of every flattened vector in this module.
    """
    return ravel_pytree(params)


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def _require_finite(where: str, what: str, tree: Any) -> None:
    """Raise naming the first leaf of ``tree`` holding a NaN or inf (skipped under a trace)."""
    if not _is_concrete(tree):
        return
    path = first_nonfinite_leaf(tree)
    if path is not None:
        raise NonFiniteCurvatureError(where, f"{what} must be finite, but this leaf holds NaN or inf", path)


def _check_like_params(where: str, what: str, params: Params, v: Any, batch: int | None = None) -> None:
    """Check that ``v`` has the params' tree structure and leaf shapes (after a leading ``batch`` axis)."""
    expected = jax.tree_util.tree_structure(params)
    got = jax.tree_util.tree_structure(v)
    if expected != got:
        raise ParamsError(where, f"{what} must have the params' tree structure {expected}, got {got}")
    for (path, p), leaf in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(v)):
        want = tuple(np.shape(p)) if batch is None else (batch, *np.shape(p))
        if tuple(np.shape(leaf)) != want:
            raise ParamsError(
                where,
                f"{what} must have shape {want} here, like the params"
                + ("" if batch is None else " with a leading axis of vectors")
                + f", got {tuple(np.shape(leaf))}",
                jax.tree_util.keystr(path),
            )


def _leading_count(where: str, what: str, tree: Any) -> int:
    """The common length of the leading axis of every leaf of ``tree``."""
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(tree)}
    if len(counts) != 1 or None in counts:
        raise ParamsError(where, f"every leaf of {what} needs the same leading axis, got lengths {counts}")
    return counts.pop()


def _method(where: str, method: str) -> str:
    if method not in METHODS:
        raise ConfigError(where, f"method must be one of {METHODS}, got {method!r}")
    return method


def _tree_vdot(a: Params, b: Params) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# --------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------


def _hessian_product(f: Callable, params: Params, v: Params, method: str) -> Params:
    if method == "forward_over_reverse":
        return jax.jvp(jax.grad(f), (params,), (v,))[1]
    return jax.grad(lambda p: _tree_vdot(jax.grad(f)(p), v))(params)


def _ggn_product(outputs_fn: Callable, loss_fn: Callable, params: Params, v: Params) -> Params:
    # One forward pass: linearize gives J v, and the transpose of that linear map gives J^T u.
    outputs, jvp_fn = jax.linearize(outputs_fn, params)
    loss_hessian_jv = jax.jvp(jax.grad(loss_fn), (outputs,), (jvp_fn(v),))[1]
    return jax.linear_transpose(jvp_fn, params)(loss_hessian_jv)[0]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_hvp(f, params, v, method):
    return _hessian_product(f, params, v, method)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_batched_hvp(f, params, vs, method):
    return jax.vmap(lambda v: _hessian_product(f, params, v, method))(vs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_ggn_vp(outputs_fn, loss_fn, params, v):
    return _ggn_product(outputs_fn, loss_fn, params, v)


def hvp(f: Callable[[Params], jax.Array], params: Params, v: Params, *, method: str = METHODS[0]) -> Params:
    """The Hessian-vector product H v of a scalar function at ``params`` (Pearlmutter 1994).

    Args:
      f: ``f(params) -> scalar``, e.g. a loss over one batch.
      params: the point, a pytree.
      v: the direction, a pytree of the params' structure and shapes.
      method: ``"forward_over_reverse"`` (``jax.jvp`` of ``jax.grad``: one
        forward-mode pass over the gradient, the cheaper one) or
        ``"reverse_over_reverse"`` (``jax.grad`` of ``<grad f, v>``).

    Returns:
      H v, in the params' structure.  Jit-compiled once per ``f``.
    """
    _check_like_params("hvp", "v", params, v)
    product = _jit_hvp(f, params, v, _method("hvp", method))
    _require_finite("hvp", "v", v)  # after the dispatch, so that its one sync overlaps the product
    return product


def batched_hvp(
    f: Callable[[Params], jax.Array], params: Params, vs: Params, *, method: str = METHODS[0]
) -> Params:
    """Many Hessian-vector products in one call, vectorized with ``jax.vmap``.

    Args:
      f, params, method: as for ``hvp``.
      vs: the directions stacked: each leaf of shape ``(count, *leaf_shape)``.

    Returns:
      The products stacked the same way: ``H v_i`` is ``tree_map(lambda a: a[i], result)``.
    """
    _check_like_params("batched_hvp", "vs", params, vs, _leading_count("batched_hvp", "vs", vs))
    product = _jit_batched_hvp(f, params, vs, _method("batched_hvp", method))
    _require_finite("batched_hvp", "vs", vs)  # after the dispatch, so that its one sync overlaps the product
    return product


def ggn_vp(
    outputs_fn: Callable[[Params], Any], loss_fn: Callable[[Any], jax.Array], params: Params, v: Params
) -> Params:
    """The generalized Gauss-Newton product G v = J^T H_L J v (Schraudolph 2002).

    Args:
      outputs_fn: ``outputs_fn(params) -> outputs``, the network on a batch.
      loss_fn: ``loss_fn(outputs) -> scalar``, the loss of those outputs.
      params, v: the point and the direction, as for ``hvp``.

    Returns:
      G v in the params' structure.  G is positive semi-definite when
      ``loss_fn`` is convex (squared error, cross-entropy), and equals the
      Hessian of ``loss_fn(outputs_fn(params))`` when ``outputs_fn`` is linear
      in the params.
    """
    _check_like_params("ggn_vp", "v", params, v)
    product = _jit_ggn_vp(outputs_fn, loss_fn, params, v)
    _require_finite("ggn_vp", "v", v)  # after the dispatch, so that its one sync overlaps the product
    return product


def hessian(f: Callable[[Params], jax.Array], params: Params, *, max_dim: int = 4096) -> jax.Array:
    """The full Hessian of ``f`` at ``params`` as a (P, P) matrix, by ``jax.hessian``.

    Rows and columns follow ``flatten_params`` order.  For small models only:
    it costs P Hessian-vector products and P^2 numbers of memory.

    Args:
      f: ``f(params) -> scalar``.
      params: the point.
      max_dim: refuse a Hessian with more than this many rows (raise it knowingly).
    """
    flat, unflatten = flatten_params(params)
    if flat.size > max_dim:
        raise ConfigError(
            "hessian",
            f"the params hold {flat.size} numbers, so the Hessian would be {flat.size} x {flat.size}; "
            f"max_dim is {max_dim}. Use a CurvatureOperator with lanczos or spectral_density instead, "
            "or raise max_dim",
        )
    return jax.jit(jax.hessian(lambda w: f(unflatten(w))))(flat)


# --------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------


def _tree_axpy(a: float | jax.Array, x: Params, y: Params) -> Params:
    return jax.tree_util.tree_map(lambda xi, yi: yi + (a * xi).astype(yi.dtype), x, y)


@jax.tree_util.register_pytree_node_class
class CurvatureOperator:
    """A symmetric linear map v -> A v on parameter pytrees: the Hessian or the GGN of a loss.

    Build one with ``hessian_operator`` or ``ggn_operator``.  Its pytree
    children are the params and the data; the loss functions, the kind and
    the batch size are static, so a jit-compiled method over the operator
    compiles once per loss function, not once per params.

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
            return _hessian_product(bind(f), self.params, v, self.method)
        outputs_fn, loss_fn = self.functions
        return _ggn_product(bind(outputs_fn), bind(loss_fn), self.params, v)

    def _unchecked_matvec(self, v: Params) -> Params:
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
                return _tree_axpy(self.batch_size / n, self._batch_product(batch, v), acc), None

            total, _ = jax.lax.scan(accumulate, total, stacked)
        if rest:
            last = jax.tree_util.tree_map(lambda a: a[full * self.batch_size :], self.data)
            total = _tree_axpy(rest / n, self._batch_product(last, v), total)
        return total

    def matvec(self, v: Params) -> Params:
        """A v for a pytree ``v`` of the params' structure."""
        _check_like_params(f"{self.kind} operator", "v", self.params, v)
        return _jit_matvec(self, v)

    def matmat(self, vs: Params) -> Params:
        """A v_i for directions stacked on a leading axis of every leaf, vectorized with ``jax.vmap``."""
        count = _leading_count(f"{self.kind} operator", "vs", vs)
        _check_like_params(f"{self.kind} operator", "vs", self.params, vs, count)
        return _jit_matmat(self, vs)

    def to_dense(self, max_dim: int = 4096) -> jax.Array:
        """The operator as a (P, P) matrix in ``flatten_params`` order, one product per column."""
        if self.dim > max_dim:
            raise ConfigError(
                f"{self.kind} operator", f"{self.dim} params exceed max_dim={max_dim} for a dense matrix"
            )
        return _jit_dense(self)

    def flat_matvec(self) -> Callable[[jax.Array], jax.Array]:
        """The product on flattened vectors (``flatten_params`` order), for Krylov loops."""
        _, unflatten = flatten_params(self.params)
        return lambda w: ravel_pytree(self._unchecked_matvec(unflatten(w)))[0]


@jax.jit
def _jit_matvec(op: CurvatureOperator, v: Params) -> Params:
    return op._unchecked_matvec(v)


@jax.jit
def _jit_matmat(op: CurvatureOperator, vs: Params) -> Params:
    return jax.vmap(op._unchecked_matvec)(vs)


@jax.jit
def _jit_dense(op: CurvatureOperator) -> jax.Array:
    flat, _ = flatten_params(op.params)
    # Column j is A e_j; A is symmetric, so rows and columns agree.
    return jax.vmap(op.flat_matvec())(jnp.eye(flat.size, dtype=flat.dtype)).T


def _check_data(where: str, data: Any, batch_size: int | None) -> int | None:
    if data is None:
        if batch_size is not None:
            raise ConfigError(where, "batch_size is only meaningful together with data")
        return None
    n = _leading_count(where, "data", data)
    if n == 0:
        raise ConfigError(where, "data holds no examples")
    return n if batch_size is None else require_positive_int(where, "batch_size", batch_size)


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
    _require_finite("hessian_operator", "params", params)
    batch_size = _check_data("hessian_operator", data, batch_size)
    return CurvatureOperator("hessian", (f,), params, data, batch_size, _method("hessian_operator", method))


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
      params, data, batch_size: as for ``hessian_operator``.
    """
    _require_finite("ggn_operator", "params", params)
    batch_size = _check_data("ggn_operator", data, batch_size)
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
    model in eval mode, with ``data=(x, y)``.  A regularizer is not a loss of
    the outputs, so it has no Gauss-Newton form and ``kind="ggn"`` refuses
    one: an L2 penalty's Hessian is 2 lambda I, add it as ``damping``.
    """
    if kind not in ("hessian", "ggn"):
        raise ConfigError("model_operator", f"kind must be 'hessian' or 'ggn', got {kind!r}")
    functions = _model_functions(model, loss, regularizer)
    if kind == "hessian":
        return hessian_operator(functions.cost, params, (x, y), batch_size=batch_size)
    if regularizer is not None:
        raise ConfigError("model_operator", "a regularizer has no Gauss-Newton form; add it as damping")
    return ggn_operator(functions.outputs, functions.loss, params, (x, y), batch_size=batch_size)


class _ModelFunctions(NamedTuple):
    cost: Callable
    outputs: Callable
    loss: Callable


_MODEL_FUNCTIONS: dict[tuple, _ModelFunctions] = {}


def _model_functions(model: Layer, loss: Callable, regularizer: Callable | None) -> _ModelFunctions:
    """The same three function objects for the same (model, loss, regularizer), so jit caches hit."""
    cache_key = (model, loss, regularizer)
    if cache_key not in _MODEL_FUNCTIONS:

        def cost(params, batch):
            x, y = batch
            value = loss(model.apply(params, x), y)
            return value if regularizer is None else value + regularizer(params)

        _MODEL_FUNCTIONS[cache_key] = _ModelFunctions(
            cost, lambda params, batch: model.apply(params, batch[0]), lambda out, batch: loss(out, batch[1])
        )
    return _MODEL_FUNCTIONS[cache_key]


# --------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------


class _LanczosState(NamedTuple):
    basis: jax.Array  # (m + 1, P); rows beyond the current step are zero
    alphas: jax.Array  # (m,) diagonal of T
    betas: jax.Array  # (m,) betas[j] couples basis rows j and j + 1
    step: jax.Array  # how many steps are done
    norm: jax.Array  # running max of ||A q_j||, the scale for breakdown
    finite: jax.Array  # every product so far was finite
    converged: jax.Array


def _orthogonalize(basis: jax.Array, vectors: jax.Array) -> jax.Array:
    """One Gram-Schmidt pass: the rows of ``vectors`` projected off the rows of ``basis``.

    The rows go together so that the pass reads the basis, the loop's
    largest buffer, once for all of them: on a CPU that read is the cost.
    """
    return vectors - (basis.T @ (basis @ vectors.T)).T


def _lanczos_step(matvec: Callable, key: jax.Array, state: _LanczosState) -> _LanczosState:
    """One step of Lanczos with full reorthogonalization; restarts on breakdown.

    The three-term recurrence removes the large components along q_j and
    q_{j-1} first, so that one full Gram-Schmidt pass over the basis then
    keeps it orthogonal to working precision (Golub and Van Loan, 10.3.1).
    """
    j = state.step
    q = state.basis[j]
    w = matvec(q)
    finite = state.finite & jnp.all(jnp.isfinite(w))
    w = jnp.where(finite, w, 0.0)
    alpha = jnp.vdot(q, w)
    norm = jnp.maximum(state.norm, jnp.linalg.norm(w))
    previous_beta = jnp.where(j > 0, state.betas[j - 1], 0.0)
    w = w - alpha * q - previous_beta * state.basis[j - 1]
    # Breakdown: the Krylov space is invariant.  T is then block diagonal, and
    # a fresh direction orthogonal to the basis starts the next block.
    fresh = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
    w, fresh = _orthogonalize(state.basis, jnp.stack([w, fresh]))
    beta = jnp.linalg.norm(w)
    tiny = jnp.finfo(w.dtype).tiny
    broke = beta <= 10 * jnp.finfo(w.dtype).eps * jnp.maximum(norm, tiny)
    fresh = fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny)
    next_q = jnp.where(broke, fresh, w / jnp.maximum(beta, tiny))
    return state._replace(
        basis=state.basis.at[j + 1].set(next_q),
        alphas=state.alphas.at[j].set(alpha),
        betas=state.betas.at[j].set(jnp.where(broke, 0.0, beta)),
        step=j + 1,
        norm=norm,
        finite=finite,
    )


def _initial_state(start: jax.Array, capacity: int) -> _LanczosState:
    basis = jnp.zeros((capacity + 1, start.size), start.dtype).at[0].set(start / jnp.linalg.norm(start))
    zeros = jnp.zeros(capacity, start.dtype)
    scalar = jnp.array(0.0, start.dtype)
    return _LanczosState(basis, zeros, zeros, jnp.array(0), scalar, jnp.array(True), jnp.array(False))


@functools.partial(jax.jit, static_argnames=("capacity",))
def _grow(state: _LanczosState, *, capacity: int) -> _LanczosState:
    """The same state with room for ``capacity`` steps (zero rows and entries appended)."""
    extra = capacity - state.alphas.shape[0]
    return state._replace(
        basis=jnp.pad(state.basis, ((0, extra), (0, 0))),
        alphas=jnp.pad(state.alphas, (0, extra)),
        betas=jnp.pad(state.betas, (0, extra)),
    )


def _tridiagonal(alphas: jax.Array, betas: jax.Array, steps: jax.Array, pad: jax.Array) -> jax.Array:
    """T of the first ``steps`` steps, padded to full size with ``pad`` on the diagonal (decoupled)."""
    m = alphas.shape[0]
    active = jnp.arange(m) < steps
    diagonal = jnp.where(active, alphas, pad)
    off = jnp.where(jnp.arange(m - 1) < steps - 1, betas[:-1], 0.0)
    return jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _ritz(state: _LanczosState, k: int, largest: bool):
    """The k wanted Ritz values, their coordinates in the basis, and residual bounds beta_j |s_{j,i}|."""
    m = state.alphas.shape[0]
    steps = state.step
    active = jnp.arange(m) < steps
    # Gershgorin bounds every Ritz value; pad the inactive block beyond it, on the side not wanted.
    radius = jnp.max(jnp.where(active, jnp.abs(state.alphas) + 2 * state.betas, 0.0))
    pad = -(2 * radius + 1) if largest else 2 * radius + 1
    values, vectors = jnp.linalg.eigh(_tridiagonal(state.alphas, state.betas, steps, pad))
    order = jnp.argsort(-values if largest else values)[:k]
    values, vectors = values[order], vectors[:, order]
    last = jnp.take(vectors, steps - 1, axis=0)
    residuals = jnp.abs(jnp.take(state.betas, steps - 1) * last)
    return values, vectors, residuals


class Eigenpairs(NamedTuple):
    """Ritz pairs from ``lanczos``.

    Attributes:
      values: (k,) eigenvalues, largest first for ``which="top"``, smallest first for ``"bottom"``.
      vectors: the eigenvectors as a pytree of the params' structure, each
        leaf stacked on a leading axis of k; unit norm over the whole tree.
      residuals: (k,) ||A y_i - theta_i y_i||, an error bound on each value.
      iterations: the Lanczos steps (= products) taken.
      converged: whether every residual met ``tol`` before ``max_iterations``.
    """

    values: jax.Array
    vectors: Params
    residuals: jax.Array
    iterations: int
    converged: bool


def _start_vector(where: str, op: CurvatureOperator, v0: Params | None, key: jax.Array) -> jax.Array:
    flat, _ = flatten_params(op.params)
    if v0 is None:
        return jax.random.normal(key, flat.shape, flat.dtype)
    _check_like_params(where, "v0", op.params, v0)
    _require_finite(where, "v0", v0)
    start = flatten_params(v0)[0].astype(flat.dtype)
    if not bool(jnp.any(start != 0)):
        raise ConfigError(where, "v0 must not be the zero vector")
    return start


@functools.partial(jax.jit, static_argnames=("k", "largest"))
def _lanczos_run(op, state, key, tol, *, k, largest):
    """Continue Lanczos until converged, non-finite, or out of room in ``state``."""
    matvec = op.flat_matvec()
    capacity = state.alphas.shape[0]
    floor = jnp.finfo(state.basis.dtype).eps ** (2 / 3)

    def keep_going(state):
        return (state.step < capacity) & state.finite & ~state.converged

    def step(state):
        state = _lanczos_step(matvec, key, state)
        values, _, residuals = _ritz(state, k, largest)
        scale = jnp.maximum(jnp.abs(values), floor * jnp.max(jnp.abs(values)))
        return state._replace(converged=(state.step >= k) & jnp.all(residuals <= tol * scale))

    return jax.lax.while_loop(keep_going, step, state)


@functools.partial(jax.jit, static_argnames=("k", "largest"))
def _ritz_pairs(state, *, k, largest):
    values, coordinates, residuals = _ritz(state, k, largest)
    return values, coordinates.T @ state.basis[:-1], residuals


def _run_growing(op, state, key, tol, *, k, largest, max_iterations):
    """Run in a basis that doubles as needed: each step reads the whole basis, so keep it short.

    Each capacity compiles once (and is cached), so there are at most
    log2(max_iterations) compilations per loss function.
    """
    while True:
        state = _lanczos_run(op, state, key, tol, k=k, largest=largest)
        capacity = state.alphas.shape[0]
        if bool(state.converged) or not bool(state.finite) or capacity >= max_iterations:
            return state
        state = _grow(state, capacity=min(2 * capacity, max_iterations))


def lanczos(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: str = "top",
    tol: float = 1e-6,
    max_iterations: int | None = None,
    key: jax.Array | None = None,
    v0: Params | None = None,
) -> Eigenpairs:
    """The k largest (``"top"``) or smallest (``"bottom"``) eigenpairs of a curvature operator.

    Lanczos with full reorthogonalization (Golub and Van Loan, section 10.1)
    as jit-compiled ``lax.while_loop``s on the device, in a basis of 16
    vectors that doubles whenever it fills.  It stops once every
    wanted Ritz pair has residual ||A y - theta y|| = beta_j |s_{j,i}| at most
    ``tol * |theta_i|`` (an error bound on theta_i; the actual error is
    usually the square of it over the spectral gap), or after
    ``max_iterations`` products.  Memory: up to (max_iterations + 1) x P numbers.

    Args:
      op: a ``CurvatureOperator``.
      k: how many eigenpairs, 1 <= k <= P.
      which: ``"top"`` (largest, algebraically) or ``"bottom"`` (smallest).
      tol: relative residual at which to stop.
      max_iterations: the most products, k <= max_iterations <= P; default
        ``min(P, max(10 k, 100))``.
      key: PRNG key for the start vector (and for restarts after breakdown).
      v0: a start vector in the params' structure instead of a random one.

    Returns:
      ``Eigenpairs``; check ``converged`` (or ``residuals``) before trusting
      a value to ``tol``.  A residual bound says that *some* eigenvalue lies
      that close, not that it is the k-th largest: with a loose ``tol`` an
      early Ritz value can still be short of the top one.

    Raises:
      ConfigError: k or max_iterations out of range, or an unknown ``which``.
      NonFiniteCurvatureError: a product held NaN or inf (names the step).
    """
    k, max_iterations = _krylov_sizes("lanczos", op.dim, k, max_iterations)
    if which not in ("top", "bottom"):
        raise ConfigError("lanczos", f"which must be 'top' or 'bottom', got {which!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    start_key, restart_key = jax.random.split(key)
    start = _start_vector("lanczos", op, v0, start_key)
    largest = which == "top"
    state = _initial_state(start, min(max_iterations, max(2 * k, 16)))
    state = _run_growing(op, state, restart_key, tol, k=k, largest=largest, max_iterations=max_iterations)
    if not bool(state.finite):
        raise NonFiniteCurvatureError(
            "lanczos", f"the {op.kind}-vector product was not finite at step {int(state.step)}"
        )
    values, vectors, residuals = _ritz_pairs(state, k=k, largest=largest)
    _, unflatten = flatten_params(op.params)
    return Eigenpairs(values, jax.vmap(unflatten)(vectors), residuals, int(state.step), bool(state.converged))


def _krylov_sizes(
    where: str, dim: int, k: int, iterations: int | None, argument: str = "max_iterations"
) -> tuple[int, int]:
    k = require_positive_int(where, "k", k)
    if k > dim:
        raise ConfigError(where, f"k must be at most the number of parameters ({dim}), got k={k}")
    if iterations is None:
        return k, min(dim, max(10 * k, 100))
    iterations = require_positive_int(where, argument, iterations)
    if not k <= iterations <= dim:
        raise ConfigError(
            where,
            f"{argument} must lie between k={k} and the number of parameters {dim}, got {iterations}",
        )
    return k, iterations


# --------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# --------------------------------------------------------------------------


class SpectralDensity(NamedTuple):
    """The eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, section 2).

    For each probe v (unit norm), m Lanczos steps give a Gauss quadrature
    ``sum_i weights_i delta(t - nodes_i)`` of the measure v^T delta(t - A) v;
    the density is their mean over probes.

    Attributes:
      nodes: (probes, m) Ritz values.
      weights: (probes, m) squared first components of T's eigenvectors; each row sums to 1.
      dim: P, so that ``dim * moment(1)`` estimates the trace.
    """

    nodes: jax.Array
    weights: jax.Array
    dim: int

    def moment(self, power: int) -> float:
        """The estimate of tr(A^power) / P; exact in expectation for power < 2m."""
        return float(jnp.mean(jnp.sum(self.weights * self.nodes**power, axis=1)))

    def default_sigma(self) -> float:
        """Gaussian width for ``evaluate``: 1% of the spectrum's range (at least 1e-6)."""
        return max(0.01 * float(jnp.max(self.nodes) - jnp.min(self.nodes)), 1e-6)

    def evaluate(self, grid: Any, sigma: float | None = None) -> np.ndarray:
        """The density smoothed by a Gaussian of width ``sigma``, at the points of ``grid``."""
        sigma = self.default_sigma() if sigma is None else sigma
        grid = np.asarray(grid, np.float64)[:, None]
        nodes = np.asarray(self.nodes, np.float64).reshape(-1)
        weights = np.asarray(self.weights, np.float64).reshape(-1) / self.nodes.shape[0]
        kernel = np.exp(-0.5 * ((grid - nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ weights


@functools.partial(jax.jit, static_argnames=("steps",))
def _quadrature(op, starts, key, *, steps):
    matvec = op.flat_matvec()

    def one_probe(start, probe_key):
        state = _initial_state(start, steps)
        state = jax.lax.fori_loop(0, steps, lambda _, s: _lanczos_step(matvec, probe_key, s), state)
        nodes, vectors = jnp.linalg.eigh(_tridiagonal(state.alphas, state.betas, state.step, 0.0))
        return nodes, vectors[0] ** 2, state.finite

    return jax.vmap(one_probe)(starts, jax.random.split(key, starts.shape[0]))


def spectral_density(
    op: CurvatureOperator,
    *,
    num_probes: int = 8,
    num_iterations: int | None = None,
    key: jax.Array | None = None,
) -> SpectralDensity:
    """The eigenvalue spectral density of a curvature operator by stochastic Lanczos quadrature.

    Ghorbani, Krishnan and Xiao (2019) run m = 90 steps from each of a few
    Gaussian probes; the probes run together, vectorized with ``jax.vmap``,
    so memory is num_probes x (num_iterations + 1) x P numbers.

    Args:
      op: a ``CurvatureOperator``.
      num_probes: independent random start vectors.
      num_iterations: Lanczos steps per probe, at most P; default min(P, 80).
      key: PRNG key for the probes.

    Returns:
      A ``SpectralDensity``; plot it with ``plot_spectral_density``.
    """
    num_probes = require_positive_int("spectral_density", "num_probes", num_probes)
    if num_iterations is None:
        num_iterations = min(op.dim, 80)
    _, steps = _krylov_sizes("spectral_density", op.dim, 1, num_iterations, "num_iterations")
    key = jax.random.PRNGKey(0) if key is None else key
    probe_key, restart_key = jax.random.split(key)
    flat, _ = flatten_params(op.params)
    starts = jax.random.normal(probe_key, (num_probes, flat.size), flat.dtype)
    nodes, weights, finite = _quadrature(op, starts, restart_key, steps=steps)
    if not bool(jnp.all(finite)):
        raise NonFiniteCurvatureError("spectral_density", f"a {op.kind}-vector product was not finite")
    return SpectralDensity(nodes, weights, op.dim)


def plot_spectral_density(
    densities: SpectralDensity | Mapping[str, SpectralDensity],
    path: str,
    *,
    sigma: float | None = None,
    num_points: int = 1000,
    title: str = "Eigenvalue density",
) -> str:
    """Plot one or more spectral densities on a log scale (as Ghorbani et al., figure 1) to a PNG.

    Args:
      densities: a ``SpectralDensity``, or a mapping from legend labels to them.
      path: the file to write.
      sigma: Gaussian width; default each density's ``default_sigma``.
      num_points: grid points across the joint range.

    Returns:
      ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib comes with the examples extra
        raise ImportError(
            "plot_spectral_density needs matplotlib: pip install 'purenet[examples]'"
        ) from error
    if isinstance(densities, SpectralDensity):
        densities = {"": densities}
    low = min(float(jnp.min(d.nodes)) for d in densities.values())
    high = max(float(jnp.max(d.nodes)) for d in densities.values())
    margin = 0.05 * max(high - low, 1e-6)
    grid = np.linspace(low - margin, high + margin, num_points)
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, density in densities.items():
        values = np.maximum(density.evaluate(grid, sigma), 1e-12)
        axes.semilogy(grid, values, label=label or None)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density")
    axes.set_title(title)
    if any(densities):
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------
# Trace estimators
# --------------------------------------------------------------------------


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
      value: the estimate of tr(A).
      standard_error: its standard error from the spread of the probes
        (Hutchinson), or of the residual part's probes (Hutch++).
      num_matvecs: the products spent.
    """

    value: float
    standard_error: float
    num_matvecs: int


def _standard_error(forms: jax.Array) -> float:
    """The standard error of the mean of the probes' quadratic forms (inf for a single probe)."""
    count = forms.shape[0]
    return float(jnp.std(forms, ddof=1)) / math.sqrt(count) if count > 1 else math.inf


@jax.jit
def _quadratic_forms(op, probes):
    matvec = op.flat_matvec()
    return jax.vmap(lambda z: jnp.vdot(z, matvec(z)))(probes)


def hutchinson_trace(
    op: CurvatureOperator, *, num_probes: int = 100, key: jax.Array | None = None
) -> TraceEstimate:
    """tr(A) ~ mean of z^T A z over Rademacher probes z (Hutchinson 1989).

    Unbiased, with variance 2 sum_{i != j} A_ij^2 per probe.
    The probes' products run vectorized (``jax.vmap``): memory num_probes x P.
    """
    num_probes = require_positive_int("hutchinson_trace", "num_probes", num_probes)
    flat, _ = flatten_params(op.params)
    key = jax.random.PRNGKey(0) if key is None else key
    forms = _quadratic_forms(op, jax.random.rademacher(key, (num_probes, flat.size), dtype=flat.dtype))
    _require_finite("hutchinson_trace", f"every {op.kind}-vector product", forms)
    return TraceEstimate(float(jnp.mean(forms)), _standard_error(forms), num_probes)


@jax.jit
def _hutchpp(op, sketch, probes):
    matmat = jax.vmap(op.flat_matvec())
    basis, _ = jnp.linalg.qr(matmat(sketch.T).T)  # (P, s): an orthonormal basis of range(A S)
    top = jnp.trace(basis.T @ matmat(basis.T).T)
    deflated = probes - basis @ (basis.T @ probes)
    forms = jnp.sum(deflated * matmat(deflated.T).T, axis=0)
    return top, forms


def hutchpp_trace(
    op: CurvatureOperator, *, num_matvecs: int = 99, key: jax.Array | None = None
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021, Algorithm 1): exact trace on a low-rank sketch plus Hutchinson on the rest.

    With s = num_matvecs // 3: Q = orth(A S) for a Rademacher S of s columns
    gives tr(Q^T A Q) exactly, and Hutchinson with the remaining
    num_matvecs - 2 s probes, projected off Q, estimates the rest.  For a
    matrix with quickly decaying eigenvalues (a network's Hessian) the error
    falls as 1/num_matvecs rather than Hutchinson's 1/sqrt(num_matvecs).
    """
    num_matvecs = require_positive_int("hutchpp_trace", "num_matvecs", num_matvecs)
    if num_matvecs < 3:
        raise ConfigError("hutchpp_trace", f"num_matvecs must be at least 3, got {num_matvecs}")
    flat, _ = flatten_params(op.params)
    sketch_size = min(num_matvecs // 3, flat.size)
    probe_count = num_matvecs - 2 * sketch_size
    key = jax.random.PRNGKey(0) if key is None else key
    sketch_key, probe_key = jax.random.split(key)
    sketch = jax.random.rademacher(sketch_key, (flat.size, sketch_size), dtype=flat.dtype)
    probes = jax.random.rademacher(probe_key, (flat.size, probe_count), dtype=flat.dtype)
    top, forms = _hutchpp(op, sketch, probes)
    _require_finite("hutchpp_trace", f"every {op.kind}-vector product", (top, forms))
    return TraceEstimate(float(top + jnp.mean(forms)), _standard_error(forms), num_matvecs)


# --------------------------------------------------------------------------
# Conjugate gradients and Hessian-free steps
# --------------------------------------------------------------------------


class CGResult(NamedTuple):
    """The solution of (A + damping I) x = b by conjugate gradients.

    Attributes:
      x: the solution, in the params' structure.
      residual_norm: ||b - (A + damping I) x||, recomputed with one more product.
      relative_residual: residual_norm / ||b||.
      converged: whether relative_residual <= tol.
    """

    x: Params
    residual_norm: jax.Array
    relative_residual: jax.Array
    converged: jax.Array


def _cg(op, b, x0, damping, tol, maxiter) -> tuple[CGResult, Params]:
    """The CG result and A x (undamped), the product the true residual needed anyway."""
    x, _ = jax.scipy.sparse.linalg.cg(
        lambda v: _tree_axpy(damping, v, op._unchecked_matvec(v)), b, x0=x0, tol=tol, maxiter=maxiter
    )
    product = op._unchecked_matvec(x)
    residual = jax.tree_util.tree_map(jnp.subtract, b, _tree_axpy(damping, x, product))
    residual_norm = jnp.sqrt(_tree_vdot(residual, residual))
    b_norm = jnp.sqrt(_tree_vdot(b, b))
    relative = residual_norm / jnp.maximum(b_norm, jnp.finfo(residual_norm.dtype).tiny)
    # jax's cg stops at tol relative to ||b|| on its own recurrence; allow rounding in the recomputed one.
    return CGResult(x, residual_norm, relative, relative <= tol * 1.01), product


@functools.partial(jax.jit, static_argnames=("maxiter",))
def _jit_cg(op, b, x0, damping, tol, maxiter) -> CGResult:
    return _cg(op, b, x0, damping, tol, maxiter)[0]


def cg_solve(
    op: CurvatureOperator,
    b: Params,
    *,
    damping: float = 0.0,
    tol: float = 1e-5,
    maxiter: int | None = None,
    x0: Params | None = None,
) -> CGResult:
    """Solve (A + damping I) x = b by conjugate gradients (``jax.scipy.sparse.linalg.cg``).

    With A the Hessian or GGN and b the gradient, -x is the damped Newton
    step of Hessian-free optimization (Martens 2010, section 4).  CG needs
    A + damping I positive definite: use the GGN, or enough damping.

    Args:
      op: a ``CurvatureOperator``.
      b: the right-hand side, in the params' structure.
      damping: lambda >= 0, the Levenberg-Marquardt term.
      tol: relative residual ||r|| / ||b|| at which CG stops.
      maxiter: the most CG iterations (default 10 P, jax's own).
      x0: a warm start (Martens 2010 section 4.5 starts from the last step).
    """
    _check_like_params("cg_solve", "b", op.params, b)
    _require_finite("cg_solve", "b", b)
    if x0 is not None:
        _check_like_params("cg_solve", "x0", op.params, x0)
    if not damping >= 0:
        raise ConfigError("cg_solve", f"damping must be >= 0, got {damping!r}")
    if maxiter is not None:
        maxiter = require_positive_int("cg_solve", "maxiter", maxiter)
    result = _jit_cg(op, b, x0, damping, tol, maxiter)
    _require_finite("cg_solve", "the solution", result.x)
    return result


class HessianFreeState(NamedTuple):
    """What a Hessian-free step carries: the params, the damping and the last CG solution (a warm start)."""

    params: Params
    damping: jax.Array
    direction: Params


class HessianFreeInfo(NamedTuple):
    """What one Hessian-free step did.

    Attributes:
      loss: the cost before the step.
      new_loss: the cost at the proposed point.
      reduction_ratio: rho = (new_loss - loss) / (predicted change by the quadratic model).
      accepted: whether the step lowered the cost (otherwise the params stay).
      cg_relative_residual: how well CG solved its system.
    """

    loss: jax.Array
    new_loss: jax.Array
    reduction_ratio: jax.Array
    accepted: jax.Array
    cg_relative_residual: jax.Array


def make_hessian_free_step(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    *,
    curvature: str = "ggn",
    cg_tol: float = 1e-4,
    cg_maxiter: int = 50,
) -> tuple[Callable, Callable]:
    """A jit-compiled damped Newton step by CG (Hessian-free optimization, Martens 2010).

    Each step solves (A + lambda I) d = g by ``cg_solve`` from the last d,
    proposes theta - d, keeps it only if the cost falls, and adapts lambda by
    the Levenberg-Marquardt rule of section 4.1: times 2/3 when the reduction
    ratio rho > 3/4, times 3/2 when rho < 1/4.

    Args:
      model, loss: the network and its mean loss ``loss(outputs, targets)``.
      curvature: ``"ggn"`` (positive semi-definite, Martens' choice) or ``"hessian"``.
      cg_tol, cg_maxiter: CG's relative tolerance and iteration cap per step.

    Returns:
      ``(init, step)``: ``init(params, damping=1.0) -> HessianFreeState`` and
      ``step(state, x, y) -> (state, HessianFreeInfo)``.
    """
    if curvature not in ("hessian", "ggn"):
        raise ConfigError(
            "make_hessian_free_step", f"curvature must be 'hessian' or 'ggn', got {curvature!r}"
        )
    functions = _model_functions(model, loss, None)

    def init(params: Params, damping: float = 1.0) -> HessianFreeState:
        _require_finite("make_hessian_free_step", "params", params)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return HessianFreeState(params, jnp.asarray(damping, jnp.result_type(float)), zeros)

    @jax.jit
    def step(state: HessianFreeState, x, y) -> tuple[HessianFreeState, HessianFreeInfo]:
        batch, n = (x, y), x.shape[0]
        value, grads = jax.value_and_grad(functions.cost)(state.params, batch)
        if curvature == "ggn":
            op = CurvatureOperator("ggn", (functions.outputs, functions.loss), state.params, batch, n, None)
        else:
            op = CurvatureOperator("hessian", (functions.cost,), state.params, batch, n, METHODS[0])
        solved, curvature_times_step = _cg(op, grads, state.direction, state.damping, cg_tol, cg_maxiter)
        proposal = jax.tree_util.tree_map(jnp.subtract, state.params, solved.x)
        new_value = functions.cost(proposal, batch)
        # The quadratic model's change for the step -d: -g.d + d.(A d) / 2 (undamped A, as Martens).
        predicted = -_tree_vdot(grads, solved.x) + 0.5 * _tree_vdot(solved.x, curvature_times_step)
        rho = (new_value - value) / jnp.where(predicted < 0, predicted, -jnp.finfo(value.dtype).tiny)
        accepted = jnp.isfinite(new_value) & (new_value < value)
        damping = jnp.where(rho > 0.75, state.damping * 2 / 3, state.damping)
        damping = jnp.where((rho < 0.25) | ~accepted, damping * 1.5, damping)
        keep = lambda new, old: jnp.where(accepted, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep, proposal, state.params)
        direction = jax.tree_util.tree_map(keep, solved.x, state.direction)
        info = HessianFreeInfo(value, new_value, rho, accepted, solved.relative_residual)
        return HessianFreeState(params, damping, direction), info

    return init, step


__all__ = [
    "CGResult",
    "CurvatureOperator",
    "Eigenpairs",
    "HessianFreeInfo",
    "HessianFreeState",
    "NonFiniteCurvatureError",
    "SpectralDensity",
    "TraceEstimate",
    "batched_hvp",
    "cg_solve",
    "flatten_params",
    "ggn_operator",
    "ggn_vp",
    "hessian",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "make_hessian_free_step",
    "model_operator",
    "plot_spectral_density",
    "spectral_density",
]
