"""Property tests, second order: on random architectures, the R-operator, JAX and finite differences agree.

hypothesis draws networks as the first-order property tests do (1 to 6
blocks of every layer and combinator, every loss, a regularizer), at random
float64 points away from the kinks, and a random direction v.  For both the
Hessian-vector product H v and the Gauss-Newton product G v, the
hand-derived R-operator and JAX's forward over reverse must agree to 1e-10
relative, and both must agree with central differences of the reference
gradient to 1e-6.  The default run draws 200 networks; ``pytest -m slow``
draws 2,000.
"""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import costs

import purenet as pn

KINK_MARGIN = 1e-3  # 50 stencil reaches (2 eps along a unit direction): no kink is straddled
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}


def check_both_products(case, seed):
    model, params, x, targets, loss, regularizer = case
    for kind in pn.check.second_order.KINDS:
        report = pn.check_hvp(
            model,
            params,
            x,
            targets,
            loss,
            regularizer=regularizer,
            kind=kind,
            seed=seed,
            eps=1e-5,
            reference_rtol=1e-10,
            rtol=1e-6,
            raise_on_failure=False,
        )
        assume(report.kink_margin > KINK_MARGIN)
        assert report.passed, str(report)
        assert report.forward_error <= 1e-10 and report.value_error <= 1e-10


# 200 networks in 4 shards of 50, so pytest-xdist runs them on every core (hypothesis draws each
# shard's networks from its own seed: its pytest node id enters the seed, derandomized on CI too).
@pytest.mark.parametrize("shard", range(4))
@settings(max_examples=50, **SETTINGS)
@given(case=costs(), seed=st.integers(0, 2**31 - 1))
def test_hvp_and_ggn_agree_three_ways_on_random_networks(shard, case, seed):
    check_both_products(case, seed)


@pytest.mark.slow
@settings(max_examples=2000, **SETTINGS)
@given(costs(), st.integers(0, 2**31 - 1))
def test_hvp_and_ggn_agree_three_ways_on_2000_random_networks(case, seed):
    check_both_products(case, seed)
