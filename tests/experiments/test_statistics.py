"""The analysis's statistics against scipy or hand-computed values (issue 22, items 2 and 10): no p = 0, no zero-width
interval, censored runs never counted as finished, and "inconclusive" whenever the data cannot decide."""

import math

import numpy as np
import pytest
from scipy import stats

from gpt2_lightning.analysis.statistics import (
    Comparison,
    bootstrap_ci,
    format_p,
    holm,
    kaplan_meier,
    km_median,
    logrank,
    mean_sd,
    minimum_detectable_effect,
    number,
    paired,
    tost,
    verdict,
    welch,
)

A, B = [5.12, 5.31, 5.20, 5.44], [5.40, 5.52, 5.38, 5.71]


def test_welch_matches_scipy_p_value_and_interval():
    ours, theirs = welch(A, B), stats.ttest_ind(A, B, equal_var=False)
    assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9)
    ci = theirs.confidence_interval(0.95)
    assert ours.interval() == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert ours.diff == pytest.approx(np.mean(A) - np.mean(B))


def test_paired_matches_scipy_and_is_stronger_when_seeds_share_their_noise():
    ours, theirs = paired(A, B), stats.ttest_rel(A, B)
    assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9)
    ci = theirs.confidence_interval(0.95)
    assert ours.interval() == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert ours.p < welch(A, B).p  # the seed-to-seed spread cancels in the differences
    with pytest.raises(ValueError, match="differ in length"):
        paired(A, B[:3])


@pytest.mark.parametrize("test", [welch, paired])
def test_no_variance_is_untestable_never_p_zero_or_a_zero_width_interval(test):
    same = test([3.0, 3.0, 3.0], [2.0, 2.0, 2.0])
    assert not same.testable and same.p is None and same.interval() is None
    assert str(same) == "+1.000, no variance: cannot test"
    assert verdict(same, "higher") == "inconclusive"
    single = test([3.0], [2.0])
    assert not single.testable and "too few values: cannot test" in str(single)


def test_a_paired_difference_constant_across_seeds_is_untestable_though_each_group_varies():
    constant = paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert not constant.testable and verdict(constant, "higher") == "inconclusive"


def test_p_values_print_as_bounds_never_zero():
    tiny = welch([1.0, 1.0001, 0.9999] * 4, [9.0, 9.0001, 8.9999] * 4)
    assert tiny.p < 1e-4 and "p < 0.0001" in str(tiny) and "p = 0" not in str(tiny)
    assert format_p(0.0) == "p < 0.0001" and format_p(0.04213) == "p = 0.042"


def test_holm_adjusts_by_rank_and_keeps_the_order_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, None, 0.01]) == [pytest.approx(0.2), None, pytest.approx(0.02)]  # a family of two
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1, never below an earlier rank


def test_tost_is_the_larger_of_two_one_sided_welch_tests_in_scipy():
    a, b, margin = [5.01, 5.03, 4.98, 5.02, 5.00], [5.00, 5.02, 5.01, 4.99, 5.03], 0.05
    lower = stats.ttest_ind(a, np.array(b) - margin, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(a, np.array(b) + margin, equal_var=False, alternative="less").pvalue
    assert tost(welch(a, b), margin) == pytest.approx(max(lower, upper), rel=1e-9)
    assert verdict(welch(a, b), "equivalent", margin=margin) == "held"
    assert tost(welch([1.0, 1.0], [1.0, 1.0]), margin) is None


def test_minimum_detectable_effect_has_the_stated_power_and_meets_the_normal_approximation_at_large_n():
    n, sd = 3, 0.05
    mde = minimum_detectable_effect(n, sd)
    df, critical = 2 * n - 2, stats.t.ppf(0.975, 2 * n - 2)
    shift = mde / (sd * math.sqrt(2 / n))
    assert stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift) == pytest.approx(0.8, abs=1e-6)
    # by hand, the normal approximation: (z_0.975 + z_0.8) · sd · √(2/n) at n = 2000
    assert minimum_detectable_effect(2000, 1.0) == pytest.approx((1.959964 + 0.841621) * math.sqrt(2 / 2000),
                                                                  rel=2e-3)
    assert minimum_detectable_effect(5, 1.0, design="paired") > minimum_detectable_effect(5, 1.0) / math.sqrt(2)
    assert mde > 3 * sd  # three seeds cannot see an effect the size of their own spread
    # a comparison's own: its n and measured spread (paired: the differences' sd; Welch: the groups' pooled)
    assert paired(A, B).minimum_detectable_effect() == pytest.approx(
        minimum_detectable_effect(4, float(np.std(np.subtract(A, B), ddof=1)), design="paired"))
    assert welch(A, B).minimum_detectable_effect() == pytest.approx(
        minimum_detectable_effect(4, math.sqrt((np.var(A, ddof=1) + np.var(B, ddof=1)) / 2)))
    assert welch([1.0, 1.0], [2.0, 2.0]).minimum_detectable_effect() is None


def test_bootstrap_over_documents_meets_scipys_percentile_bootstrap():
    values = np.random.default_rng(1).normal(0.3, 1.0, 200)
    ours = bootstrap_ci(values, resamples=8000)
    theirs = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=8000,
                             random_state=np.random.default_rng(2)).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.02)
    assert ours[0] < values.mean() < ours[1]
    with pytest.raises(ValueError, match="two documents"):
        bootstrap_ci([1.0])


def test_kaplan_meier_matches_scipys_estimate_with_censoring():
    times = [50, 100, 100, 150, 300, 300]
    reached = [True, True, False, True, False, False]  # the two 300s never reached the level: censored
    expected = stats.ecdf(stats.CensoredData(uncensored=[t for t, r in zip(times, reached) if r],
                                             right=[t for t, r in zip(times, reached) if not r])).sf
    for t, survival in kaplan_meier(times, reached):
        assert survival == pytest.approx(expected.evaluate(t))
    # by hand: 1 of 6 at risk reached at 50, 1 of 5 at 100 (the other 100 censored), 1 of 3 at 150
    assert [s for _, s in kaplan_meier(times, reached)] == pytest.approx([5 / 6, 5 / 6 * 4 / 5, 5 / 6 * 4 / 5 * 2 / 3])
    assert km_median(times, reached) == 150


def test_runs_that_never_reached_are_censored_not_finished():
    """Counting a censored run as finishing at its last step would call its median 300; it has not reached."""
    assert km_median([300, 300, 120], [False, False, True]) is None
    survival = logrank([300, 300, 300], [False, False, False], [300, 300, 300], [False, False, False])
    assert not survival.testable and verdict(survival, "lower") == "inconclusive"
    assert "median not reached vs not reached" in str(survival)


def test_logrank_matches_scipy():
    a, ra = [50, 60, 80, 300, 300], [True, True, True, False, False]
    b, rb = [150, 200, 250, 300, 300], [True, True, True, False, False]
    ours = logrank(a, ra, b, rb)
    x = stats.CensoredData(uncensored=[t for t, r in zip(a, ra) if r], right=[t for t, r in zip(a, ra) if not r])
    y = stats.CensoredData(uncensored=[t for t, r in zip(b, rb) if r], right=[t for t, r in zip(b, rb) if not r])
    assert ours.p == pytest.approx(stats.logrank(x, y).pvalue, rel=1e-6)
    assert ours.median_a == 80 and ours.median_b == 250 and ours.diff < 0  # a reached sooner


def test_logrank_direction_says_which_group_reaches_first():
    fast = logrank([10, 20, 30, 40], [True] * 4, [300] * 4, [False] * 4)
    assert fast.diff < 0 and fast.p < 0.05 and verdict(fast, "lower") == "held"
    assert verdict(fast, "higher") == "did not hold"


def test_verdict_is_held_did_not_hold_or_inconclusive_from_the_numbers():
    clear = Comparison(-0.2, 0.02, 8, "paired", 9)
    assert verdict(clear, "lower") == "held" and verdict(clear, "higher") == "did not hold"
    noisy = Comparison(-0.05, 0.2, 2, "paired", 3)
    assert verdict(noisy, "lower") == "inconclusive"
    assert verdict(noisy, "equivalent", margin=0.05) == "inconclusive"  # absence of evidence is not evidence
    assert verdict(clear, "lower", p=0.08) == "inconclusive"  # a Holm-adjusted p decides when given
    precise_zero = Comparison(0.001, 0.005, 20, "paired", 21)
    assert verdict(precise_zero, "higher", margin=0.05) == "did not hold"  # shown equivalent: no cost
    assert verdict(precise_zero, "equivalent", margin=0.05) == "held"
    far = Comparison(0.5, 0.02, 20, "paired", 21)
    assert verdict(far, "equivalent", margin=0.05) == "did not hold"
    with pytest.raises(ValueError, match="margin"):
        verdict(clear, "equivalent")


def test_integers_print_as_integers():
    assert number(150) == "150" and number(150.0, 0) == "150" and number(0.12345) == "0.123"
    assert mean_sd([100, 150, 200], 0) == "150 ± 50" and mean_sd([1.0, 2.0]) == "1.500 ± 0.707"
    steps = welch([100, 150, 120], [250, 300, 270])
    assert str(steps).startswith("-150.000") and steps.format(0).startswith("-150 [")
