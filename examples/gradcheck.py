"""Derive a unit's backward by hand and let purenet check it: swish, right and wrong.

Swish (Ramachandran et al. 2017) is a unit purenet does not ship:

    f(z) = z sigma(z)

By the product rule, and sigma' = sigma (1 - sigma) (the book's eq. 3.31 ff.),

    f'(z) = sigma(z) + z sigma(z) (1 - sigma(z))

The backward of a unit applied entrywise is dJ/dz = dJ/dh * f'(z) (the
g <- g * f'(a) step of the book's Algorithm 6.4).  This script

1. checks that derivation with ``check_layer`` against ``jax.grad`` and
   finite differences, and prints the report;
2. checks a classic slip, dropping the second term of the product rule, and
   prints the report that catches it;
3. puts the unit in a network and checks the whole network's gradient with
   ``check_gradients``: the library's references composed with yours;
4. puts the slip in the same network: the check names the node whose own
   backward is wrong (``Swish at params[2]['block'][1]``), not only the
   leaves it corrupts;
5. checks the hand-derived gradient of a plain function,
   f(A, x) = logsumexp(A x), with ``check_function``, and shows a float32
   constant captured by f reported as lost precision, not as a slip.

Run:  python examples/gradcheck.py
It exits with status 1 if the right derivation fails or the wrong one passes.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import purenet as pn
from purenet.layers.activations import np_sigmoid


def swish_derivative(z: np.ndarray) -> np.ndarray:
    """f'(z) = sigma(z) + z sigma(z) (1 - sigma(z)), derived above."""
    s = np_sigmoid(z)
    return s + z * s * (1.0 - s)


def swish_without_product_rule(z: np.ndarray) -> np.ndarray:
    """The slip: d/dz [z sigma(z)] taken as sigma(z), forgetting z sigma'(z)."""
    return np_sigmoid(z)


def Swish(derivative=swish_derivative) -> pn.Layer:
    """The swish unit with a hand-derived backward; ``elementwise`` builds its reference from f'."""
    return pn.elementwise(
        "Swish",
        lambda z: z * jax.nn.sigmoid(z),
        np_fn=lambda z: z * np_sigmoid(z),
        np_derivative=derivative,
    )


def logsumexp_grad(A: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/dA and d/dx of logsumexp(A x): with p = softmax(A x), dA = p x^T and dx = A^T p (eq. 6.29)."""
    z = A @ x
    p = np.exp(z - z.max())
    p /= p.sum()
    return np.outer(p, x), A.T @ p


def swish_network(unit) -> pn.Layer:
    return pn.serial(pn.Dense(8), Swish(), pn.residual(pn.serial(pn.Dense(8), unit)), pn.Dense(3))


def banner(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def main() -> int:
    banner("1. swish with f'(z) = sigma(z) + z sigma(z)(1 - sigma(z))")
    right = pn.check_layer(Swish(), (4, 3), raise_on_failure=False)
    print(right)

    banner("2. swish with the product rule's second term dropped")
    wrong = pn.check_layer(Swish(swish_without_product_rule), (4, 3), raise_on_failure=False)
    print(wrong)
    print("\nJAX and finite differences agree with each other and not with the derivation:")
    print("the derivation is what is wrong, and the row names the input gradient it corrupts.")

    banner("3. swish inside a residual network, the whole cost checked three ways")
    model = swish_network(Swish())
    params = model.init(jax.random.PRNGKey(0), (-1, 5))[1]
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    cost = (x, labels, pn.softmax_cross_entropy)
    network = pn.check_gradients(model, params, *cost, regularizer=pn.L2Penalty(1e-3), raise_on_failure=False)
    print(network)

    banner("4. the slip inside the network: located, not only detected")
    slipped = pn.check_gradients(swish_network(Swish(swish_without_product_rule)), params, *cost,
                                 raise_on_failure=False)  # fmt: skip
    print(slipped.headline)

    banner("5. a plain function, f(A, x) = logsumexp(A x), and a float32 constant")
    A, point = rng.standard_normal((5, 3)), rng.standard_normal(3)
    plain = pn.check_function(lambda A, x: jax.nn.logsumexp(A @ x), (A, point), grad=logsumexp_grad)
    print(plain)
    A32 = jnp.asarray(A, jnp.float32)  # captured below: it stays float32 under the check's float64
    rounded = pn.check_function(
        lambda x: jax.nn.logsumexp(A32 @ x),
        point,
        grad=lambda x: logsumexp_grad(A, x)[1],
        raise_on_failure=False,
    )
    print(rounded.headline)

    claims = {
        "the right derivation passes": right.passed,
        "the dropped term is caught": not wrong.passed,
        "JAX agrees with finite differences on the wrong case": all(
            leaf.fd_vs_jax.passed for leaf in wrong.leaves
        ),
        "the network with swish passes": network.passed,
        "the slip in the network is located at its node": slipped.culprit is not None
        and (slipped.culprit.name, slipped.culprit.path) == ("Swish", "params[2]['block'][1]"),
        "the plain function's derivation passes": plain.passed,
        "the float32 constant is reported as precision": rounded.verdict == "precision",
        "jax.grad of swish at 0 is 1/2, as f'(0) = sigma(0) says": float(
            jax.grad(lambda z: z * jax.nn.sigmoid(z))(jnp.float32(0.0))
        )
        == 0.5,
    }
    banner("claims")
    for claim, held in claims.items():
        print(f"{'ok  ' if held else 'FAIL'} {claim}")
    return 0 if all(claims.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
