"""purenet.validate: one value check, raised where concrete, compiled by checkify where asked, free otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import purenet as pn
from purenet.validate import (
    require_class_labels,
    require_distributions,
    require_finite,
    require_in_interval,
    require_nonempty,
)


def _labelled_sum(z, labels):
    require_class_labels("my_loss", labels, z.shape[-1])
    return jnp.sum(z)


@given(st.lists(st.integers(-300, 300), min_size=1, max_size=6), st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_class_labels_are_refused_exactly_when_out_of_range(labels, classes):
    labels = np.array(labels)
    z = jnp.zeros((len(labels), classes))
    if np.all((labels >= 0) & (labels < classes)):
        assert float(_labelled_sum(z, labels)) == 0.0
    else:
        with pytest.raises(pn.DataError, match=rf"my_loss: labels must be class indices in \[0, {classes}\)"):
            _labelled_sum(z, labels)


def test_checked_compiles_the_check_and_names_who_refused():
    checked = pn.checked(_labelled_sum)
    assert float(checked(jnp.ones((2, 3)), jnp.array([0, 2]))) == 6.0
    with pytest.raises(pn.DataError, match=r"my_loss: labels must be class indices in \[0, 3\).*from 0 to 7"):
        checked(jnp.ones((2, 3)), jnp.array([0, 7]))


def test_plain_jit_skips_value_checks_and_documents_it():
    """Checks off under jit: no error and no cost; the value is whatever the function computes."""
    assert float(jax.jit(_labelled_sum)(jnp.ones((2, 3)), jnp.array([0, 7]))) == 6.0


def test_checked_refuses_to_run_under_an_outer_trace():
    checked = pn.checked(_labelled_sum)
    with pytest.raises(pn.ConfigError, match="checked: a checked function compiles itself"):
        jax.jit(checked)(jnp.ones((2, 3)), jnp.array([0, 1]))


def test_checking_lets_users_compose_with_their_own_checkify():
    def fn(z, labels):
        with pn.checking():
            return _labelled_sum(z, labels)

    error, _ = jax.jit(checkify.checkify(fn))(jnp.ones((2, 3)), jnp.array([5, 0]))
    assert "my_loss: labels must be class indices" in error.get()


def test_finite_check_names_the_leaf_and_counts():
    with pytest.raises(pn.DataError, match=r"hvp: v\['b'\]\[1\] must be finite, got 2 non-finite entries"):
        require_finite("hvp", "v", {"b": (jnp.ones(2), jnp.array([jnp.nan, jnp.inf, 1.0]))})
    require_finite("hvp", "v", {"b": jnp.ones(2), "i": jnp.arange(3)})  # integers have no NaN: passes


def test_interval_distribution_and_empty_checks():
    with pytest.raises(pn.DataError, match=r"bce: targets must lie in \[0, 1\], got values from -1.0 to 5.0"):
        require_in_interval("bce", "targets", jnp.array([-1.0, 5.0]), 0.0, 1.0)
    with pytest.raises(pn.DataError, match="bce: targets must lie in"):
        require_in_interval("bce", "targets", jnp.array([jnp.nan]), 0.0, 1.0)
    with pytest.raises(pn.DataError, match="each row of p must sum to 1"):
        require_distributions("sce", "p", jnp.array([[0.5, 0.6]]))
    require_distributions("sce", "p", jnp.array([[0.25, 0.75]]))
    with pytest.raises(pn.ShapeError, match=r"mse: outputs is empty \(shape \(0, 3\)\)"):
        require_nonempty("mse", "outputs", jnp.ones((0, 3)))
