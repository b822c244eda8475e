"""layerwise.sae.crosscoder (with crosscoder_train, crosscoder_analysis) and sae.batch_topk:
budget and its inference threshold, losses that fall, save/load, per-model quality by the SAE
definitions, and the model-diffing readout on planted data (shared / PT-only / FT-only
directions recovered with relative norms near 0.5 / 0 / 1; Latent Scaling flags a constructed
artefact, not a true FT-only latent)."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest
import torch

from layerwise.sae.batch_topk import batch_topk
from layerwise.sae.crosscoder import (
    SIDES,
    Crosscoder,
    CrosscoderConfig,
    crosscoder_forward,
    load_crosscoder,
    save_crosscoder,
)
from layerwise.sae.crosscoder_analysis import (
    classify_latents,
    decoder_norms,
    evaluate_crosscoder,
    flag_artefacts,
    latent_scaling,
    relative_norms,
)
from layerwise.sae.crosscoder_train import CURVE_COLUMNS, CrosscoderTrainer, estimate_threshold
from layerwise.sae.train import TrainConfig, estimate_scale_factor
from layerwise.schema import SAE_METRIC_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 64
N_SHARED, N_PT, N_FT = 12, 6, 6


class Planted(NamedTuple):
    """Paired activations built from known directions."""

    x_pt: np.ndarray
    x_ft: np.ndarray
    shared: np.ndarray
    """``[N_SHARED, D]`` unit directions both models hold (same vector, same coefficient)."""
    pt_only: np.ndarray
    """``[N_PT, D]`` directions only in the PT activations."""
    ft_only: np.ndarray
    """``[N_FT, D]`` directions only in the FT activations."""


def planted(n: int = 6000, seed: int = 0) -> Planted:
    """Each token holds ~2 of 24 directions with coefficients in [1, 2], a per-model offset and
    small noise; a shared direction enters both models' rows, a model-only one just its own."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((N_SHARED + N_PT + N_FT, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coef = rng.uniform(1.0, 2.0, (n, len(dirs))) * (rng.random((n, len(dirs))) < 2 / len(dirs))
    shared, pt_only, ft_only = np.split(dirs, [N_SHARED, N_SHARED + N_PT])
    c_shared, c_pt, c_ft = np.split(coef, [N_SHARED, N_SHARED + N_PT], axis=1)
    x_pt = c_shared @ shared + c_pt @ pt_only + rng.normal(0, 0.5, D)
    x_ft = c_shared @ shared + c_ft @ ft_only + rng.normal(0, 0.5, D)
    x_pt += rng.normal(0, 0.02, x_pt.shape)
    x_ft += rng.normal(0, 0.02, x_ft.shape)
    return Planted(x_pt.astype(np.float32), x_ft.astype(np.float32), shared, pt_only, ft_only)


def config(x_pt: np.ndarray, x_ft: np.ndarray, **kwargs) -> CrosscoderConfig:
    kwargs.setdefault("d_latent", 48)
    kwargs.setdefault("k", 2)
    return CrosscoderConfig(
        d_in=x_pt.shape[1],
        scale_factor_pt=estimate_scale_factor(x_pt),
        scale_factor_ft=estimate_scale_factor(x_ft),
        **kwargs,
    )


def train_config(**kwargs) -> TrainConfig:
    defaults = {"lr": 3e-3, "batch_size": 256, "max_tokens": 256 * 600, "warmup_steps": 20}
    return TrainConfig(**{**defaults, "lr_decay_ratio": 0.2, **kwargs})


@pytest.fixture(scope="module")
def trained():
    """A BatchTopK crosscoder trained on planted data (the expensive part, done once)."""
    torch.manual_seed(0)
    data = planted()
    cc, curve = CrosscoderTrainer(
        config(data.x_pt, data.x_ft), data.x_pt, data.x_ft, train_config()
    ).fit()
    return data, cc, curve


def best_match(directions: np.ndarray, decoder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each planted direction: the latent whose decoder row is closest in cosine, and it."""
    unit = decoder / np.linalg.norm(decoder, axis=-1, keepdims=True).clip(1e-12)
    cos = directions @ unit.T
    return cos.argmax(1), cos.max(1)


def matched_latents(data: Planted, cc: Crosscoder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Planted kind -> (matched latents, cosines), each direction matched on the model(s) that
    hold it (shared: the concatenated rows)."""
    W = cc.decoders().detach().cpu().numpy()  # [F, 2, D]
    both = np.concatenate([data.shared, data.shared], axis=1) / np.sqrt(2)
    return {
        "shared": best_match(both, W.reshape(len(W), -1)),
        "pt_only": best_match(data.pt_only, W[:, 0]),
        "ft_only": best_match(data.ft_only, W[:, 1]),
    }


# --------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_latent": 0}, "d_latent=0"),
        ({"sparsity": "topk"}, "sparsity='topk'"),
        ({"k": 0}, "k=0"),
        ({"k": 9}, "k=9"),
        ({"l1_coefficient": -1.0}, "l1_coefficient=-1.0"),
        ({"scale_factor_ft": 0.0}, "scale_factor_ft=0.0"),
        ({"init_decoder_norm": float("nan")}, "init_decoder_norm=nan"),
        ({"d_in": True}, "d_in=True"),
        ({"metadata": []}, "metadata"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        CrosscoderConfig(**{"d_in": 4, "d_latent": 8, "k": 2, **kwargs})


# ------------------------------------------------------------------------------ BatchTopK


def test_batch_topk_keeps_exactly_k_times_batch_by_score():
    acts = torch.rand(16, 40)
    weight = torch.rand(40) + 0.1
    kept, cutoff = batch_topk(acts, weight, 3)
    assert int((kept != 0).sum()) == 16 * 3
    scores = acts * weight
    assert torch.equal(kept != 0, scores >= cutoff)  # the k*B best scores, not the best acts
    assert torch.equal(kept[kept != 0], acts[kept != 0])  # kept values are the activations


def test_training_forward_keeps_k_times_batch_latents(trained):
    data, cc, _ = trained
    x = cc.scale(torch.from_numpy(data.x_pt[:300]), torch.from_numpy(data.x_ft[:300]))
    out = crosscoder_forward(cc, x, use_threshold=False)
    assert int((out.latent_acts > 0).sum()) == cc.cfg.k * 300
    assert out.cutoff is not None and out.cutoff > 0


def test_inference_threshold_gives_about_k_active_per_row(trained):
    data, cc, _ = trained
    z = cc.encode(torch.from_numpy(data.x_pt), torch.from_numpy(data.x_ft))
    l0 = float((z > 0).sum(1).float().mean())
    assert l0 == pytest.approx(cc.cfg.k, rel=0.1)
    one_row = cc.encode(torch.from_numpy(data.x_pt[:1]), torch.from_numpy(data.x_ft[:1]))
    torch.testing.assert_close(one_row, z[:1])  # a row's code does not depend on its batch


def test_forward_with_the_threshold_is_decode_of_encode(trained):
    data, cc, _ = trained
    x_pt, x_ft = torch.from_numpy(data.x_pt[:100]), torch.from_numpy(data.x_ft[:100])
    with torch.no_grad():
        out = cc(x_pt, x_ft, use_threshold=True)
        z = cc.encode(x_pt, x_ft)
        x_hat_pt, x_hat_ft = cc.decode(z)
    assert torch.equal(out.latent_acts, z)
    torch.testing.assert_close(out.x_hat_pt, x_hat_pt)
    torch.testing.assert_close(out.x_hat_ft, x_hat_ft)
    assert out.sparsity_loss == 0 and out.loss == out.mse_loss


def test_untrained_batchtopk_encode_asks_for_a_threshold():
    cc = Crosscoder(CrosscoderConfig(d_in=4, d_latent=8, k=2))
    with pytest.raises(ValueError, match="no inference threshold"):
        cc.encode(torch.zeros(2, 4), torch.zeros(2, 4))
    cc.threshold.fill_(estimate_threshold(cc, np.ones((8, 4)), np.ones((8, 4)), batch_size=4))
    assert cc.encode(torch.ones(2, 4), torch.ones(2, 4)).shape == (2, 8)
    l1 = Crosscoder(CrosscoderConfig(d_in=4, d_latent=8, sparsity="l1"))
    with pytest.raises(ValueError, match="l1 crosscoder has no inference threshold"):
        estimate_threshold(l1, np.ones((8, 4)), np.ones((8, 4)))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("sparsity", ["batchtopk", "l1"])
def test_repeated_steps_on_one_batch_lower_the_loss(sparsity):
    data = planted(n=512)
    cc = Crosscoder(config(data.x_pt, data.x_ft, sparsity=sparsity, l1_coefficient=0.1))
    x = cc.scale(torch.from_numpy(data.x_pt), torch.from_numpy(data.x_ft))
    optimizer = torch.optim.Adam(cc.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = crosscoder_forward(cc, x, use_threshold=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_l1_penalty_is_weighted_by_the_sum_of_decoder_norms():
    data = planted(n=64)
    cc = Crosscoder(config(data.x_pt, data.x_ft, sparsity="l1", l1_coefficient=0.5))
    with torch.no_grad():
        cc.decoders()[:, 1] *= 3.0
    out = cc(torch.from_numpy(data.x_pt), torch.from_numpy(data.x_ft))
    weight = torch.from_numpy(decoder_norms(cc).sum(1)).float()
    expected = (out.latent_acts * weight).sum(1).mean()
    torch.testing.assert_close(out.sparsity_loss, expected)
    torch.testing.assert_close(out.loss, out.mse_loss + 0.5 * expected)


def test_trainer_curve_and_input_checks(trained):
    data, cc, curve = trained
    assert all(tuple(row) == CURVE_COLUMNS for row in curve)
    assert curve[-1]["step"] == 600
    assert curve[-1]["l0"] == pytest.approx(cc.cfg.k)
    assert curve[-1]["fvu_pt"] < 0.5 * curve[0]["fvu_pt"]
    cfg = cc.cfg
    with pytest.raises(ValueError, match="same tokens"):
        CrosscoderTrainer(cfg, data.x_pt, data.x_ft[:-1], train_config())
    bad = data.x_ft.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="acts_ft has non-finite values: first bad row is 7"):
        CrosscoderTrainer(cfg, data.x_pt, bad, train_config())


def memmap16(path, rows: np.ndarray) -> np.memmap:
    """``rows`` as a read-only float16 ``.npy`` memmap, the activation stores' format."""
    np.save(path, rows.astype(np.float16))
    return np.load(path, mmap_mode="r")


def test_bfloat16_autocast_trains_on_float16_memmaps_with_the_exact_batch_budget(tmp_path):
    data = planted(n=1024)
    x_pt, x_ft = memmap16(tmp_path / "pt.npy", data.x_pt), memmap16(tmp_path / "ft.npy", data.x_ft)
    cfg = config(x_pt, x_ft)
    config_bf16 = train_config(
        max_tokens=256 * 40, warmup_steps=5, autocast_dtype=torch.bfloat16, log_every=10
    )
    cc, curve = CrosscoderTrainer(cfg, x_pt, x_ft, config_bf16).fit()
    assert [row["l0"] for row in curve] == [cfg.k] * 4  # selection by index: ties keep no extra
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]
    assert cc.W_dec.dtype == torch.float32 and cc.threshold > 0


# ------------------------------------------------------------------------- save and load


def test_save_load_gives_identical_outputs(trained, tmp_path):
    data, cc, _ = trained
    out = save_crosscoder(cc, tmp_path / "cc", extra={"metrics": {"fvu": 0.1}})
    loaded = load_crosscoder(out)
    x_pt, x_ft = torch.from_numpy(data.x_pt[:200]), torch.from_numpy(data.x_ft[:200])
    z = cc.encode(x_pt, x_ft)
    assert torch.equal(loaded.encode(x_pt, x_ft), z)
    for a, b in zip(loaded.decode(z), cc.decode(z), strict=True):
        assert torch.equal(a, b)
    assert loaded.cfg == cc.cfg
    saved = json.loads((out / "cfg.json").read_text())
    assert saved["sides"] == list(SIDES) and saved["metrics"] == {"fvu": 0.1}
    assert not {"git_commit", "commit", "date", "created"} & set(saved)
    with pytest.raises(ValueError, match="would overwrite"):
        save_crosscoder(cc, tmp_path / "again", extra={"k": 3})


# ------------------------------------------------------------------------------- quality


def test_evaluation_per_model_follows_the_sae_definitions(trained):
    data, cc, _ = trained
    ev = evaluate_crosscoder(cc, data.x_pt, data.x_ft, batch_size=1000)
    assert set(ev.metrics) == set(SIDES)
    x_pt, x_ft = torch.from_numpy(data.x_pt), torch.from_numpy(data.x_ft)
    with torch.no_grad():
        z = cc.encode(x_pt, x_ft)
        x_hats = cc.decode(z)
    for side, x, x_hat in zip(SIDES, (x_pt, x_ft), x_hats, strict=True):
        m = ev.metrics[side]
        assert tuple(m) == SAE_METRIC_KEYS
        x64, x_hat64 = x.double(), x_hat.double()
        fvu = float((x64 - x_hat64).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
        assert m["fvu"] == pytest.approx(fvu, rel=1e-5)
        assert m["fvu"] < 0.1
        assert m["l0"] == pytest.approx(float((z > 0).sum(1).double().mean()))
    np.testing.assert_allclose(ev.latent_freq, (z > 0).double().mean(0).numpy())


# ------------------------------------------------------------------------ model diffing


def test_relative_norms_and_classes_on_a_built_crosscoder():
    cfg = CrosscoderConfig(d_in=2, d_latent=4, k=1)
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.decoders().copy_(torch.tensor([[[1, 0], [0, 0]], [[1, 0], [0, 1]], [[0, 0], [3, 4]],
                                     [[0.95, 0], [0.05, 0]]]))  # fmt: skip
    np.testing.assert_allclose(relative_norms(cc), [0.0, 0.5, 1.0, 0.05])
    assert list(classify_latents(relative_norms(cc))) == [
        "pt_only",
        "shared",
        "ft_only",
        "pt_only",
    ]
    assert list(classify_latents([0.05, 0.5, 0.95], pt_only_below=0.01)) == [
        "shared",
        "shared",
        "ft_only",
    ]
    with pytest.raises(ValueError, match="pt_only_below"):
        classify_latents([0.5], pt_only_below=0.9, ft_only_above=0.1)


def test_recovers_planted_shared_pt_only_and_ft_only_directions(trained):
    data, cc, _ = trained
    r = relative_norms(cc)
    classes = classify_latents(r)
    expected = {"shared": (0.5, "shared"), "pt_only": (0.0, "pt_only"), "ft_only": (1.0, "ft_only")}
    for kind, (latents, cosines) in matched_latents(data, cc).items():
        target_r, target_class = expected[kind]
        assert cosines.min() > 0.9, (kind, cosines)
        assert len(set(latents)) == len(latents), kind  # one latent per direction
        np.testing.assert_allclose(r[latents], target_r, atol=0.15, err_msg=kind)
        assert set(classes[latents]) == {target_class}, kind


def test_latent_scaling_flags_a_constructed_artefact_not_a_true_ft_only_latent(trained):
    data, cc, _ = trained
    matched = matched_latents(data, cc)
    true_ft = matched["ft_only"][0]
    # An artefact: shared latents whose PT decoder rows are cut. By decoder norms they are now
    # FT-only, but the PT activations still hold their directions.
    cut = matched["shared"][0][:4]
    tensors = {name: t.clone() for name, t in cc.state_dict().items()}
    tensors["W_dec"].view(cc.cfg.d_latent, 2, -1)[cut, 0] = 0.0
    edited = Crosscoder.from_weights(cc.cfg, tensors)
    assert set(classify_latents(relative_norms(edited))[cut]) == {"ft_only"}

    latents = np.concatenate([true_ft, cut])
    scaling = latent_scaling(edited, data.x_pt, data.x_ft, latents, present="ft", batch_size=999)
    flagged = flag_artefacts(scaling)
    assert not flagged[: len(true_ft)].any(), scaling.ratio_error[: len(true_ft)]
    assert flagged[len(true_ft) :].all(), scaling.ratio_error[len(true_ft) :]
    # The present model's betas are ~1: the latent explains its own contribution there.
    np.testing.assert_allclose(scaling.beta_error[:, 1], 1.0, atol=0.2)
    assert (np.abs(scaling.ratio_error[: len(true_ft)]) < 0.1).all()
    assert (scaling.ratio_error[len(true_ft) :] > 0.7).all()
    assert (scaling.n_active > 0).all()


def test_latent_scaling_of_pt_only_latents_mirrors_ft(trained):
    data, cc, _ = trained
    pt_latents = matched_latents(data, cc)["pt_only"][0]
    scaling = latent_scaling(cc, data.x_pt, data.x_ft, pt_latents, present="pt")
    assert not flag_artefacts(scaling).any(), scaling
    with pytest.raises(ValueError, match="side='base'"):
        latent_scaling(cc, data.x_pt, data.x_ft, pt_latents, present="base")
