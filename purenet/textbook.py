"""The book's Algorithms 6.3 and 6.4, transcribed for a plain MLP: a second reference.

``textbook_mlp_gradient`` runs the book's forward and backward passes for
``serial(Dense, unit, ..., Dense[, unit])``, written out as the book writes
them (g <- g * f'(a); grad_b = g; grad_W = g h^T; g <- W^T g), vectorized
over the batch.  It shares nothing with ``purenet.reference``'s composed
Algorithm 6.2 but the units' own f', so the two check each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from purenet.combinators import is_serial
from purenet.core import Layer, MissingReferenceError, Params, ParamsError, check_like
from purenet.cost_reference import params_template
from purenet.losses import loss_reference
from purenet.penalties import penalty_reference
from purenet.shapes import as_float64, check_sequence_params


def _mlp_units(model: Layer, params: Params) -> list[Layer | None]:
    """Check that the model is serial(Dense, unit, ..., Dense[, unit]); the unit after each Dense."""
    layers = model.children
    if not layers or not is_serial(model):
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
        if unit is not None and (params[i + 1] != () or unit.reference is None):
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
    hand-derived derivative, read off its reference's pullback with an
    upstream gradient of ones.

    Returns:
      ``(J, g_params)``, g_params in the model's params structure.
    """
    units = _mlp_units(model, params)
    check_like(params, params_template(model, x), layer=model.name)
    params, x, targets = as_float64(params), as_float64(x), as_float64(targets)
    pairs = list(zip(params[::2], units))  # (the Dense params, the unit after them)
    # Algorithm 6.3: the forward pass, keeping a(k) and h(k).
    h = [x]
    a, unit_pullbacks = [], []  # a unit's pullback holds its f'(a), as the book's stored a(k) does
    for p, unit in pairs:
        a.append(p["b"] + h[-1] @ p["w"])
        value, pullback = (a[-1], None) if unit is None else unit.reference.run((), a[-1], owner=unit.name)
        h.append(value)
        unit_pullbacks.append(pullback)
    cost, g = loss_reference(loss).value_and_grad(h[-1], targets)
    penalty_grad = None
    if regularizer is not None:
        penalty, penalty_grad = penalty_reference(regularizer).value_and_grad(params)
        cost = cost + penalty
    # Algorithm 6.4: the backward pass.
    grads: list[Any] = [()] * len(model.children)
    for k in reversed(range(len(pairs))):
        p, unit = pairs[k]
        if unit is not None:
            f_prime = unit_pullbacks[k](np.ones_like(a[k]))[1]
            g = g * f_prime
        grad_b = g.sum(axis=0)
        grad_w = h[k].T @ g
        if penalty_grad is not None:
            grad_b = grad_b + penalty_grad[2 * k]["b"]
            grad_w = grad_w + penalty_grad[2 * k]["w"]
        grads[2 * k] = {"w": grad_w, "b": grad_b}
        g = g @ p["w"].T
    return float(cost), tuple(grads)


__all__ = ["textbook_mlp_gradient"]
