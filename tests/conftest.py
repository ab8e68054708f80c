"""Shared fixtures: a fixed PRNG key and a tolerance-aware comparison."""

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
