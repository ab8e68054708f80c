"""A model trained on the bundled digits with the usual settings, shared by the training tests."""

import jax
import optax

import purenet as pn


def fit_digits(model: pn.Layer, init_key, **overrides) -> tuple[pn.FitResult, pn.Dataset]:
    """``pn.fit`` on digits (softmax cross-entropy, Adam 1e-3, batches of 64, validation accuracy).

    ``init_key`` draws the params; ``overrides`` replace any of those settings (``epochs`` defaults to 3).
    """
    data = pn.load_digits()
    _, params = model.init(init_key, (-1, 64))
    settings = dict(
        loss=pn.softmax_cross_entropy,
        optimizer=optax.adam(1e-3),
        epochs=3,
        batch_size=64,
        key=jax.random.PRNGKey(3),
        validation=(data.x_test, data.y_test),
        metrics={"accuracy": pn.accuracy},
    )
    return pn.fit(model, params, data.x_train, data.y_train, **(settings | overrides)), data
