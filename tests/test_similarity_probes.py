"""Tests for layerwise.similarity.probes: separable vs chance labels, rare classes, bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from layerwise.similarity.probes import probe_accuracy


def _blobs(n: int, dim: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, dim))
    x[:, 0] += sep * (2 * y - 1)
    return x, y


def test_probe_separable_and_chance() -> None:
    x, y = _blobs(300, 16, sep=4.0, seed=14)
    res = probe_accuracy(x, y, folds=5, seed=0, n_boot=500)
    assert res.accuracy >= 0.95
    assert res.lo <= res.accuracy <= res.hi
    assert res.correct.dtype == bool and res.correct.shape == (300,) and res.folds == 5
    assert res.accuracy == pytest.approx(res.correct.mean())

    y_shuffled = np.random.default_rng(15).permutation(y)
    chance = probe_accuracy(x[:, 1:], y_shuffled, folds=5, seed=0, n_boot=500)
    assert 0.35 < chance.accuracy < 0.65
    assert chance.lo <= chance.accuracy <= chance.hi
    assert chance.lo < 0.5 + 0.1 and chance.hi > 0.5 - 0.1

    again = probe_accuracy(x, y, folds=5, seed=0, n_boot=500)
    assert (again.lo, again.hi) == (res.lo, res.hi)
    np.testing.assert_array_equal(again.correct, res.correct)


def test_probe_rare_class_reduces_folds(caplog: pytest.LogCaptureFixture) -> None:
    x, _ = _blobs(40, 4, sep=3.0, seed=16)
    y = np.array(["a"] * 37 + ["b"] * 3)
    with caplog.at_level(logging.WARNING, logger="layerwise.similarity.probes"):
        res = probe_accuracy(x, y, folds=5)
    assert res.folds == 3 and "using 3 folds" in caplog.text
    assert res.correct.shape == (40,)


def test_probe_errors() -> None:
    x = np.random.default_rng(17).normal(size=(10, 3))
    with pytest.raises(ValueError, match="2 classes"):
        probe_accuracy(x, np.zeros(10))
    with pytest.raises(ValueError, match="labels"):
        probe_accuracy(x, np.zeros(9))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe_accuracy(x, np.arange(10) % 2)
