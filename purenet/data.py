"""Datasets that ship with scikit-learn (no download), XOR, splits, standardization and batches.

Every loader returns a ``Dataset``: float32 inputs, targets (int32 labels for
classification, float32 columns for regression), a seeded train/test split,
and inputs standardized with the mean and standard deviation of the
*training* part only, so nothing about the test set leaks into training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from purenet.core import ConfigError, InputTypeError, ShapeError
from purenet.shapes import require_positive_int
from purenet.validate import require_number


class Dataset(NamedTuple):
    """A train/test split of one dataset, ready for ``fit``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    task: str  # "classification" or "regression"
    num_classes: int | None  # None for regression
    mean: np.ndarray  # the standardization fitted on x_train (zeros when off)
    std: np.ndarray  # (ones when off)


class Standardizer(NamedTuple):
    """``(x - mean) / std`` per feature; constant features keep std 1 (no division by zero)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any) -> Standardizer:
        """The per-feature mean and std of ``x`` (at least one example, numeric, finite)."""
        x, _ = check_arrays("Standardizer.fit", x, np.zeros(len(np.atleast_1d(np.asarray(x)))))
        if len(x) == 0:
            raise ShapeError("Standardizer.fit", f"x holds no examples (shape {x.shape})")
        x = x.astype(np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))

    def transform(self, x: Any) -> np.ndarray:
        return ((self._features("transform", x) - self.mean) / self.std).astype(np.float32)

    def inverse(self, x: Any) -> np.ndarray:
        return (self._features("inverse", x) * self.std + self.mean).astype(np.float32)

    def _features(self, method: str, x: Any) -> np.ndarray:
        """``x`` as float32, refused unless its examples have the fitted features' shape."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise InputTypeError(f"Standardizer.{method}", f"x must be numeric, got dtype {x.dtype}")
        if x.shape[1:] != self.mean.shape:
            raise ShapeError(
                f"Standardizer.{method}",
                f"expected examples of shape {self.mean.shape} like the fitted data, got x of shape "
                f"{x.shape}",
            )
        return x.astype(np.float32)


def check_arrays(
    where: str, x: Any, y: Any, *, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a dataset: same number of examples, numeric, finite, labels in range.

    Args:
      where: the function to name in errors.
      x, y: inputs and targets, first axis the examples.
      num_classes: when given, ``y`` must hold integer labels in [0, num_classes).

    Returns:
      ``(x, y)`` as NumPy arrays.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ShapeError(where, f"x and y need a first axis of examples, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            where, f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}"
        )
    for name, array in (("x", x), ("y", y)):
        if array.dtype.kind not in "biuf":
            raise InputTypeError(where, f"{name} must be numeric, got dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            rows = np.flatnonzero(~np.all(np.isfinite(array.reshape(len(array), -1)), axis=1))
            raise ConfigError(
                where,
                f"{name} holds NaN or inf in {len(rows)} example(s), the first at index {rows[0]}",
            )
    if num_classes is not None:
        check_labels(where, y, num_classes)
    return x, y


def check_labels(where: str, y: np.ndarray, num_classes: int) -> None:
    """``y`` must hold integer class labels in [0, num_classes)."""
    if y.dtype.kind not in "iu" and not np.all(y == np.round(y)):
        raise InputTypeError(where, f"y must hold integer class labels, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ConfigError(
            where,
            f"labels must lie in [0, {num_classes}), got {y.reshape(-1)[bad[0]]} at index {bad[0]} "
            f"({bad.size} out of range)",
        )


def train_test_split(
    x: Any, y: Any, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random split: ``(x_train, y_train, x_test, y_test)``."""
    x, y = check_arrays("train_test_split", x, y)
    require_number(
        "train_test_split", "test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True
    )
    require_number("train_test_split", "seed", seed, low=0, integer=True)
    n_test = round(len(x) * test_fraction)
    if not 0 < n_test < len(x):
        raise ConfigError(
            "train_test_split", f"test_fraction {test_fraction} of {len(x)} examples leaves an empty part"
        )
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _from_arrays(
    name: str, x, y, task: str, num_classes: int | None, test_fraction: float, seed: int, standardize: bool
) -> Dataset:
    x_train, y_train, x_test, y_test = train_test_split(x, y, test_fraction=test_fraction, seed=seed)
    if standardize:
        scaler = Standardizer.fit(x_train)
    else:
        scaler = Standardizer(np.zeros(x.shape[1:], np.float32), np.ones(x.shape[1:], np.float32))
    target = (lambda t: t.astype(np.int32)) if task == "classification" else (lambda t: t.astype(np.float32))
    return Dataset(
        scaler.transform(x_train),
        target(y_train),
        scaler.transform(x_test),
        target(y_test),
        name,
        task,
        num_classes,
        scaler.mean,
        scaler.std,
    )


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(
            "purenet.data's real datasets ship inside scikit-learn: pip install 'purenet[examples]'"
        ) from None
    return datasets


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1,797 examples, 64 pixel features, 10 classes."""
    x, y = _sklearn_datasets().load_digits(return_X_y=True)
    return _from_arrays("digits", x, y, "classification", 10, test_fraction, seed, standardize)


def load_breast_cancer(*, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """Wisconsin breast cancer: 569 examples, 30 features, binary (1 = benign)."""
    x, y = _sklearn_datasets().load_breast_cancer(return_X_y=True)
    return _from_arrays("breast_cancer", x, y, "classification", 2, test_fraction, seed, standardize)


def load_diabetes(
    *, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True, standardize_target: bool = True
) -> Dataset:
    """Diabetes progression: 442 examples, 10 features, one regression target (as a column).

    With ``standardize_target`` the target is standardized too (fitted on the
    training part); the returned arrays are then in standard units.
    """
    x, y = _sklearn_datasets().load_diabetes(return_X_y=True)
    data = _from_arrays("diabetes", x, y[:, None], "regression", None, test_fraction, seed, standardize)
    if not standardize_target:
        return data
    scaler = Standardizer.fit(data.y_train)
    return data._replace(y_train=scaler.transform(data.y_train), y_test=scaler.transform(data.y_test))


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four points of XOR (Deep Learning, section 6.1): inputs (4, 2), targets (4, 1)."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    return x, np.array([[0], [1], [1], [0]], np.float32)


def batches(
    x: Any,
    y: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Minibatches of any arrays: shuffled with ``key`` when given, in order otherwise."""
    x, y = check_arrays("batches", x, y)
    batch_size = require_positive_int("batches", "batch_size", batch_size)
    order = np.arange(len(x)) if key is None else np.asarray(jax.random.permutation(key, len(x)))
    stop = len(x) - len(x) % batch_size if drop_remainder else len(x)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


__all__ = [
    "Dataset",
    "Standardizer",
    "batches",
    "check_arrays",
    "check_labels",
    "load_breast_cancer",
    "load_diabetes",
    "load_digits",
    "train_test_split",
    "xor",
]
