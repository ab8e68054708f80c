"""The book's output units (Deep Learning, section 6.2.2), each on real data with its own loss.

| output unit | distribution                  | loss                 | data                          |
| softmax     | multinoulli over 10 classes   | cross-entropy        | digits (1,797 8x8 images)     |
| sigmoid     | Bernoulli                     | binary cross-entropy | breast cancer (569 tumours)   |
| Gaussian    | N(mu(x), 1 / beta(x)), learned | its negative log-likelihood | diabetes (442 patients) |

The Gaussian unit learns its variance per example (section 6.2.2.4): the
network outputs a mean and a precision pre-activation, beta = softplus(rho).
Its network is small and weight-decayed: one that can fit the 353 training
patients drives its predicted variances toward zero, and then only half the
test targets fall inside +-2 sd (overconfidence, measured while writing this).
The plot shows the predicted means against the true targets with +-2
predicted standard deviations; if the variances are honest, about 95% of
the test targets fall inside their interval.

Run:  python examples/output_units.py [--quick] [--out DIR]
It writes output_units.png and exits 1 if a claim fails.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from common import arguments, figure, report, save

import purenet as pn


def mlp(outputs: int, width: int = 64) -> pn.Layer:
    return pn.serial(pn.Dense(width), pn.ReLU(), pn.Dense(width), pn.ReLU(), pn.Dense(outputs))


def small_tanh(outputs: int) -> pn.Layer:
    """For 353 training patients: a network that can overfit them drives its variances to zero."""
    return pn.serial(pn.Dense(8), pn.Tanh(), pn.Dense(outputs))


def train(data, outputs, loss, epochs, metrics=None, learning_rate=1e-3, weight_decay=0.0, network=mlp):
    model = network(outputs)
    _, params = model.init(jax.random.PRNGKey(0), (-1, data.x_train.shape[1]))
    result = pn.fit(
        model, params, data.x_train, data.y_train, loss=loss,
        optimizer=optax.adamw(learning_rate, weight_decay=weight_decay), epochs=epochs, batch_size=32,
        key=jax.random.PRNGKey(1), validation=(data.x_test, data.y_test), metrics=metrics,
    )  # fmt: skip
    return model, result


def gaussian_interval_coverage(mean, variance, y) -> float:
    return float(np.mean(np.abs(y - mean) <= 2 * np.sqrt(variance)))


def main(argv=None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    epochs = {"digits": 15, "cancer": 30} if args.quick else {"digits": 40, "cancer": 80}
    epochs["diabetes"] = 100  # a few seconds either way

    digits = pn.load_digits()
    _, softmax = train(digits, 10, pn.softmax_cross_entropy, epochs["digits"], {"accuracy": pn.accuracy})
    digits_accuracy = softmax.history["val_accuracy"][-1]
    print(f"softmax + cross-entropy on digits: test accuracy {digits_accuracy:.2%}")

    cancer = pn.load_breast_cancer()
    cancer = cancer._replace(y_train=cancer.y_train[:, None].astype(np.float32),
                             y_test=cancer.y_test[:, None].astype(np.float32))  # fmt: skip
    _, sigmoid = train(cancer, 1, pn.binary_cross_entropy, epochs["cancer"], {"accuracy": pn.binary_accuracy})
    cancer_accuracy = sigmoid.history["val_accuracy"][-1]
    print(f"sigmoid + binary cross-entropy on breast cancer: test accuracy {cancer_accuracy:.2%}")

    diabetes = pn.load_diabetes()  # inputs and target standardized on the training part
    model, gaussian = train(
        diabetes,
        2,
        pn.gaussian_nll,
        epochs["diabetes"],
        learning_rate=1e-2,
        weight_decay=0.1,
        network=small_tanh,
    )
    mean, variance = (
        np.asarray(a)
        for a in pn.OUTPUT_UNITS["gaussian"].predict(model.apply(gaussian.params, diabetes.x_test))
    )
    coverage = gaussian_interval_coverage(mean, variance, diabetes.y_test)
    std = np.sqrt(variance[:, 0])
    mse = float(np.mean((mean - diabetes.y_test) ** 2))
    print(
        f"Gaussian unit on diabetes: test MSE {mse:.3f} (target variance 1 in these units), {coverage:.1%} "
        f"of test targets within +-2 predicted sd, sd from {std.min():.2f} to {std.max():.2f}"
    )

    fig, axes = figure(1, 1, size=(6.0, 5.0))
    ax = axes[0, 0]
    order = np.argsort(mean[:, 0])
    ax.errorbar(diabetes.y_test[order, 0], mean[order, 0], yerr=2 * std[order], fmt="o", ms=3, alpha=0.6,
                ecolor="tab:gray", label="predicted mean +- 2 sd")  # fmt: skip
    lims = [-3, 3.5]
    ax.plot(lims, lims, "k--", lw=1, label="perfect prediction")
    ax.set(xlabel="true disease progression (standardized)", ylabel="predicted mean",
           title=f"Gaussian output unit on diabetes: {coverage:.0%} inside +-2 sd")  # fmt: skip
    ax.legend()
    save(fig, args.out / "output_units.png")

    return report(
        {
            "softmax + cross-entropy classifies digits (test accuracy >= 93%)": digits_accuracy >= 0.93,
            "sigmoid + binary cross-entropy classifies tumours (test accuracy >= 93%)": cancer_accuracy
            >= 0.93,
            "the Gaussian unit predicts better than the mean (test MSE < 0.7)": mse < 0.7,
            "its learned variances are calibrated (85% to 99% within +-2 sd)": 0.85 <= coverage <= 0.99,
            "and differ between patients (largest sd >= 1.3 x smallest)": std.max() >= 1.3 * std.min(),
        }
    )


if __name__ == "__main__":
    sys.exit(main())
