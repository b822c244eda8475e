"""Confidence intervals: percentile bootstrap of a ratio over texts, delete-a-group jackknife,
and a Student t interval over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

_BOOT_CHUNK_ELEMS = 2_000_000
"""Bound on the number of int64 draws materialised at once by the bootstrap (~16 MB per array)."""


def check_confidence(confidence: float) -> None:
    """Refuse a confidence level outside ``(0, 1)`` (e.g. 95 meant as 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ratio_ci(
    num: np.ndarray,
    den: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of ``sum(num) / sum(den)`` resampling the units (texts).

    Why a ratio over texts: token metrics are means over tokens, but tokens within a text are
    correlated, so the independent units are texts; resampling texts with replacement and
    recomputing ``sum(num) / sum(den)`` (a ratio estimator) respects that and weights texts by their
    token count, exactly like the point estimate. A plain mean is the special case ``den = 1``.

    ``num`` is ``[n]`` or ``[k, n]`` (``k`` statistics sharing the denominator, e.g. layers: they
    get the *same* resamples, so their CIs are paired); ``den`` is ``[n]`` with non-negative
    entries and a positive sum. Resamples are drawn as per-unit multiplicities from
    ``numpy.random.default_rng(seed)`` in chunks (bounded memory), so a fixed seed gives identical
    CIs. Returns ``(lo, hi)`` with shape ``num.shape[:-1]`` (0-d arrays for 1-D ``num``; ``float()``
    them); NaN when there are no units.
    """
    check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    num_arr = np.asarray(num, dtype=np.float64)
    den_arr = np.asarray(den, dtype=np.float64)
    num2 = np.atleast_2d(num_arr)
    if num2.ndim != 2 or den_arr.ndim != 1 or num2.shape[1] != den_arr.shape[0]:
        raise ValueError(f"bootstrap_ratio_ci: shapes {num_arr.shape} and {den_arr.shape} mismatch")
    out_shape = num_arr.shape[:-1]
    if den_arr.shape[0] == 0:
        nan = np.full(out_shape, np.nan)
        return nan, nan.copy()
    if np.any(den_arr < 0) or not den_arr.sum() > 0:
        raise ValueError("bootstrap_ratio_ci: den must be non-negative with a positive sum")
    ratios = _bootstrap_ratios(num2, den_arr, n_boot, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(ratios, [alpha, 1.0 - alpha], axis=0)
    return lo.reshape(out_shape), hi.reshape(out_shape)


def _bootstrap_ratios(num2: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, k]`` resampled ratios, drawn chunk by chunk from one seeded generator."""
    n = den.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMS // n)
    ratios = np.empty((n_boot, num2.shape[0]), dtype=np.float64)
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(c, n))
        idx += np.arange(c, dtype=idx.dtype)[:, None] * n
        weights = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios[done : done + c] = (weights @ num2.T) / (weights @ den)[:, None]
        done += c
    return ratios


def jackknife_ci(
    full: float,
    leave_out_estimates: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Delete-a-group jackknife interval ``full ± t_{g-1} * SE`` around the full-data estimate.

    Why: for statistics like CKA that are smooth functions of additive moments, removing one of
    ``g`` groups at a time is cheap (subtract its moments) and gives
    ``SE^2 = (g - 1) / g * sum_j (theta_{-j} - mean(theta_{-j}))^2`` (Efron & Stein; for the mean
    it reduces to the usual ``s / sqrt(n)``). With few groups the Student ``t`` with ``g - 1``
    degrees of freedom is used instead of the normal quantile. The groups are treated as
    exchangeable (equal-weight formula); blocks of contiguous text indices of roughly equal size
    satisfy that well enough for an SE. ``bounds`` clips the interval to the statistic's range
    (CKA is in ``[0, 1]``). Returns ``(lo, hi, se)``; all NaN if fewer than 2 finite groups or a
    non-finite ``full``.
    """
    check_confidence(confidence)
    theta = np.asarray(leave_out_estimates, dtype=np.float64).ravel()
    theta = theta[np.isfinite(theta)]
    g = theta.size
    if g < 2 or not math.isfinite(full):
        return math.nan, math.nan, math.nan
    se = math.sqrt((g - 1) / g * float(np.sum((theta - theta.mean()) ** 2)))
    q = float(stats.t.ppf(0.5 + confidence / 2.0, df=g - 1))
    lo, hi = full - q * se, full + q * se
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi, se


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``values`` and its Student t interval ``mean ± t_{n-1} * s / sqrt(n)``.

    Why t: the units here are training seeds, a handful of independent runs, so the normal
    quantile would understate the interval. Non-finite values (a run without the metric) are
    dropped. Returns ``(mean, lo, hi)``: all NaN without values, NaN bounds with one value (no
    spread to estimate from one seed).
    """
    check_confidence(confidence)
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, math.nan, math.nan
    q = float(stats.t.ppf(0.5 + confidence / 2.0, df=arr.size - 1))
    half = q * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return mean, mean - half, mean + half
