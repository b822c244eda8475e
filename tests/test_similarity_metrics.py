"""Tests for layerwise.similarity.metrics: linear CKA against the Gram form, its invariances, and
the token cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from layerwise.similarity.metrics import linear_cka, token_cosine


def test_linear_cka_matches_gram_form() -> None:
    """Feature-space formula equals the HSIC/Gram definition <Kc, Lc> / (|Kc| |Lc|)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) + 2.0
    y = x @ rng.normal(size=(5, 7)) + rng.normal(size=(60, 7))
    h = np.eye(60) - 1.0 / 60
    kc, lc = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    gram = (kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc))
    assert linear_cka(x, y) == pytest.approx(gram, rel=1e-10)
    assert linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(
        gram, rel=1e-5
    )


def test_linear_cka_invariances_and_independence() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16))
    y = x @ rng.normal(size=(16, 16)) + rng.normal(size=(500, 16))
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    q = ortho_group.rvs(16, random_state=2)
    assert linear_cka(x, 3.7 * y) == pytest.approx(base, rel=1e-12)
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(0.01 * x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)

    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    assert linear_cka(a, b) < 0.1


def test_linear_cka_degenerate() -> None:
    x = np.ones((10, 3))
    assert np.isnan(linear_cka(x, np.random.default_rng(0).normal(size=(10, 3))))
    with pytest.raises(ValueError, match="row counts"):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))


def test_token_cosine_matches_numpy_and_zero_vectors_give_zero() -> None:
    """Row-wise <x, y> / (|x| |y|) as numpy computes it; a zero row gets 0, not NaN."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 9)), rng.normal(size=(50, 9))
    ref = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    got = token_cosine(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    x[4] = 0.0
    got = token_cosine(torch.from_numpy(x), torch.from_numpy(y))
    assert got[4] == 0.0 and torch.isfinite(got).all()
