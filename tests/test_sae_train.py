"""layerwise.sae.train: data checks, the scale factor, and the trainer (validation, seeding,
curve, stacking as a pure speed-up, one forward shared with the module, a real learning test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_helpers import acts

import layerwise.sae.train as sae_train
from layerwise.sae.evaluate import evaluate_sae
from layerwise.sae.model import SAEConfig, SparseAutoencoder
from layerwise.sae.train import SAETrainer, TrainConfig, check_finite, estimate_scale_factor
from layerwise.schema import SAE_CURVE_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(cfgs, datasets, on_log=None, **kwargs):
    """One trainer run: ``kwargs`` are TrainConfig fields."""
    return SAETrainer(cfgs, datasets, TrainConfig(**kwargs), on_log=on_log).fit()


def _synthetic_sparse(n: int = 8000, d: int = 32, m: int = 64, seed: int = 0):
    """Tokens that are sparse nonnegative combinations (~4 of 64) of random unit directions."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((m, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coef = rng.uniform(0.5, 2.0, (n, m)) * (rng.random((n, m)) < 4 / m)
    return (coef @ dirs).astype(np.float32), dirs


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
    x = acts(3000, 16)
    s = estimate_scale_factor(x, n_samples=10_000)  # >= N: uses every row, exact
    assert np.linalg.norm(x.astype(np.float64) * s, axis=1).mean() == pytest.approx(4.0)
    s_sampled = estimate_scale_factor(x, n_samples=500, seed=1)
    assert s_sampled == pytest.approx(s, rel=0.05)
    assert s_sampled == estimate_scale_factor(x, n_samples=500, seed=1)
    with pytest.raises(ValueError, match="mean activation norm is 0"):
        estimate_scale_factor(np.zeros((10, 4), np.float32))


# ------------------------------------------------------------------------------- training


def test_train_validates_datasets_before_training():
    cfg = SAEConfig(d_in=8, d_sae=16)
    a, b = np.zeros((100, 8), np.float32), np.zeros((90, 8), np.float32)
    with pytest.raises(
        ValueError, match=r"datasets\[1\] has N=90 rows but datasets\[0\] has N=100"
    ):
        train([cfg, cfg], [a, b], epochs=1)
    with pytest.raises(ValueError, match=r"datasets\[1\] has D=6 but cfgs\[1\].d_in=8"):
        train([cfg, cfg], [a, np.zeros((100, 6), np.float32)], epochs=1)
    with pytest.raises(ValueError, match="2 configs but 1 datasets"):
        train([cfg, cfg], [a], epochs=1)
    with pytest.raises(ValueError, match="exactly one of epochs"):
        train([cfg], [a])
    bad = a.copy()
    bad[42, 1] = np.nan
    with pytest.raises(ValueError, match=r"datasets\[0\] .*row is 42 \(contains NaN\)"):
        train([cfg], [bad], epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr=0.0 must be finite and > 0"),
        ({"batch_size": 0}, "batch_size=0 must be >= 1"),
        ({"epochs": 1, "max_tokens": 10}, "give exactly one of epochs=1 and max_tokens=10"),
        ({"warmup_steps": 2, "warmup_ratio": 0.1}, "give at most one of warmup_steps=2"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"lr_decay_ratio": 1.5}, r"lr_decay_ratio=1.5 must be in \[0, 1\]"),
        ({"grad_clip": 0.0}, "grad_clip=0.0 must be > 0"),
        ({"log_every": 0}, "log_every=0 must be >= 1"),
        ({"l0_target": 0.0}, r"l0_target=0.0 must be finite and > 0 \(or None\)"),
        ({"l0_gain": -1.0}, "l0_gain=-1.0 must be finite and > 0"),
        ({"l0_max_step": 1.0}, r"l0_max_step=1.0 must be in \(0, 1\)"),
    ],
)
def test_train_config_names_the_bad_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"epochs": 1, **kwargs})


def test_training_is_seeded_and_logs_curve():
    x = acts(600, 16)
    cfgs = [SAEConfig(d_in=16, d_sae=32, l1_coefficient=1.0)]
    calls = []
    kwargs = {"lr": 1e-3, "batch_size": 64, "epochs": 2.5, "warmup_ratio": 0.2, "log_every": 10}
    saes, curve = train(cfgs, [x], seed=7, on_log=lambda s, rows: calls.append((s, rows)), **kwargs)
    again, _ = train(cfgs, [x], seed=7, **kwargs)
    other, _ = train(cfgs, [x], seed=8, **kwargs)
    assert torch.equal(saes[0].W_dec, again[0].W_dec) and torch.equal(saes[0].b_enc, again[0].b_enc)
    assert not torch.equal(saes[0].W_dec, other[0].W_dec)
    steps = math.ceil(2.5 * 600 / 64)  # 24 steps: logged at 10, 20 and the last
    assert [row["step"] for row in curve] == [10, 20, steps]
    assert all(set(row) == set(SAE_CURVE_COLUMNS) and row["sae"] == 0 for row in curve)
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
    mm[:] = acts(n, d, seed=2, dtype=np.float16)
    mm.flush()
    pt, ft = acts(n, d, seed=1), np.load(path, mmap_mode="r")
    cfgs = [
        SAEConfig(d_in=d, d_sae=48, l1_coefficient=1.0, scale_factor=estimate_scale_factor(pt)),
        SAEConfig(d_in=d, d_sae=48, l1_coefficient=3.0, scale_factor=estimate_scale_factor(ft)),
        SAEConfig(d_in=d, d_sae=48, sparsity="topk", k=4, scale_factor=0.5),
        SAEConfig(d_in=d, d_sae=48, sparsity="topk", k=4),
        SAEConfig(d_in=d, d_sae=32, l1_coefficient=1.0),  # another width: its own stack
    ]
    datasets = [pt, ft, pt, ft, pt]
    kwargs = {"lr": 3e-3, "batch_size": 100, "epochs": 3.0, "warmup_steps": 3, "seed": 11}
    joint, curve = train(cfgs, datasets, init_seeds=[20, 21, 22, 23, 24], stack=stack, **kwargs)
    assert sorted({row["sae"] for row in curve}) == [0, 1, 2, 3, 4]
    for i, (cfg, ds) in enumerate(zip(cfgs, datasets, strict=True)):
        alone, _ = train([cfg], [ds], init_seeds=[20 + i], **kwargs)
        assert alone[0].cfg == cfg
        for name, tensor in alone[0].state_dict().items():
            torch.testing.assert_close(
                joint[i].state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name
            )
    # Without init_seeds the default init of SAE 0 depends only on the seed.
    first, _ = train(cfgs[:2], datasets[:2], stack=stack, **kwargs)
    alone0, _ = train(cfgs[:1], datasets[:1], **kwargs)
    torch.testing.assert_close(first[0].W_dec, alone0[0].W_dec, rtol=1e-4, atol=1e-5)
    assert not torch.equal(first[0].W_dec, first[1].W_dec)


@pytest.mark.parametrize(("sparsity", "stack"), [("l1", True), ("l1", False), ("topk", True)])
def test_trainer_loss_is_the_modules_forward_loss(sparsity, stack):
    """Training and inference share one forward: the trainer's first logged step (one batch of
    every row, before any update) reports the losses and L0 that ``SparseAutoencoder.forward``
    gives for the same initial weights on the same batch."""
    x = acts(256, 16)
    s = estimate_scale_factor(x)
    cfgs = [
        SAEConfig(d_in=16, d_sae=48, sparsity=sparsity, k=6, l1_coefficient=c, scale_factor=s)
        for c in (1.0, 2.5)
    ]
    _, curve = train(
        cfgs, [x, x], lr=1e-3, batch_size=256, epochs=1, init_seeds=[3, 4], stack=stack
    )
    for cfg, init_seed, row in zip(cfgs, [3, 4], curve, strict=True):
        sae = SparseAutoencoder(cfg, seed=init_seed)
        with torch.no_grad():
            sae.b_dec.copy_(torch.from_numpy(x.astype(np.float64).mean(0) * s))
            out = sae(torch.from_numpy(x))
        assert row["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
        assert row["mse_loss"] == pytest.approx(out.mse_loss.item(), rel=1e-5)
        assert row["sparsity_loss"] == pytest.approx(out.sparsity_loss.item(), rel=1e-5, abs=1e-9)
        assert row["l0"] == pytest.approx((out.feature_acts > 0).sum(-1).double().mean().item())


def test_every_training_step_runs_the_shared_forward(monkeypatch):
    """The trainer has no forward of its own: each stack calls ``scaled_forward`` once a step."""
    calls = []
    shared = sae_train.scaled_forward

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return shared(*args, **kwargs)

    monkeypatch.setattr(sae_train, "scaled_forward", spy)
    x = acts(100, 16)
    cfgs = [SAEConfig(d_in=16, d_sae=32), SAEConfig(d_in=16, d_sae=32)]
    train(cfgs, [x, x], batch_size=50, epochs=2, stack=True)
    assert calls == [(2, 50, 16)] * 4


def test_trained_saes_learn_synthetic_sparse_features():
    """A real learning test: 8000 tokens made of ~4 of 64 unit directions in 32 dims."""
    x, dirs = _synthetic_sparse()
    s = estimate_scale_factor(x)
    cfgs = [
        SAEConfig(d_in=32, d_sae=128, sparsity="l1", l1_coefficient=1.0, scale_factor=s),
        SAEConfig(d_in=32, d_sae=128, sparsity="topk", k=8, scale_factor=s),
    ]
    saes, curve = train(
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


def test_l0_target_tunes_each_l1_coefficient_to_one_sparsity():
    """Two SAEs on the same tokens that a fixed coefficient leaves at very different L0 (one
    starts 10x the other's) end near one L0 when tuned, each saved with the coefficient it
    ended at; the TopK SAE beside them is left alone."""
    x, _ = _synthetic_sparse()
    s = estimate_scale_factor(x)
    cfgs = [
        SAEConfig(d_in=32, d_sae=128, l1_coefficient=0.3, scale_factor=s),
        SAEConfig(d_in=32, d_sae=128, l1_coefficient=3.0, scale_factor=s),
        SAEConfig(d_in=32, d_sae=128, sparsity="topk", k=8, scale_factor=s),
    ]
    schedule = {"lr": 3e-3, "batch_size": 256, "epochs": 12, "warmup_steps": 20}
    fixed, _ = train(cfgs, [x, x, x], lr_decay_ratio=0.2, **schedule)
    tuned, _ = train(cfgs, [x, x, x], lr_decay_ratio=0.2, l0_target=12.0, **schedule)
    l0_fixed = [evaluate_sae(sae, x)["l0"] for sae in fixed[:2]]
    l0_tuned = [evaluate_sae(sae, x)["l0"] for sae in tuned[:2]]
    assert l0_fixed[0] > 2 * l0_fixed[1], l0_fixed  # the confound the tuning removes
    assert all(abs(l0 - 12.0) < 3.0 for l0 in l0_tuned), l0_tuned
    assert abs(l0_tuned[0] - l0_tuned[1]) < 1.0, l0_tuned
    assert [sae.cfg.l1_coefficient for sae in fixed[:2]] == [0.3, 3.0]
    lam = [sae.cfg.l1_coefficient for sae in tuned[:2]]
    assert lam[0] > 0.3 and lam[1] < 3.0 and lam[1] / lam[0] < 3, lam
    assert tuned[2].cfg == cfgs[2]
    assert evaluate_sae(tuned[2], x)["l0"] <= 8


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


def test_training_arrays_stay_where_they_are_on_cpu() -> None:
    """Only a CUDA device makes the stores resident; on CPU the memmaps are read batch by batch."""
    from layerwise.sae._arrays import read_rows, resident

    data = np.arange(12, dtype=np.float16).reshape(4, 3)
    assert resident([data], torch.device("cpu"))[0] is data
    rows = read_rows(torch.from_numpy(data), np.array([0, 2]))
    assert rows.dtype == torch.float32 and rows.device.type == "cpu"
    torch.testing.assert_close(rows, torch.tensor(data[[0, 2]], dtype=torch.float32))


@pytest.mark.cuda
def test_store_moves_to_gpu_once_in_its_own_dtype() -> None:
    """A store that fits goes to GPU memory once, still float16 (read as float32 per batch)."""
    from layerwise.sae._arrays import resident

    data = np.random.default_rng(0).standard_normal((512, 16)).astype(np.float16)
    device = torch.device("cuda")
    moved = resident([data], device)[0]
    assert isinstance(moved, torch.Tensor) and moved.device.type == "cuda"
    assert moved.dtype == torch.float16
