"""Tests for layerwise.sae: invariants and metrics on small real inputs, plus one learning test."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from layerwise.sae import (
    CURVE_KEYS,
    EVAL_METRIC_KEYS,
    SAEConfig,
    SparseAutoencoder,
    check_finite,
    estimate_scale_factor,
    evaluate_sae,
    evaluate_sae_detailed,
    feature_frequencies,
    load_sae,
    numpy_encoder,
    save_sae,
    train_saes,
)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every RNG per test; run torch single-threaded. The tensors here are tiny, and on a
    shared 2-core machine OpenMP threads spinning against other processes make tiny ops ~10x
    slower; results do not depend on the thread count beyond float rounding."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _acts(n: int = 512, d: int = 16, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Anisotropic activations with a nonzero mean (like real hidden states)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d) + rng.normal(0, 2.0, d)
    return x.astype(dtype)


def _identity_sae(d: int, scale_factor: float = 1.0) -> SparseAutoencoder:
    """d_sae = 2d, W_enc = [I, -I], W_dec = [I; -I]: ReLU(x) - ReLU(-x) = x exactly."""
    eye = torch.eye(d)
    cfg = SAEConfig(d_in=d, d_sae=2 * d, scale_factor=scale_factor)
    return SparseAutoencoder.from_weights(
        cfg,
        torch.cat([eye, -eye], 1),
        torch.zeros(2 * d),
        torch.cat([eye, -eye], 0),
        torch.zeros(d),
    )


def _synthetic_sparse(n: int = 8000, d: int = 32, m: int = 64, seed: int = 0):
    """Tokens that are sparse nonnegative combinations (~4 of 64) of random unit directions."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((m, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coef = rng.uniform(0.5, 2.0, (n, m)) * (rng.random((n, m)) < 4 / m)
    return (coef @ dirs).astype(np.float32), dirs


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_in": 0}, "sae.d_in=0 must be > 0"),
        ({"d_sae": -3}, "sae.d_sae=-3 must be > 0"),
        ({"sparsity": "l2"}, "sae.sparsity='l2' must be one of ['l1', 'topk']"),
        ({"sparsity": "topk", "k": 2000}, "sae.k=2000 must be between 1 and d_sae=1536"),
        ({"sparsity": "topk", "k": 0}, "sae.k=0 must be between 1 and d_sae=1536"),
        ({"l1_coefficient": -1.0}, "sae.l1_coefficient=-1.0 must be finite and >= 0"),
        ({"scale_factor": 0.0}, "sae.scale_factor=0.0 must be finite and > 0"),
        ({"scale_factor": math.inf}, "sae.scale_factor=inf must be finite and > 0"),
        ({"d_in": 3.5}, "sae.d_in=3.5 must be an integer"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, message):
    base = {"d_in": 384, "d_sae": 1536}
    with pytest.raises(ValueError) as info:
        SAEConfig(**{**base, **kwargs})
    assert str(info.value) == message


def test_config_l1_ignores_k():
    assert SAEConfig(d_in=4, d_sae=8, sparsity="l1", k=100).k == 100


# ------------------------------------------------------------------------------- module


@pytest.mark.parametrize("sparsity", ["l1", "topk"])
def test_forward_equals_decode_encode(sparsity):
    cfg = SAEConfig(d_in=16, d_sae=48, sparsity=sparsity, k=5, scale_factor=0.37)
    sae = SparseAutoencoder(cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.from_numpy(_acts(64, 16))
    out = sae(x)
    assert torch.equal(out.x_hat, sae.decode(sae.encode(x)))
    assert torch.equal(out.feature_acts, sae.encode(x))
    assert out.x_hat.shape == x.shape and out.feature_acts.shape == (64, 48)
    # Losses are scaled-space, per-token sums averaged over tokens.
    s = cfg.scale_factor
    mse = ((out.x_hat - x) * s).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.mse_loss, mse, rtol=1e-5, atol=1e-6)
    if sparsity == "l1":
        torch.testing.assert_close(out.sparsity_loss, out.feature_acts.sum(-1).mean())
        torch.testing.assert_close(out.loss, out.mse_loss + cfg.l1_coefficient * out.sparsity_loss)
    else:
        assert out.sparsity_loss.item() == 0.0
        assert torch.equal(out.loss, out.mse_loss)
    # Leading dims are kept: [batch, seq, D] works like [tokens, D].
    out3 = sae(x.view(4, 16, 16))
    assert out3.x_hat.shape == (4, 16, 16)
    torch.testing.assert_close(out3.loss, out.loss)


def test_transpose_init_and_unit_decoder_rows():
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=40), seed=3)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    assert not torch.equal(sae.W_dec, SparseAutoencoder(SAEConfig(16, 40), seed=4).W_dec)


def test_topk_l0_at_most_k():
    cfg = SAEConfig(d_in=16, d_sae=64, sparsity="topk", k=7)
    sae = SparseAutoencoder(cfg, seed=0)
    z = sae.encode(torch.from_numpy(_acts(256, 16)))
    assert int((z > 0).sum(-1).max()) <= 7
    assert (z >= 0).all()
    assert evaluate_sae(sae, _acts(256, 16))["l0"] <= 7


@pytest.mark.parametrize("sparsity", ["l1", "topk"])
def test_fold_scale_factor_keeps_reconstructions(sparsity):
    cfg = SAEConfig(d_in=16, d_sae=48, sparsity=sparsity, k=6, scale_factor=0.23, metadata={"a": 1})
    sae = SparseAutoencoder(cfg, seed=2)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_()
    folded = sae.fold_scale_factor()
    assert folded.cfg.scale_factor == 1.0
    assert folded.cfg.metadata == {"a": 1, "folded_scale_factor": 0.23}
    x = torch.from_numpy(_acts(128, 16))
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x), sae.encode(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(folded(x).x_hat, sae(x).x_hat, rtol=1e-4, atol=1e-4)
    assert sae.cfg.scale_factor == 0.23  # the original is untouched


def test_repeated_steps_on_one_batch_lower_loss_and_keep_unit_rows():
    cfg = SAEConfig(d_in=16, d_sae=64, l1_coefficient=0.5)
    sae = SparseAutoencoder(cfg, seed=0)
    x = torch.from_numpy(_acts(256, 16))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out = sae(x)
        out.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        # The projected gradient is orthogonal to every decoder row.
        torch.testing.assert_close(
            (sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(64), atol=1e-5, rtol=0
        )
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses[:11]))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_numpy_encoder_matches_encode():
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=32, scale_factor=2.0), seed=0)
    x = _acts(50, 16, dtype=np.float16)
    z = numpy_encoder(sae)(x)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (50, 32)
    np.testing.assert_array_equal(z, sae.encode(torch.from_numpy(x.astype(np.float32))).detach())


# ------------------------------------------------------------------------------- metrics


def test_identity_sae_has_explained_variance_one():
    x = _acts(1000, 16)
    for scale in (1.0, 0.125):  # scaling must not leak into raw-space metrics
        m = evaluate_sae(_identity_sae(16, scale), x, batch_size=300)
        assert set(m) == set(EVAL_METRIC_KEYS)
        assert m["mse"] == 0.0
        assert m["explained_variance"] == 1.0
        assert m["fvu"] == 0.0
        assert m["cos_sim"] == pytest.approx(1.0, abs=1e-6)


def test_mean_predictor_has_explained_variance_zero():
    x = _acts(1000, 16)
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
    x = _acts(700, 16, seed=4) + 50.0  # a large mean: the variance must be about the mean
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
    ev = evaluate_sae_detailed(_identity_sae(4), x, batch_size=32)
    np.testing.assert_array_equal(ev.feature_freq, [1.0, 0.05, 0.5, 0, 0, 0, 0.5, 0])
    assert ev.metrics["dead_frac"] == 4 / 8
    assert ev.metrics["dense_frac"] == 3 / 8
    assert ev.metrics["l0"] == pytest.approx(1 + 0.05 + 1)
    np.testing.assert_array_equal(feature_frequencies(_identity_sae(4), x), ev.feature_freq)
    assert evaluate_sae(_identity_sae(4), x, dense_threshold=0.6)["dense_frac"] == 1 / 8


def test_evaluate_rejects_width_mismatch_and_nan():
    sae = _identity_sae(4)
    with pytest.raises(ValueError, match="D=5 but the SAE's d_in=4"):
        evaluate_sae(sae, np.zeros((3, 5), np.float32))
    x = np.zeros((10, 4), np.float32)
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="first bad row is 7"):
        evaluate_sae(sae, x, batch_size=4)


# ------------------------------------------------------------------------------- data helpers


def test_check_finite_names_array_row_and_kind(tmp_path):
    path = tmp_path / "acts.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(1000, 8))
    mm[:] = 1.0
    mm.flush()
    check_finite(mm, "pt_L2", chunk_rows=64)  # clean: no error
    mm[700, 3] = np.inf
    mm[900, 0] = np.nan
    with pytest.raises(ValueError, match=r"pt_L2 .*first bad row is 700 \(contains inf\)"):
        check_finite(mm, "pt_L2", chunk_rows=64)
    mm[700, 3] = 0.0
    mm[900, 5] = -np.inf
    with pytest.raises(ValueError, match=r"ft_L4 .*row is 900 \(contains NaN and inf\)"):
        check_finite(np.load(path, mmap_mode="r"), "ft_L4", chunk_rows=128)


def test_estimate_scale_factor_gives_sqrt_d_mean_norm():
    x = _acts(3000, 16)
    s = estimate_scale_factor(x, n_samples=10_000)  # >= N: uses every row, exact
    assert np.linalg.norm(x.astype(np.float64) * s, axis=1).mean() == pytest.approx(4.0)
    s_sampled = estimate_scale_factor(x, n_samples=500, seed=1)
    assert s_sampled == pytest.approx(s, rel=0.05)
    assert s_sampled == estimate_scale_factor(x, n_samples=500, seed=1)
    with pytest.raises(ValueError, match="mean activation norm is 0"):
        estimate_scale_factor(np.zeros((10, 4), np.float32))


# ------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("sparsity", ["l1", "topk"])
def test_save_load_round_trip(tmp_path, sparsity):
    cfg = SAEConfig(
        d_in=16,
        d_sae=32,
        sparsity=sparsity,
        k=4,
        l1_coefficient=2.5,
        scale_factor=0.31,
        metadata={"layer": 2, "model": "minilm-l6", "kind": "ft", "git_commit": "abc123"},
    )
    sae = SparseAutoencoder(cfg, seed=5)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    out_dir = tmp_path / "sae" / "ft_L2"
    assert save_sae(sae, out_dir, extra={"metrics": {"fvu": np.float32(0.25)}}) == out_dir
    assert sorted(p.name for p in out_dir.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    saved = json.loads((out_dir / "cfg.json").read_text())
    assert saved["scale_factor"] == 0.31 and saved["metadata"]["layer"] == 2
    assert saved["metrics"] == {"fvu": 0.25}

    loaded = load_sae(out_dir)
    assert loaded.cfg == cfg
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.from_numpy(_acts(64, 16))
    with torch.no_grad():
        a, b = sae(x), loaded(x)
    for name in a._fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name

    # Overwriting replaces the directory and leaves no temp siblings behind.
    save_sae(SparseAutoencoder(cfg, seed=6), out_dir)
    assert not torch.equal(load_sae(out_dir).W_dec, sae.W_dec)
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["ft_L2"]


def test_save_rejects_clashing_or_unserialisable_extra(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))
    with pytest.raises(ValueError, match="'scale_factor' would overwrite"):
        save_sae(sae, tmp_path / "a", extra={"scale_factor": 2.0})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_sae(sae, tmp_path / "b", extra={"f": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"cfg\.json not found"):
        load_sae(tmp_path / "missing")


# ------------------------------------------------------------------------------- training


def test_train_validates_datasets_before_training():
    cfg = SAEConfig(d_in=8, d_sae=16)
    a, b = np.zeros((100, 8), np.float32), np.zeros((90, 8), np.float32)
    with pytest.raises(
        ValueError, match=r"datasets\[1\] has N=90 rows but datasets\[0\] has N=100"
    ):
        train_saes([cfg, cfg], [a, b], epochs=1)
    with pytest.raises(ValueError, match=r"datasets\[1\] has D=6 but cfgs\[1\].d_in=8"):
        train_saes([cfg, cfg], [a, np.zeros((100, 6), np.float32)], epochs=1)
    with pytest.raises(ValueError, match="2 configs but 1 datasets"):
        train_saes([cfg, cfg], [a], epochs=1)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        train_saes([cfg], [a])
    bad = a.copy()
    bad[42, 1] = np.nan
    with pytest.raises(ValueError, match=r"datasets\[0\] .*row is 42 \(contains NaN\)"):
        train_saes([cfg], [bad], epochs=1)


def test_training_is_seeded_and_logs_curve():
    x = _acts(600, 16)
    cfgs = [SAEConfig(d_in=16, d_sae=32, l1_coefficient=1.0)]
    calls = []
    kwargs = {"lr": 1e-3, "batch_size": 64, "epochs": 2.5, "warmup_ratio": 0.2, "log_every": 10}
    saes, curve = train_saes(
        cfgs, [x], seed=7, on_log=lambda s, rows: calls.append((s, rows)), **kwargs
    )
    again, _ = train_saes(cfgs, [x], seed=7, **kwargs)
    other, _ = train_saes(cfgs, [x], seed=8, **kwargs)
    assert torch.equal(saes[0].W_dec, again[0].W_dec) and torch.equal(saes[0].b_enc, again[0].b_enc)
    assert not torch.equal(saes[0].W_dec, other[0].W_dec)
    steps = math.ceil(2.5 * 600 / 64)  # 24 steps: logged at 10, 20 and the last
    assert [row["step"] for row in curve] == [10, 20, steps]
    assert all(set(row) == set(CURVE_KEYS) and row["sae"] == 0 for row in curve)
    assert [s for s, _ in calls] == [10, 20, steps] and calls[0][1] == curve[:1]
    assert curve[0]["lr"] == 1e-3 and curve[-1]["loss"] < curve[0]["loss"]


@pytest.mark.parametrize("stack", [True, False])
def test_stacked_training_equals_training_alone(tmp_path, stack):
    """Training together is only a speed-up: each SAE of a joint run (stacked [S, D, F] weights
    or one after the other) equals the same SAE trained alone (same seed, same init seed), also
    for a float16 memmap dataset and mixed sparsity kinds."""
    n, d = 512, 16
    path = tmp_path / "ft.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    mm[:] = _acts(n, d, seed=2, dtype=np.float16)
    mm.flush()
    pt, ft = _acts(n, d, seed=1), np.load(path, mmap_mode="r")
    cfgs = [
        SAEConfig(d_in=d, d_sae=48, l1_coefficient=1.0, scale_factor=estimate_scale_factor(pt)),
        SAEConfig(d_in=d, d_sae=48, l1_coefficient=3.0, scale_factor=estimate_scale_factor(ft)),
        SAEConfig(d_in=d, d_sae=48, sparsity="topk", k=4, scale_factor=0.5),
        SAEConfig(d_in=d, d_sae=48, sparsity="topk", k=4),
        SAEConfig(d_in=d, d_sae=32, l1_coefficient=1.0),  # another width: its own stack
    ]
    datasets = [pt, ft, pt, ft, pt]
    kwargs = {"lr": 3e-3, "batch_size": 100, "epochs": 3.0, "warmup_steps": 3, "seed": 11}
    joint, curve = train_saes(
        cfgs, datasets, init_seeds=[20, 21, 22, 23, 24], stack=stack, **kwargs
    )
    assert sorted({row["sae"] for row in curve}) == [0, 1, 2, 3, 4]
    for i, (cfg, ds) in enumerate(zip(cfgs, datasets, strict=True)):
        alone, _ = train_saes([cfg], [ds], init_seeds=[20 + i], **kwargs)
        assert alone[0].cfg == cfg
        for name, tensor in alone[0].state_dict().items():
            torch.testing.assert_close(
                joint[i].state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name
            )
    # Without init_seeds the default init of SAE 0 depends only on the seed.
    first, _ = train_saes(cfgs[:2], datasets[:2], stack=stack, **kwargs)
    alone0, _ = train_saes(cfgs[:1], datasets[:1], **kwargs)
    torch.testing.assert_close(first[0].W_dec, alone0[0].W_dec, rtol=1e-4, atol=1e-5)
    assert not torch.equal(first[0].W_dec, first[1].W_dec)


def test_trained_saes_learn_synthetic_sparse_features():
    """A real learning test: 8000 tokens made of ~4 of 64 unit directions in 32 dims."""
    x, dirs = _synthetic_sparse()
    s = estimate_scale_factor(x)
    cfgs = [
        SAEConfig(d_in=32, d_sae=128, sparsity="l1", l1_coefficient=1.0, scale_factor=s),
        SAEConfig(d_in=32, d_sae=128, sparsity="topk", k=8, scale_factor=s),
    ]
    saes, curve = train_saes(
        cfgs, [x, x], lr=3e-3, batch_size=256, epochs=10, warmup_steps=20, log_every=50
    )
    for sae in saes:
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))
        m = evaluate_sae(sae, x)
        assert m["fvu"] < 0.2, m
        assert 1.0 < m["l0"] < 25.0, m
        assert m["dead_frac"] < 0.5, m
        # Most true directions are found by some decoder row.
        cos = np.abs(dirs @ sae.W_dec.detach().numpy().T).max(1)
        assert np.median(cos) > 0.8, np.median(cos)
    assert evaluate_sae(saes[1], x)["l0"] <= 8
    first, last = curve[0], curve[-2]  # rows alternate sae 0, sae 1
    assert last["sae"] == 0 and last["loss"] < first["loss"]


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_precision_is_bf16_only_on_cpus_that_multiply_bf16_natively(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: torch.dtype | None
) -> None:
    from layerwise.models import autocast_dtype

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert autocast_dtype("auto", "cpu") is expected
    assert autocast_dtype("float32", "cpu") is None
    assert autocast_dtype("bfloat16", "cpu") is torch.bfloat16
