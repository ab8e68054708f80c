"""Property tests: on random architectures, JAX, the reference and finite differences agree.

hypothesis draws networks of 1 to 6 blocks built from every layer and
combinator (widths 1 to 16), every loss and a regularizer, at random float64
points away from the kinks.  The reference and JAX must agree to 1e-10
relative, and both must agree with finite differences to 1e-6.  The default
run draws 100 networks (the CI budget on 2 cores); ``pytest -m slow`` draws 2,000.
"""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from strategies import costs

import purenet as pn

KINK_MARGIN = 1e-3  # 100 FD steps: the stencil never straddles a kink


def check_cost(case):
    model, params, x, targets, loss, regularizer = case
    report = pn.check_gradients(
        model,
        params,
        x,
        targets,
        loss,
        regularizer=regularizer,
        reference_rtol=1e-10,
        rtol=1e-6,
        raise_on_failure=False,
    )
    assume(report.kink_margin > KINK_MARGIN)
    assert report.passed, str(report)
    assert report.forward_error <= 1e-10


PROPERTY_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}


# 100 networks in 2 shards of 50, one per core under pytest-xdist (each shard its own hypothesis seed).
@pytest.mark.parametrize("shard", range(2))
@settings(max_examples=50, **PROPERTY_SETTINGS)
@given(case=costs())
def test_three_gradients_agree_on_random_networks(shard, case):
    check_cost(case)


@pytest.mark.slow
@settings(max_examples=2000, **PROPERTY_SETTINGS)
@given(costs())
def test_three_gradients_agree_on_2000_random_networks(case):
    check_cost(case)
