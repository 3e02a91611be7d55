"""Tests of crys_pipeline.evidence: the baseline, the paired interval against scipy, the verdict words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crys_pipeline import evidence

#: Fixed numbers: three seeds' paired differences of absolute errors on eight test materials.
DIFFS = np.array([
    [-0.12, 0.05, -0.30, -0.02, 0.11, -0.25, -0.07, 0.01],
    [-0.09, 0.02, -0.21, -0.05, 0.08, -0.31, -0.02, -0.04],
    [-0.15, 0.07, -0.26, 0.03, 0.10, -0.19, -0.11, 0.02],
])


def test_baseline_is_the_median_and_minimises_the_training_mae() -> None:
    y = np.array([0.1, 5.0, 0.3, 0.2, 9.0])
    assert evidence.constant_baseline(y) == 0.3
    grid = np.linspace(-1, 10, 2001)
    best = grid[np.argmin([np.mean(np.abs(y - c)) for c in grid])]
    assert abs(best - 0.3) < 0.01
    assert math.isnan(evidence.constant_baseline(np.array([])))


def test_interval_equals_welch_over_material_means_and_seed_deviations() -> None:
    """SE^2 = var(m_i)/n + var(D_s)/S with Welch-Satterthwaite df is scipy's Welch interval of
    (m_i) against (D_s - D): the reference computation on fixed numbers."""
    got = evidence.paired_interval(DIFFS)
    material_means, seed_means = DIFFS.mean(axis=0), DIFFS.mean(axis=1)
    ref = stats.ttest_ind(material_means, seed_means - DIFFS.mean(), equal_var=False).confidence_interval(0.95)
    assert got.mean == pytest.approx(DIFFS.mean(), abs=1e-15)
    assert (got.low, got.high) == (pytest.approx(ref.low, rel=1e-12), pytest.approx(ref.high, rel=1e-12))
    assert (got.n_seeds, got.n_materials) == (3, 8)
    se = math.sqrt(material_means.var(ddof=1) / 8 + seed_means.var(ddof=1) / 3)
    assert got.se == pytest.approx(se, rel=1e-12)


def test_one_seed_is_scipys_one_sample_t_interval() -> None:
    got = evidence.paired_interval(DIFFS[0])
    ref = stats.ttest_1samp(DIFFS[0], 0.0).confidence_interval(0.95)
    assert (got.low, got.high) == (pytest.approx(ref.low, rel=1e-12), pytest.approx(ref.high, rel=1e-12))
    assert got.df == 7 and got.n_seeds == 1


def test_seed_spread_widens_the_interval() -> None:
    """The same material means with seeds that disagree give a wider interval than seeds that agree."""
    agree = evidence.paired_interval(np.tile(DIFFS.mean(axis=0), (3, 1)))
    shifted = np.tile(DIFFS.mean(axis=0), (3, 1)) + np.array([[-0.2], [0.0], [0.2]])
    disagree = evidence.paired_interval(shifted)
    assert disagree.mean == pytest.approx(agree.mean)
    assert disagree.high - disagree.low > 3 * (agree.high - agree.low)


@pytest.mark.parametrize(("shift", "verdict"), [(-1.0, "lower"), (1.0, "higher"), (0.0, "not resolved")])
def test_verdict_follows_the_interval(shift: float, verdict: str) -> None:
    centred = DIFFS - DIFFS.mean()
    got = evidence.paired_interval(centred + shift)
    assert got.verdict == verdict
    assert (got.high < 0) == (verdict == "lower") and (got.low > 0) == (verdict == "higher")


def test_a_small_mean_with_a_wide_interval_is_not_resolved() -> None:
    """A negative mean difference is not a verdict: DIFFS' mean is below 0 but its interval reaches above."""
    got = evidence.paired_interval(DIFFS)
    assert got.mean < 0 < got.high and got.verdict == "not resolved"


def test_degenerate_inputs_are_not_resolved() -> None:
    assert evidence.paired_interval(np.array([[0.3]])).verdict == "not resolved"
    assert math.isnan(evidence.paired_interval(np.array([0.1, math.nan, 0.2])).low)
    zero = evidence.paired_interval(np.zeros((2, 5)))
    assert (zero.low, zero.high, zero.verdict) == (0.0, 0.0, "not resolved")


def test_below_compares_absolute_errors() -> None:
    model = np.array([0.1, -0.2, 0.05, -0.1])
    base = np.array([-1.0, 1.5, -2.0, 0.9])
    got = evidence.below(model, base)
    assert got.mean == pytest.approx(np.mean(np.abs(model)) - np.mean(np.abs(base)))
    assert got.verdict == "lower"
