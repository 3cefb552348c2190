"""Paired statistics against hand-worked cases and an independent computation (numpy bootstrap, scipy tests)."""

import itertools

import numpy as np
import pytest
from scipy import stats

from analysis.stats import compare_paired, control_share, verdict


def test_two_seeds_hand_worked():
    # d = (0, 2): a resample of two seeds has mean 0 (1/4), 1 (1/2) or 2 (1/4), so the 95 % CI is [0, 2].
    c = compare_paired([0.0, 2.0], [0.0, 0.0], "max")
    assert (c.n, c.mean_a, c.std_a, c.mean_b, c.std_b) == (2, 1.0, pytest.approx(np.sqrt(2)), 0.0, 0.0)
    assert c.difference == 1.0 and (c.ci_low, c.ci_high) == (0.0, 2.0)
    # t = mean / (sd / sqrt(n)) = 1 / (sqrt(2) / sqrt(2)) = 1 with 1 degree of freedom: p = 0.5 exactly.
    assert c.p_value == pytest.approx(0.5)
    assert c.verdict == "not confirmed"


def test_three_seeds_ci_is_the_range_of_the_differences():
    """Hand-worked: of the 27 equally likely resamples of 3 seeds, 1 (3.7 % > 2.5 %) draws the smallest
    difference three times, so the 2.5 % quantile of the resampled mean is min d, the 97.5 % one max d."""
    a, b = [0.91, 0.88, 0.95], [0.90, 0.85, 0.91]
    c = compare_paired(a, b, "max")
    d = np.subtract(a, b)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.min(), d.max()))
    # The exact bootstrap distribution (all 27 resamples) has the same quantiles.
    means = [np.mean(r) for r in itertools.product(d, repeat=3)]
    assert np.quantile(means, [0.025, 0.975], method="inverted_cdf") == pytest.approx([d.min(), d.max()])


def test_ci_and_p_agree_with_an_independent_numpy_bootstrap_and_scipy():
    rng = np.random.default_rng(7)
    b = rng.normal(0.8, 0.02, size=12)
    a = b + rng.normal(0.01, 0.01, size=12)
    c = compare_paired(a, b, "max")
    d = a - b
    boot = d[np.random.default_rng(123).integers(0, len(d), size=(100_000, len(d)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    assert c.ci_low == pytest.approx(low, abs=2e-4) and c.ci_high == pytest.approx(high, abs=2e-4)
    assert c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert c.difference == pytest.approx(d.mean()) and c.std_a == pytest.approx(np.std(a, ddof=1))
    assert c.resamples >= 10_000


def test_the_bootstrap_is_seeded():
    a, b = np.random.default_rng(0).normal(size=(2, 20))
    assert compare_paired(a, b, "max") == compare_paired(a, b, "max")
    assert compare_paired(a, b, "max", seed=1).ci_low != compare_paired(a, b, "max", seed=2).ci_low


@pytest.mark.parametrize(
    "low, high, p, mode, expected",
    [
        (0.01, 0.03, 0.01, "max", "confirmed"),
        (-0.03, -0.01, 0.01, "max", "worse"),
        (-0.03, -0.01, 0.01, "min", "confirmed"),  # lower is better: a negative difference is a gain
        (0.01, 0.03, 0.01, "min", "worse"),
        (-0.01, 0.03, 0.01, "max", "not confirmed"),
        (0.01, 0.03, 0.2, "max", "not confirmed"),  # the CI alone is not enough with few seeds
    ],
)
def test_verdict_reads_the_ci_in_the_metrics_direction_and_needs_the_paired_test(low, high, p, mode, expected):
    assert verdict(low, high, p, mode) == expected


def test_three_improving_seeds_are_not_confirmed_when_the_t_test_disagrees():
    a, b = [0.90, 0.95, 0.91], [0.89, 0.90, 0.90]  # every seed better, but unevenly
    c = compare_paired(a, b, "max")
    assert c.ci_low > 0 and c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue) and c.p_value > 0.05
    assert c.verdict == "not confirmed"


def test_identical_arms_have_p_one_and_constant_gains_p_zero():
    same = compare_paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], "max")
    assert same.difference == 0 and same.p_value == 1.0 and same.verdict == "not confirmed"
    constant = compare_paired([1.5, 2.5, 3.5], [1.0, 2.0, 3.0], "max")
    assert constant.p_value == 0.0 and constant.verdict == "confirmed"


@pytest.mark.parametrize(
    "a, b, message",
    [([1.0], [1.0], "at least 2 seeds"), ([1.0, 2.0], [1.0], "equal-length"), ([1.0, np.nan], [1.0, 2.0], "finite")],
)
def test_bad_inputs_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        compare_paired(a, b, "max")
    with pytest.raises(ValueError, match="mode"):
        compare_paired([1.0, 2.0], [1.0, 2.0], "up")


def test_control_share_hand_worked():
    # PSNR (max): α gains 2 dB on average, the control 1.5 dB: the control reproduces 75 % of it.
    alpha, baseline, control = [22.0, 23.0, 24.1], [20.0, 21.0, 22.0], [21.5, 22.4, 23.6]
    share = control_share(alpha, baseline, control, "max")
    assert (share.gain, share.control_gain, share.explained) == pytest.approx((2.0333, 1.5, 1.5 / 2.0333), rel=1e-4)
    assert share.beyond.difference == pytest.approx(2.0333 - 1.5, rel=1e-4)  # α against the control
    # the control against α = 1: its own paired comparison, as compare_paired gives it
    assert share.versus_baseline == compare_paired(control, baseline, "max")
    assert share.versus_baseline.difference == pytest.approx(1.5)


def test_control_share_in_min_mode_counts_a_drop_as_gain():
    # NRMSE (min): α lowers it by 0.02, the control by 0.01.
    share = control_share([0.08, 0.09], [0.10, 0.11], [0.09, 0.10], "min")
    assert (share.gain, share.control_gain, share.explained) == pytest.approx((0.02, 0.01, 0.5))
    assert control_share([1.0, 2.0], [1.0, 2.0], [1.5, 2.5], "max").explained is None  # no gain to explain
    # α lost: a share of a loss would read backwards (a control that also lost would "reproduce" it)
    assert control_share([0.5, 1.5], [1.0, 2.0], [0.9, 1.9], "max").explained is None
    with pytest.raises(ValueError, match="one value per seed"):
        control_share([1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 2.0], "max")
