"""purenet.data: the bundled datasets, splits, standardization fitted on the training part, batches, errors."""

import jax
import numpy as np
import pytest
from sklearn import datasets

import purenet as pn
from purenet import data


@pytest.mark.parametrize(
    "loader, raw, features, classes, task",
    [
        (pn.load_digits, datasets.load_digits, 64, 10, "classification"),
        (pn.load_breast_cancer, datasets.load_breast_cancer, 30, 2, "classification"),
        (pn.load_diabetes, datasets.load_diabetes, 10, None, "regression"),
    ],
)
def test_loaders_split_and_standardize_on_the_training_part(loader, raw, features, classes, task):
    d = loader(test_fraction=0.25, seed=3)
    x, y = raw(return_X_y=True)
    assert d.task == task and d.num_classes == classes
    assert len(d.x_train) + len(d.x_test) == len(x) and len(d.x_test) == round(0.25 * len(x))
    assert d.x_train.shape[1] == features and d.x_train.dtype == np.float32
    if classes:
        assert d.y_train.dtype == np.int32 and set(np.unique(d.y_train)) == set(range(classes))
    else:
        assert d.y_train.shape == (len(d.x_train), 1) and d.y_train.dtype == np.float32
    # the standardization is the training part's own: recompute it from the raw rows, independently
    order = np.random.default_rng(3).permutation(len(x))
    train_rows = x[order[len(d.x_test) :]]
    mean, std = train_rows.mean(axis=0), train_rows.std(axis=0)
    std[std == 0] = 1.0
    np.testing.assert_allclose(d.x_train, (train_rows - mean) / std, atol=1e-4)
    np.testing.assert_allclose(d.x_test, (x[order[: len(d.x_test)]] - mean) / std, atol=1e-4)
    if classes:  # targets stay paired with their inputs
        np.testing.assert_array_equal(d.y_test, y[order[: len(d.x_test)]])
    assert np.abs(d.x_train.mean(axis=0)).max() < 1e-4  # centred on the training part...
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-3  # ...and so not exactly on the test part


def test_diabetes_target_standardized_on_the_training_part():
    d = pn.load_diabetes()
    assert abs(d.y_train.mean()) < 1e-5 and abs(d.y_train.std() - 1) < 1e-4
    raw = pn.load_diabetes(standardize_target=False)
    scaler = data.Standardizer.fit(raw.y_train)
    np.testing.assert_allclose(scaler.inverse(d.y_test), raw.y_test, rtol=1e-5)


def test_splits_are_seeded_and_disjoint():
    x, y = np.arange(50.0)[:, None], np.arange(50)
    a = data.train_test_split(x, y, test_fraction=0.2, seed=1)
    b = data.train_test_split(x, y, test_fraction=0.2, seed=1)
    c = data.train_test_split(x, y, test_fraction=0.2, seed=2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b)) and not np.array_equal(a[2], c[2])
    assert sorted(np.concatenate([a[1], a[3]]).tolist()) == list(range(50)) and len(a[3]) == 10


def test_xor_is_the_books_table():
    x, y = pn.data.xor()
    assert x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and y[:, 0].tolist() == [0, 1, 1, 0]


def test_batches_cover_every_example_once():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    in_order = list(data.batches(x, y, 4))
    assert [len(b[0]) for b in in_order] == [4, 4, 2] and in_order[0][1].tolist() == [0, 1, 2, 3]
    shuffled = list(data.batches(x, y, 4, key=jax.random.PRNGKey(0), drop_remainder=True))
    assert [len(b[1]) for b in shuffled] == [4, 4]
    seen = np.concatenate([b[1] for b in data.batches(x, y, 3, key=jax.random.PRNGKey(0))])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for xb, yb in shuffled:
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired


def test_errors_name_the_problem():
    with pytest.raises(
        pn.ShapeError, match="batches: x and y must hold the same number of examples, got 3 and 2"
    ):
        next(data.batches(np.ones((3, 1)), np.ones(2), 1))
    bad = np.ones((5, 2))
    bad[3, 1] = np.nan
    with pytest.raises(pn.ConfigError, match=r"x holds NaN or inf in 1 example\(s\), the first at index 3"):
        data.check_arrays("fit", bad, np.ones(5))
    with pytest.raises(
        pn.ConfigError, match=r"labels must lie in \[0, 3\), got 7 at index 2 \(1 out of range\)"
    ):
        data.check_arrays("fit", np.ones((4, 2)), np.array([0, 1, 7, 2]), num_classes=3)
    with pytest.raises(pn.ConfigError, match=r"labels must lie in \[0, 3\), got -1 at index 0"):
        data.check_arrays("fit", np.ones((1, 2)), np.array([-1]), num_classes=3)
    with pytest.raises(pn.InputTypeError, match="y must hold integer class labels, got dtype float64"):
        data.check_arrays("fit", np.ones((2, 2)), np.array([0.5, 1.0]), num_classes=3)
    with pytest.raises(pn.InputTypeError, match="x must be numeric, got dtype <U1"):
        data.check_arrays("fit", np.array([["a"]]), np.ones(1))
    with pytest.raises(
        pn.ConfigError, match=r"train_test_split: test_fraction must be a finite real number in \(0, 1\), got 1.5"
    ):
        data.train_test_split(np.ones((4, 1)), np.ones(4), test_fraction=1.5)
    with pytest.raises(pn.ConfigError, match="test_fraction 0.1 of 3 examples leaves an empty part"):
        data.train_test_split(np.ones((3, 1)), np.ones(3), test_fraction=0.1)
