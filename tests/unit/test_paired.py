"""Paired comparisons: exact McNemar against scipy's binomial test, the bootstrap's interval and resolution."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from varipipe.profiler.paired import (
    ALPHA,
    best_case_mcnemar_difference,
    mcnemar,
    mcnemar_p,
    paired_bootstrap,
    smallest_mcnemar_difference,
)


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 6), (1, 5), (3, 3), (2, 11), (10, 25), (40, 41), (0, 1)])
def test_exact_mcnemar_is_the_two_sided_binomial_test_on_discordant_items(only_a, only_b):
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_p(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_counts_discordant_items_and_the_difference():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, True]
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b, r.items) == (1, 3, 6)
    assert r.difference == pytest.approx(2 / 6) and not r.resolved
    with pytest.raises(ValueError, match="not paired"):
        mcnemar(a, b[:-1])


def test_the_smallest_resolvable_difference_needs_six_one_sided_discordant_items():
    # 5 of 5 one way: p = 2/32 = 0.0625; 6 of 6: p = 0.03125
    assert smallest_mcnemar_difference(5, 100) is None
    assert smallest_mcnemar_difference(6, 100) == pytest.approx(0.06)
    # with 40 discordant items a split of 13/27 is the most even that reaches p < 0.05
    d = smallest_mcnemar_difference(40, 200)
    k = round((40 - d * 200) / 2)
    assert mcnemar_p(k, 40 - k) < ALPHA <= mcnemar_p(k + 1, 40 - k - 1)


def test_paired_bootstrap_is_seeded_and_resolves_a_clear_difference_only():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    better, same = a + 0.2, a + rng.normal(0, 0.05, 60)

    def diff(x, y):
        return lambda idx: float(np.mean(y[idx]) - np.mean(x[idx]))

    clear = paired_bootstrap(diff(a, better), 60, resamples=500, seed=1)
    assert clear.difference == pytest.approx(0.2) and clear.ci_low == pytest.approx(0.2) and clear.resolved
    noisy = paired_bootstrap(diff(a, same), 60, resamples=500, seed=1)
    assert noisy.ci_low < 0 < noisy.ci_high and not noisy.resolved
    assert noisy.half_width == pytest.approx((noisy.ci_high - noisy.ci_low) / 2)
    assert paired_bootstrap(diff(a, same), 60, resamples=500, seed=1) == noisy


@pytest.mark.parametrize("items", [6, 84, 134])
def test_the_best_case_on_a_set_is_six_discordant_items_all_one_way(items):
    # the dev split's 84 crops can resolve nothing under 6 / 84 = 0.071, the test split's 134 nothing under 0.045
    assert best_case_mcnemar_difference(items) == pytest.approx(6 / items)
    assert best_case_mcnemar_difference(5) is None
