"""layerwise.sae.evaluate: raw-space metrics checked on SAEs whose answer is known (identity,
mean predictor, constructed firing patterns) and against a direct float64 computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_helpers import acts, identity_sae

from layerwise.sae.evaluate import evaluate_sae, evaluate_sae_detailed, feature_frequencies
from layerwise.sae.model import SAEConfig, SparseAutoencoder
from layerwise.schema import SAE_METRIC_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_identity_sae_has_explained_variance_one():
    x = acts(1000, 16)
    for scale in (1.0, 0.125):  # scaling must not leak into raw-space metrics
        m = evaluate_sae(identity_sae(16, scale), x, batch_size=300)
        assert set(m) == set(SAE_METRIC_KEYS)
        assert m["mse"] == 0.0
        assert m["explained_variance"] == 1.0
        assert m["fvu"] == 0.0
        assert m["cos_sim"] == pytest.approx(1.0, abs=1e-6)


def test_mean_predictor_has_explained_variance_zero():
    x = acts(1000, 16)
    mean = x.astype(np.float64).mean(0)
    cfg = SAEConfig(d_in=16, d_sae=8, scale_factor=0.5)
    sae = SparseAutoencoder.from_weights(
        cfg,
        torch.zeros(16, 8),
        torch.full((8,), -1e4),  # never fires
        torch.nn.functional.normalize(torch.randn(8, 16), dim=1),
        torch.from_numpy(mean * 0.5).float(),  # b_dec lives in scaled space
    )
    m = evaluate_sae(sae, x, batch_size=128)  # chunks of unequal size: 7 x 128 + 104
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-6)
    assert m["fvu"] == pytest.approx(1.0, abs=1e-6)
    assert m["mse"] == pytest.approx(float(x.astype(np.float64).var(0).mean()), rel=1e-5)
    assert m["l0"] == 0.0 and m["dead_frac"] == 1.0 and m["dense_frac"] == 0.0


def test_metrics_match_direct_computation_and_ignore_batch_size():
    x = acts(700, 16, seed=4) + 50.0  # a large mean: the variance must be about the mean
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=40, scale_factor=0.1), seed=0)
    with torch.no_grad():
        sae.b_dec.copy_(torch.from_numpy(x.mean(0) * 0.1))
    xt = torch.from_numpy(x)
    with torch.no_grad():
        x_hat = sae(xt).x_hat.double().numpy()
        z = sae.encode(xt).numpy()
    x64 = x.astype(np.float64)
    # A pre-activation within float32 rounding of 0 may fire at one batch size and not at
    # another (the BLAS picks a different summation order, e.g. gemv for batch 1): L0 may differ
    # by those, and by nothing else.
    pre = (x64 * 0.1 - sae.b_dec.detach().double().numpy()) @ sae.W_enc.detach().double().numpy()
    pre += sae.b_enc.detach().double().numpy()
    l0_slack = (np.abs(pre) < 1e-5).sum() / len(x) + 1e-12
    err = ((x64 - x_hat) ** 2).sum()
    expected_ev = 1 - err / ((x64 - x64.mean(0)) ** 2).sum()
    cos = (x64 * x_hat).sum(1) / np.linalg.norm(x64, axis=1) / np.linalg.norm(x_hat, axis=1)
    results = [evaluate_sae(sae, x, batch_size=b) for b in (700, 64, 1)]
    for m in results:
        assert m["explained_variance"] == pytest.approx(expected_ev, abs=1e-6)
        assert m["mse"] == pytest.approx(err / x.size, rel=1e-5)
        assert m["l0"] == pytest.approx((z > 0).sum(1).mean(), abs=l0_slack)
        assert m["cos_sim"] == pytest.approx(cos.mean(), abs=1e-5)
    assert results[0]["dead_frac"] == results[2]["dead_frac"]


def test_dead_and_dense_fractions_on_constructed_activations():
    # Identity SAE on D=4: feature j fires where x_j > 0, feature 4 + j where x_j < 0.
    n = 100
    x = np.zeros((n, 4), dtype=np.float32)
    x[:, 0] = 1.0  # feature 0 on 100 %, feature 4 never
    x[:5, 1] = 2.0  # feature 1 on 5 % (alive, not dense), feature 5 never
    x[:, 2] = np.where(np.arange(n) < 50, 1.0, -1.0)  # features 2 and 6 on 50 % each
    # column 3 all zero: features 3 and 7 never fire
    ev = evaluate_sae_detailed(identity_sae(4), x, batch_size=32)
    np.testing.assert_array_equal(ev.feature_freq, [1.0, 0.05, 0.5, 0, 0, 0, 0.5, 0])
    assert ev.metrics["dead_frac"] == 4 / 8
    assert ev.metrics["dense_frac"] == 3 / 8
    assert ev.metrics["l0"] == pytest.approx(1 + 0.05 + 1)
    np.testing.assert_array_equal(feature_frequencies(identity_sae(4), x), ev.feature_freq)
    assert evaluate_sae(identity_sae(4), x, dense_threshold=0.6)["dense_frac"] == 1 / 8


def test_evaluate_rejects_width_mismatch_and_nan():
    sae = identity_sae(4)
    with pytest.raises(ValueError, match="D=5 but the SAE's d_in=4"):
        evaluate_sae(sae, np.zeros((3, 5), np.float32))
    x = np.zeros((10, 4), np.float32)
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="first bad row is 7"):
        evaluate_sae(sae, x, batch_size=4)
