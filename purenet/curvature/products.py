"""Hessian- and Gauss-Newton-vector products on parameter pytrees, and the dense Hessian.

Products (Pearlmutter 1994, "Fast exact multiplication by the Hessian";
Schraudolph 2002, "Fast curvature matrix-vector products for second-order
gradient descent"):

    H v = d/de grad f(theta + e v) |_{e=0}    forward over reverse: jax.jvp of jax.grad
        = grad_theta <grad f(theta), v>       reverse over reverse: jax.grad of a dot product
    G v = J^T H_L J v                         generalized Gauss-Newton: a jvp, the loss Hessian, a vjp

where J = d outputs / d theta and H_L is the Hessian of the loss in the
network's outputs; G is positive semi-definite whenever the loss is convex in
the outputs (Martens 2020, "New insights and perspectives on the natural
gradient method", section 8).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from purenet.compiled import cached
from purenet.core import ConfigError
from purenet.curvature.base import (
    METHODS,
    Params,
    check_method,
    check_vector,
    flatten_params,
    require_finite,
    require_finite_result,
    scalar_valued,
    tree_vdot,
)


def hessian_product(f: Callable, params: Params, v: Params, method: str) -> Params:
    """H v of ``f`` at ``params`` by ``method`` (one of ``METHODS``); a non-scalar f refused at trace time."""
    f = scalar_valued("hessian product", f)
    if method == "forward_over_reverse":
        return jax.jvp(jax.grad(f), (params,), (v,))[1]
    return jax.grad(lambda p: tree_vdot(jax.grad(f)(p), v))(params)


def ggn_product(outputs_fn: Callable, loss_fn: Callable, params: Params, v: Params) -> Params:
    """G v = J^T H_L J v, unchecked and traceable."""
    # One forward pass: linearize gives J v, and the transpose of that linear map gives J^T u.
    loss_fn = scalar_valued("ggn product", loss_fn)
    outputs, jvp_fn = jax.linearize(outputs_fn, params)
    loss_hessian_jv = jax.jvp(jax.grad(loss_fn), (outputs,), (jvp_fn(v),))[1]
    return jax.linear_transpose(jvp_fn, params)(loss_hessian_jv)[0]


# The compiled products are built once per user function in purenet's one bounded cache
# (``purenet.compiled``): the same ``f`` reaches the same jit-compiled function, and a function
# evicted from the cache takes its compiled code with it.


@cached
def _compiled_hvp(f: Callable, method: str, batched: bool) -> Callable:
    def product(params, v):
        return hessian_product(f, params, v, method)

    return jax.jit(jax.vmap(product, in_axes=(None, 0)) if batched else product)


@cached
def _compiled_ggn_vp(outputs_fn: Callable, loss_fn: Callable) -> Callable:
    return jax.jit(functools.partial(ggn_product, outputs_fn, loss_fn))


@cached
def _compiled_hessian(f: Callable) -> Callable:
    def dense(params):
        flat, unflatten = flatten_params(params)
        return jax.hessian(scalar_valued("hessian", lambda w: f(unflatten(w))))(flat)

    return jax.jit(dense)


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

    Raises:
      ParamsError: ``v`` not shaped like the params: the first mismatching
        leaf of ``v`` is named, with the shape or dtype kind expected and got.
      NonFiniteCurvatureError: ``v`` holds NaN or inf (names the leaf).

    Examples:
      For f(w) = sum(w^3) the Hessian is diag(6 w):

      >>> import jax.numpy as jnp
      >>> import purenet as pn
      >>> print(pn.hvp(lambda w: jnp.sum(w**3), jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0])))
      [ 6. 12.]
    """
    check_vector("hvp", "v", v, params)
    product = _compiled_hvp(f, check_method("hvp", method), False)(params, v)
    _require_finite_inputs_and_result("hvp", params, "v", v, product)
    return product


def _require_finite_inputs_and_result(where: str, params: Params, what: str, v: Params, result: Any) -> None:
    """After the dispatch, so that the syncs overlap the product: the inputs first, then the result.

    A NaN input is named where it is (``v['b']``, ``params[0]['w']``); a NaN
    result from finite inputs means the loss itself is not finite there.
    """
    require_finite(where, what, v)
    require_finite(where, "params", params)
    require_finite_result(where, result)


def batched_hvp(
    f: Callable[[Params], jax.Array], params: Params, vs: Params, *, method: str = METHODS[0]
) -> Params:
    """Many Hessian-vector products in one call, vectorized with ``jax.vmap``.

    Args:
      f: as for ``hvp``.
      params: as for ``hvp``.
      vs: the directions stacked: each leaf of shape ``(count, *leaf_shape)``.
      method: as for ``hvp``.

    Returns:
      The products stacked the same way: ``H v_i`` is ``tree_map(lambda a: a[i], result)``.

    Raises:
      ParamsError: as for ``hvp``, and a single unstacked vector.
    """
    check_vector("batched_hvp", "vs", vs, params, stacked=True)
    product = _compiled_hvp(f, check_method("batched_hvp", method), True)(params, vs)
    _require_finite_inputs_and_result("batched_hvp", params, "vs", vs, product)
    return product


def ggn_vp(
    outputs_fn: Callable[[Params], Any], loss_fn: Callable[[Any], jax.Array], params: Params, v: Params
) -> Params:
    """The generalized Gauss-Newton product G v = J^T H_L J v (Schraudolph 2002).

    Args:
      outputs_fn: ``outputs_fn(params) -> outputs``, the network on a batch.
      loss_fn: ``loss_fn(outputs) -> scalar``, the loss of those outputs.
      params: the point, as for ``hvp``.
      v: the direction, as for ``hvp``.

    Returns:
      G v in the params' structure.  G is positive semi-definite when
      ``loss_fn`` is convex (squared error, cross-entropy), and equals the
      Hessian of ``loss_fn(outputs_fn(params))`` when ``outputs_fn`` is linear
      in the params.
    """
    check_vector("ggn_vp", "v", v, params)
    product = _compiled_ggn_vp(outputs_fn, loss_fn)(params, v)
    _require_finite_inputs_and_result("ggn_vp", params, "v", v, product)
    return product


def hessian(f: Callable[[Params], jax.Array], params: Params, *, max_dim: int = 4096) -> jax.Array:
    """The full Hessian of ``f`` at ``params`` as a (P, P) matrix, by ``jax.hessian``.

    Rows and columns follow ``flatten_params`` order.  For small models only:
    it costs P Hessian-vector products and P^2 numbers of memory.

    Args:
      f: ``f(params) -> scalar``.
      params: the point.
      max_dim: refuse a Hessian with more than this many rows (raise it knowingly).

    Returns:
      The (P, P) matrix.  Jit-compiled once per ``f``.
    """
    size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    if size > max_dim:
        raise ConfigError(
            "hessian",
            f"the params hold {size} numbers, so the Hessian would be {size} x {size}; "
            f"max_dim is {max_dim}. Use a CurvatureOperator with lanczos or spectral_density instead, "
            "or raise max_dim",
        )
    matrix = _compiled_hessian(f)(params)
    require_finite("hessian", "params", params)
    require_finite_result("hessian", matrix)
    return matrix
