"""layerwise.sae.model: config validation, the one forward pass and its invariants, moving an
SAE between devices, save/load."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sae_helpers import acts

from layerwise.sae.evaluate import evaluate_sae
from layerwise.sae.model import (
    SAEConfig,
    SparseAutoencoder,
    load_sae,
    numpy_encoder,
    on_device,
    save_sae,
    scaled_forward,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    x = torch.from_numpy(acts(64, 16))
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


@pytest.mark.parametrize("sparsity", ["l1", "topk"])
def test_scaled_forward_of_a_stack_is_each_saes_forward(sparsity):
    """Stacked ``[S, D, F]`` weights through scaled_forward give, per SAE, what that SAE's own
    ``forward`` gives: the trainer's stack is only a batching of the one forward pass."""
    cfgs = [
        SAEConfig(d_in=16, d_sae=48, sparsity=sparsity, k=5, l1_coefficient=c, scale_factor=s)
        for c, s in ((1.0, 0.37), (3.0, 1.6))
    ]
    saes = [SparseAutoencoder(cfg, seed=i) for i, cfg in enumerate(cfgs)]
    with torch.no_grad():
        for sae in saes:
            sae.b_enc.normal_()
            sae.b_dec.normal_()
    stacked = torch.nn.Module()
    for name in ("W_enc", "W_dec"):
        setattr(stacked, name, torch.stack([getattr(s, name).detach() for s in saes]))
    for name in ("b_enc", "b_dec"):
        setattr(stacked, name, torch.stack([getattr(s, name).detach() for s in saes]).unsqueeze(1))
    x = torch.from_numpy(acts(64, 16))
    scale = torch.tensor([c.scale_factor for c in cfgs]).view(-1, 1, 1)
    l1 = torch.tensor([c.l1_coefficient for c in cfgs])
    out = scaled_forward(stacked, x * scale, sparsity=sparsity, k=5, l1_coefficient=l1)
    with torch.no_grad():
        for j, (sae, cfg) in enumerate(zip(saes, cfgs, strict=True)):
            alone = sae(x)
            torch.testing.assert_close(out.x_hat[j] / cfg.scale_factor, alone.x_hat)
            torch.testing.assert_close(out.feature_acts[j], alone.feature_acts)
            for name in ("loss", "mse_loss", "sparsity_loss"):
                torch.testing.assert_close(getattr(out, name)[j], getattr(alone, name))


def test_transpose_init_and_unit_decoder_rows():
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=40), seed=3)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    assert not torch.equal(sae.W_dec, SparseAutoencoder(SAEConfig(16, 40), seed=4).W_dec)


def test_topk_l0_at_most_k():
    cfg = SAEConfig(d_in=16, d_sae=64, sparsity="topk", k=7)
    sae = SparseAutoencoder(cfg, seed=0)
    z = sae.encode(torch.from_numpy(acts(256, 16)))
    assert int((z > 0).sum(-1).max()) <= 7
    assert (z >= 0).all()
    assert evaluate_sae(sae, acts(256, 16))["l0"] <= 7


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
    x = torch.from_numpy(acts(128, 16))
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x), sae.encode(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(folded(x).x_hat, sae(x).x_hat, rtol=1e-4, atol=1e-4)
    assert sae.cfg.scale_factor == 0.23  # the original is untouched


def test_repeated_steps_on_one_batch_lower_loss_and_keep_unit_rows():
    cfg = SAEConfig(d_in=16, d_sae=64, l1_coefficient=0.5)
    sae = SparseAutoencoder(cfg, seed=0)
    x = torch.from_numpy(acts(256, 16))
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
    x = acts(50, 16, dtype=np.float16)
    z = numpy_encoder(sae)(x)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (50, 32)
    np.testing.assert_array_equal(z, sae.encode(torch.from_numpy(x.astype(np.float32))).detach())


# ------------------------------------------------------------------------------- devices


def test_on_device_keeps_an_sae_that_is_already_there():
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))
    for device in (None, "cpu", torch.device("cpu"), sae.device):
        assert on_device(sae, device) is sae


def test_on_device_reads_bare_cuda_as_the_current_cuda_device(monkeypatch):
    """``cuda`` and ``cuda:0`` are one device when 0 is current: no copy. (A stand-in with a
    CUDA ``device`` attribute: nothing is moved when the devices match.)"""

    class OnCuda:
        device = torch.device("cuda", 0)

    fake = OnCuda()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert on_device(fake, "cuda") is fake
    assert on_device(fake, torch.device("cuda")) is fake
    assert on_device(fake, "cuda:0") is fake


def test_on_device_copies_to_another_device_and_leaves_the_original():
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))
    moved = on_device(sae, "meta")
    assert moved is not sae and moved.device.type == "meta"
    assert sae.device.type == "cpu"


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
    x = torch.from_numpy(acts(64, 16))
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
