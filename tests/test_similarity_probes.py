"""Tests for layerwise.similarity.probes: separable vs chance labels, the inner search over the
regularisation, paired differences, rare classes, bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from layerwise.similarity.probes import (
    DEFAULT_C_GRID,
    ProbeSpec,
    fit_probe,
    paired_difference,
    probe_accuracy,
)


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


def test_separable_problem_is_decoded_perfectly() -> None:
    """Two blobs 12 standard deviations apart: every out-of-fold prediction is right, and the
    CI collapses onto 1."""
    x, y = _blobs(200, 8, sep=6.0, seed=18)
    res = probe_accuracy(x, y, folds=5, seed=0, n_boot=200)
    assert res.accuracy == 1.0 and (res.lo, res.hi) == (1.0, 1.0)


def test_inner_search_regularises_noise_and_frees_a_clean_signal() -> None:
    """On pure noise every outer fold's inner search picks the strongest regularisation (and
    the probe sits at chance); on a clean signal it picks a weak one."""
    rng = np.random.default_rng(19)
    noise, y = rng.normal(size=(300, 50)), rng.integers(0, 2, size=300)
    res = probe_accuracy(noise, y, folds=5, seed=0, n_boot=200)
    assert res.chosen_c == (min(DEFAULT_C_GRID),) * 5
    assert 0.4 < res.accuracy < 0.6 and res.lo < 0.5 < res.hi

    x, y = _blobs(300, 50, sep=3.0, seed=20)
    clean = probe_accuracy(x, y, folds=5, seed=0, n_boot=200)
    assert all(c >= 10.0 for c in clean.chosen_c)
    assert clean.accuracy > 0.98


def test_fit_probe_refits_at_the_chosen_strength() -> None:
    """fit_probe (the fine-tune stage's baseline) fits all its texts at the C the inner search
    chose, and predicts new texts of a clean signal."""
    x, y = _blobs(400, 20, sep=3.0, seed=21)
    model = fit_probe(x[:300], y[:300], ProbeSpec(c_grid=(1e-3, 1.0), inner_folds=3), seed=0)
    assert model[-1].C == 1.0
    assert np.mean(model.predict(x[300:]) == y[300:]) > 0.95


def test_paired_difference_zero_for_identical_features_and_positive_when_ft_is_better() -> None:
    """Identical PT and FT features give a difference of exactly 0 with a CI of [0, 0]; FT
    features carrying the label where PT features carry none give a CI above 0."""
    x, y = _blobs(200, 10, sep=3.0, seed=22)
    pt = probe_accuracy(x[:, 1:], y, folds=5, seed=3, n_boot=300)
    same = paired_difference(pt, probe_accuracy(x[:, 1:], y, folds=5, seed=3), 300, seed=3)
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)

    ft = probe_accuracy(x, y, folds=5, seed=3, n_boot=300)
    better = paired_difference(pt, ft, 300, seed=3)
    assert better.diff == pytest.approx(ft.accuracy - pt.accuracy)
    assert 0.0 < better.lo <= better.diff <= better.hi


def test_probes_are_deterministic_for_a_seed_and_pairing_needs_the_same_folds() -> None:
    """The same seed repeats every number; a different seed reshuffles the folds, and a paired
    difference across different folds is refused."""
    x, y = _blobs(150, 12, sep=1.0, seed=23)
    a, b = probe_accuracy(x, y, seed=4, n_boot=200), probe_accuracy(x, y, seed=4, n_boot=200)
    assert (a.accuracy, a.lo, a.hi, a.chosen_c) == (b.accuracy, b.lo, b.hi, b.chosen_c)
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.fold_of, b.fold_of)
    assert paired_difference(a, b, 200, seed=4) == paired_difference(a, b, 200, seed=4)

    other = probe_accuracy(x, y, seed=5, n_boot=200)
    assert not np.array_equal(other.fold_of, a.fold_of)
    with pytest.raises(ValueError, match="same folds"):
        paired_difference(a, other)


def test_probe_spec_and_inner_search_errors() -> None:
    """Bad grids and fold counts are refused; a class with one training text cannot be
    searched over."""
    with pytest.raises(ValueError, match="c_grid"):
        ProbeSpec(c_grid=())
    with pytest.raises(ValueError, match="c_grid"):
        ProbeSpec(c_grid=(1.0, 0.0))
    with pytest.raises(ValueError, match="inner_folds"):
        ProbeSpec(inner_folds=1)
    x = np.random.default_rng(24).normal(size=(10, 3))
    with pytest.raises(ValueError, match="1 training text"):
        fit_probe(x, np.array([0] * 9 + [1]))
