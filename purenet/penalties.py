"""Norm penalties lambda * Omega(theta) (the book's sections 7.1.1 and 7.1.2), with their references.

    L2Penalty(lambda)   lambda/2 ||w||^2    reference gradient  lambda w
    L1Penalty(lambda)   lambda ||w||_1      reference gradient  lambda sign(w), sign(0) = 0

and second order (the R-pass, ``rop(params, v)``): the Hessian-vector
product of L2 is lambda v on the penalized leaves (0 on skipped ones: the
Hessian is lambda times the projection onto the penalized leaves, not
lambda I); L1 is piecewise linear, so its Hessian is 0 away from w = 0.

The sum runs over the penalized leaves: every leaf whose innermost dict key
is not in ``skip`` (biases, ``"b"``, by default).  Each penalty carries its
hand-derived ``Reference`` the way layers and losses do:
``forward(params) -> (value, pullback)``.  ``l1_penalty`` is written
w sign(w) so that JAX's derivative at w = 0 is sign(0) = 0, the smallest
subgradient, as in the reference (``jnp.abs`` would give 1 there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError, MissingReferenceError, Reference
from purenet.validate import is_traced, require_number


def _skip_names(owner: str, skip: Any) -> tuple[str, ...]:
    """``skip`` as a tuple of exact leaf names; a bare string is one name ("wb" skips "wb", not "w")."""
    names = (skip,) if isinstance(skip, str) else skip
    if not isinstance(names, (tuple, list, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(owner, f"skip must be a name or a sequence of names of params leaves, got {skip!r}")
    return tuple(names)


def _scale(owner: str, scale: Any) -> float:
    """lambda: a finite real >= 0 (a negative one would reward large weights).

    A traced scale (a swept hyperparameter under vmap or jit) passes
    unchecked, as every value check does under a trace; a concrete 0-d array is read.
    """
    if is_traced(scale):
        return scale
    if isinstance(scale, (jax.Array, np.ndarray)) and np.ndim(scale) == 0:
        scale = np.asarray(scale).item()
    return require_number(owner, "scale", scale, low=0.0)


def _skipped(path: tuple, skip: Sequence[str]) -> bool:
    last = path[-1] if path else None
    return isinstance(last, jax.tree_util.DictKey) and last.key in skip


def _penalized_leaves(params, skip: Sequence[str]) -> list[jax.Array]:
    """The leaves whose innermost dict key is not in ``skip`` (biases, by default)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [leaf for path, leaf in flat if not _skipped(path, skip)]


def l2_penalty(params: Any, scale: float, skip: Sequence[str] = ("b",)) -> jax.Array:
    """lambda * Omega with Omega = 1/2 ||w||^2 summed over the penalized leaves (eq. 7.1).

    Its gradient is lambda w on the penalized leaves and 0 on the skipped
    ones; its Hessian is the constant diagonal with lambda on every entry of
    a penalized leaf and 0 on every entry of a skipped one: lambda times the
    projection onto the penalized leaves, not lambda I (and not 2 lambda I,
    the Hessian of lambda ||w||^2 without the 1/2).

    Args:
      params: a params pytree.
      scale: lambda >= 0.
      skip: innermost dict keys left unpenalized; biases (``"b"``) by
        default, since they need little data to fit and penalizing them can
        cause underfitting (section 7.1).

    Returns:
      The penalty, a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import purenet as pn
      >>> params = {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([3.0])}
      >>> float(pn.l2_penalty(params, 0.1))  # 0.1 / 2 * (1^2 + 2^2): the bias is skipped
      0.25
      >>> v = {"w": jnp.ones((1, 2)), "b": jnp.ones(1)}
      >>> hv = pn.hvp(lambda p: pn.l2_penalty(p, 0.1), params, v)
      >>> print(hv["w"], hv["b"])  # H v: lambda v on the weights, 0 on the bias
      [[0.1 0.1]] [0.]
    """
    scale, skip = _scale("l2_penalty", scale), _skip_names("l2_penalty", skip)
    return scale * 0.5 * sum(jnp.sum(jnp.square(w)) for w in _penalized_leaves(params, skip))


def l1_penalty(params: Any, scale: float, skip: Sequence[str] = ("b",)) -> jax.Array:
    """lambda * Omega with Omega = ||w||_1 summed over the penalized leaves (eq. 7.18).

    |w| is written w sign(w) so that its derivative at w = 0 is sign(0) = 0,
    the smallest subgradient (``jnp.abs`` would give 1 there).
    """
    scale, skip = _scale("l1_penalty", scale), _skip_names("l1_penalty", skip)
    return scale * sum(jnp.sum(w * jnp.sign(w)) for w in _penalized_leaves(params, skip))


def _penalty_reference(
    params_value: Callable[[np.ndarray], float],
    params_grad: Callable[[np.ndarray], np.ndarray],
    skip: Sequence[str],
    kinks: Callable[[Any], float] | None = None,
    curvature: float = 0.0,
) -> Reference:
    """A penalty's reference from its per-leaf value and gradient; skipped leaves get zero gradient.

    ``curvature`` c makes the Hessian c on the penalized leaves (lambda for
    L2, 0 for L1), from which ``rop`` returns H v = c v there, 0 elsewhere.
    """

    def forward(params):
        value = sum((params_value(w) for w in _penalized_leaves(params, skip)), 0.0)

        def pullback(g):
            def leaf_grad(path, leaf):
                return np.zeros_like(leaf) if _skipped(path, skip) else g * params_grad(leaf)

            return jax.tree_util.tree_map_with_path(leaf_grad, params)

        return value, pullback

    def rop(params, v):
        value, pullback = forward(params)
        gradient = pullback(1.0)
        hessian_v = jax.tree_util.tree_map_with_path(
            lambda path, w: np.zeros_like(w) if _skipped(path, skip) else curvature * w, v
        )

        def r_pullback(g, r_g):  # the product rule on g grad Omega
            scaled = jax.tree_util.tree_map(lambda a: g * a, gradient)
            return scaled, jax.tree_util.tree_map(lambda a, b: r_g * a + g * b, gradient, hessian_v)

        return value, _tree_dot(gradient, v), r_pullback

    return Reference(forward, kinks, rop)


def _tree_dot(a: Any, b: Any) -> float:
    return float(
        sum(np.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    )


@dataclasses.dataclass(frozen=True)
class L2Penalty:
    """The regularizer lambda/2 ||w||^2 as a callable, with its reference gradient lambda w.

    Its Hessian is lambda on the penalized leaves and 0 on the skipped ones
    (``skip``, the biases ``"b"`` by default), as for ``l2_penalty``.
    ``fit(..., regularizer=L2Penalty(1e-4))`` trains with it;
    ``check_gradients(..., regularizer=L2Penalty(1e-4))`` checks it.
    """

    scale: float
    skip: tuple[str, ...] = ("b",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _scale("L2Penalty", self.scale))
        object.__setattr__(self, "skip", _skip_names("L2Penalty", self.skip))

    def __call__(self, params) -> jax.Array:
        return l2_penalty(params, self.scale, self.skip)

    @property
    def reference(self) -> Reference:
        """``forward(params) -> (lambda/2 sum w^2, pullback)``, the gradient lambda w."""
        return _penalty_reference(
            lambda w: self.scale * 0.5 * np.sum(w**2),
            lambda w: self.scale * w,
            self.skip,
            curvature=self.scale,
        )


@dataclasses.dataclass(frozen=True)
class L1Penalty:
    """The regularizer lambda ||w||_1 as a callable, with its reference gradient lambda sign(w)."""

    scale: float
    skip: tuple[str, ...] = ("b",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _scale("L1Penalty", self.scale))
        object.__setattr__(self, "skip", _skip_names("L1Penalty", self.skip))

    def __call__(self, params) -> jax.Array:
        return l1_penalty(params, self.scale, self.skip)

    @property
    def reference(self) -> Reference:
        """``forward(params) -> (lambda sum |w|, pullback)``; |w| has its kink at w = 0."""
        return _penalty_reference(
            lambda w: self.scale * np.sum(np.abs(w)),
            lambda w: self.scale * np.sign(w),
            self.skip,
            kinks=self._kinks,
        )

    def _kinks(self, params) -> float:
        """The smallest |w| over the penalized leaves."""
        return min(
            (float(np.min(np.abs(w), initial=np.inf)) for w in _penalized_leaves(params, self.skip)),
            default=np.inf,
        )


def penalty_reference(regularizer: Any) -> Reference:
    """The hand-derived ``Reference`` a regularizer carries (``L2Penalty``, ``L1Penalty``, your own)."""
    reference = regularizer if isinstance(regularizer, Reference) else getattr(regularizer, "reference", None)
    if not isinstance(reference, Reference):
        raise MissingReferenceError(
            getattr(regularizer, "__name__", type(regularizer).__name__),
            "has no hand-derived reference; use L2Penalty(scale) or L1Penalty(scale), or give your "
            "regularizer a `reference` attribute: Reference(forward=lambda params: (value, pullback))",
        )
    return reference


__all__ = ["L1Penalty", "L2Penalty", "l1_penalty", "l2_penalty", "penalty_reference"]
