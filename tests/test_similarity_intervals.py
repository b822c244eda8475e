"""Tests for layerwise.similarity.intervals: jackknife, ratio bootstrap and seed t-intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from layerwise.similarity.intervals import bootstrap_ratio_ci, jackknife_ci, t_interval


def test_jackknife_ci_reduces_to_standard_error_of_mean() -> None:
    """For the mean, delete-one jackknife SE is exactly s / sqrt(n)."""
    data = np.random.default_rng(10).normal(size=25)
    full = data.mean()
    leave_out = (data.sum() - data) / (data.size - 1)
    lo, hi, se = jackknife_ci(full, leave_out, confidence=0.9)
    assert se == pytest.approx(data.std(ddof=1) / np.sqrt(data.size), rel=1e-12)
    assert lo < full < hi and (hi - full) == pytest.approx(full - lo)
    assert jackknife_ci(full, leave_out[:1]) == pytest.approx((np.nan,) * 3, nan_ok=True)
    lo_c, hi_c, _ = jackknife_ci(0.99, [0.9, 1.0, 0.95], bounds=(0.0, 1.0))
    assert hi_c == 1.0 and lo_c < 0.99


def test_bootstrap_deterministic_and_calibrated() -> None:
    rng = np.random.default_rng(11)
    num = rng.normal(loc=1.0, size=2000)
    den = np.ones(2000)
    a = bootstrap_ratio_ci(num, den, n_boot=500, seed=42)
    b = bootstrap_ratio_ci(num, den, n_boot=500, seed=42)
    c = bootstrap_ratio_ci(num, den, n_boot=500, seed=43)
    assert a == b and a != c
    lo, hi = float(a[0]), float(a[1])
    assert lo < num.mean() < hi
    normal_width = 2 * 1.96 * num.std(ddof=1) / np.sqrt(num.size)
    assert hi - lo == pytest.approx(normal_width, rel=0.15)
    # Several statistics share the resamples: row k of a 2-D num gives the same as 1-D num.
    lo2, hi2 = bootstrap_ratio_ci(np.stack([num, 2 * num]), den, n_boot=500, seed=42)
    assert lo2.shape == (2,)
    np.testing.assert_allclose([lo2[0], hi2[0]], [lo, hi], rtol=1e-12)
    np.testing.assert_allclose([lo2[1], hi2[1]], [2 * lo, 2 * hi], rtol=1e-12)


def test_t_interval_matches_scipy_over_seeds() -> None:
    """mean ± t_{n-1} s / sqrt(n), as scipy's t.interval gives it; non-finite values dropped."""
    values = [0.912, 0.905, 0.921, 0.899, 0.917]
    mean, lo, hi = t_interval([*values, float("nan")], confidence=0.9)
    ref_lo, ref_hi = stats.t.interval(0.9, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-12)
    wide = t_interval(values, confidence=0.99)
    assert wide[1] < lo and wide[2] > hi


def test_t_interval_needs_two_values() -> None:
    """One seed: its value, no interval; no finite value: all NaN; a bad level is refused."""
    mean, lo, hi = t_interval([0.5])
    assert mean == 0.5 and np.isnan(lo) and np.isnan(hi)
    assert t_interval([float("nan")]) == pytest.approx((np.nan,) * 3, nan_ok=True)
    with pytest.raises(ValueError, match="confidence"):
        t_interval([0.1, 0.2], confidence=95)
