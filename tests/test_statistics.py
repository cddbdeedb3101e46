import math

import numpy as np
import pytest
from scipy import stats

from harness.statistics import summarize


@pytest.mark.parametrize("values", [[0.9, 1.0, 0.95], [0.0, 0.0, 0.1, 0.2], [-47.5, -41.25], [0.019, 0.017, 0.02, 0.03, 0.01]])
def test_ci_matches_scipy_t_interval(values):
    summary = summarize(values)
    low, high = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.ci95 == pytest.approx((high - low) / 2)


def test_three_seeds_use_t_with_two_degrees_of_freedom():
    # t_{0.975, 2} = 4.3027: with 3 seeds the half-width is 4.3027 * s / sqrt(3), not 1.96 * s / sqrt(3).
    summary = summarize([0.8, 1.0, 0.9])
    assert summary.ci95 == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))


def test_identical_seeds_have_zero_width_and_one_seed_has_none():
    assert summarize([1.0, 1.0, 1.0]).ci95 == 0.0
    single = summarize([0.25])
    assert (single.n, single.mean, single.ci95) == (1, 0.25, None)
    with pytest.raises(ValueError):
        summarize([])
