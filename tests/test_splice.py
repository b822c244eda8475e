"""Splicing on a tiny classifier: an exact replacement recovers everything, the mean nothing;
the hook hands the replacement back in the hidden state's dtype and device; a batch-dependent
replacement is built once per batch from that batch; the paired bootstrap brackets the point."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_keyword_texts
from sae_helpers import identity_sae

from layerwise import splice
from layerwise.architectures import hidden_state_module
from layerwise.models import load_classifier, load_tokenizer
from layerwise.schema import SAE_SPLICE_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 8
N_TEXTS = 24


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path) -> SimpleNamespace:
    """The tiny BERT with a fresh two-label head, its tokenizer and 24 keyword val texts."""
    torch.manual_seed(0)
    classifier = load_classifier(str(tiny_bert_dir), ["negative", "positive"]).eval()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts, names = make_keyword_texts(N_TEXTS, 1)
    labels = np.array([int(name == "positive") for name in names])
    val = splice.ValTexts.tokenize(tokenizer, texts, labels, 32, BATCH, "cpu")
    return SimpleNamespace(classifier=classifier, tokenizer=tokenizer, texts=texts, val=val)


def _logits(model, tokenizer, texts) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.float()


# --------------------------------------------------------------------------------------------
# The hook
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_dtype", "sae_dtype"),
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32)],
)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_splice_changes_no_logit_in_any_precision(
    tiny: SimpleNamespace, layer: int, model_dtype, sae_dtype
) -> None:
    """An exact (identity) SAE spliced at any layer leaves every logit as it was, whatever the
    SAE's dtype against the model's: the reconstruction comes back in the hidden state's dtype
    (a float64 state would stop a float32 model; a float32 one would change a bf16 model)."""
    model = tiny.classifier.to(model_dtype)
    try:
        clean = _logits(model, tiny.tokenizer, tiny.texts)
        sae = identity_sae(32).to(sae_dtype)
        handle = hidden_state_module(model, layer).register_forward_hook(splice.splice_hook(sae))
        try:
            spliced = _logits(model, tiny.tokenizer, tiny.texts)
        finally:
            handle.remove()
    finally:
        tiny.classifier.to(torch.float32)
    assert torch.equal(spliced, clean)


def test_splice_hook_returns_the_hidden_states_dtype_for_tensor_and_tuple_outputs() -> None:
    hook = splice.splice_hook(identity_sae(8).double())
    hidden = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    out = hook(None, (), hidden)
    assert out.dtype == torch.bfloat16 and out.device == hidden.device
    assert torch.equal(out, hidden)
    extra = torch.ones(1)
    recon, rest = hook(None, (), (hidden, extra))
    assert recon.dtype == torch.bfloat16 and torch.equal(recon, hidden) and rest is extra


def test_a_replacement_of_the_wrong_shape_is_refused() -> None:
    hook = splice.replacing_hook(lambda hidden: hidden[:, :1])
    with pytest.raises(ValueError, match=r"replacement has shape \(2, 1, 8\)"):
        hook(None, (), torch.zeros(2, 3, 8))


# --------------------------------------------------------------------------------------------
# Per-text scores, the mean and the shares recovered
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean(tiny: SimpleNamespace) -> splice.TextScores:
    return splice.text_scores(tiny.classifier, tiny.val)


def test_clean_scores_are_the_models_own_predictions_and_losses(
    tiny: SimpleNamespace, clean: splice.TextScores
) -> None:
    logits = _logits(tiny.classifier, tiny.tokenizer, tiny.texts)
    labels = torch.as_tensor(tiny.val.labels)
    expected_loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    np.testing.assert_array_equal(clean.correct, (logits.argmax(-1) == labels).numpy())
    np.testing.assert_allclose(clean.loss, expected_loss.numpy(), rtol=1e-5)
    assert clean.correct.dtype == bool and clean.loss.shape == (N_TEXTS,)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_an_exact_sae_recovers_everything_and_the_mean_nothing(
    tiny: SimpleNamespace, clean: splice.TextScores, layer: int
) -> None:
    """Spliced = clean for an exact SAE (recovered 1, with a degenerate interval); splicing the
    mean is the ablation itself (recovered 0); the hooks are gone afterwards."""
    module = hidden_state_module(tiny.classifier, layer)
    mean = splice.mean_hidden_state(tiny.classifier, tiny.val, layer)
    ablate = splice.per_batch(splice.constant_replace(mean))
    ablated = splice.text_scores(tiny.classifier, tiny.val, layer, ablate)
    exact = splice.per_batch(splice.sae_replace(identity_sae(32)))
    spliced = splice.text_scores(tiny.classifier, tiny.val, layer, exact)
    assert not module._forward_hooks
    np.testing.assert_array_equal(spliced.correct, clean.correct)
    np.testing.assert_array_equal(spliced.loss, clean.loss)
    assert ablated.mean_loss != pytest.approx(clean.mean_loss)

    m = splice.splice_metrics(clean, spliced, ablated, n_boot=200, seed=0)
    assert list(m) == list(SAE_SPLICE_KEYS)
    assert (m["ft_recovered_loss"], m["ft_recovered_loss_lo"], m["ft_recovered_loss_hi"]) == (
        1.0,
        1.0,
        1.0,
    )
    assert m["ft_loss_clean"] == pytest.approx(clean.mean_loss)
    again = splice.text_scores(tiny.classifier, tiny.val, layer, ablate)
    point, lo, hi = splice.recovered(clean.loss, again.loss, ablated.loss, 200, 0)
    assert (point, lo, hi) == (0.0, 0.0, 0.0)


def test_the_mean_is_over_real_tokens_of_the_layers_hidden_state(tiny: SimpleNamespace) -> None:
    """Padding does not enter the mean: it equals the mean over every text's tokens taken one
    text at a time (no padding at all)."""
    layer = 1
    rows = []
    with torch.inference_mode():
        for ids in tiny.val.ids:
            out = tiny.classifier(input_ids=torch.tensor([ids]), output_hidden_states=True)
            rows.append(out.hidden_states[layer][0].double())
    expected = torch.cat(rows).mean(0).float()
    got = splice.mean_hidden_state(tiny.classifier, tiny.val, layer)
    assert got.shape == (32,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_batch_dependent_replacement_is_built_once_per_batch_from_that_batch(
    tiny: SimpleNamespace, clean: splice.TextScores
) -> None:
    """``make_replace`` sees each batch once, numbered in order, before the forward it serves:
    here it hands back the batch's clean hidden state recorded beforehand by ``record_states``
    (as the crosscoder stage looks up the PT model's), which must reproduce the clean scores."""
    layer, calls = 2, []
    states = splice.record_states(tiny.classifier, tiny.val, [layer])

    def make_replace(number: int, batch: dict[str, torch.Tensor]) -> splice.Replace:
        calls.append((number, batch["input_ids"].shape))
        recorded = states[number][layer]

        def replace(hidden: torch.Tensor) -> torch.Tensor:
            assert hidden.shape == recorded.shape
            return recorded

        return replace

    scores = splice.text_scores(tiny.classifier, tiny.val, layer, make_replace)
    assert [number for number, _ in calls] == list(range(-(-N_TEXTS // BATCH)))
    assert sum(shape[0] for _, shape in calls) == N_TEXTS
    assert sorted(states[0]) == [layer]
    np.testing.assert_array_equal(scores.correct, clean.correct)
    np.testing.assert_allclose(scores.loss, clean.loss, rtol=1e-6)


def test_one_clean_pass_gives_the_scores_and_every_layers_mean(
    tiny: SimpleNamespace, clean: splice.TextScores
) -> None:
    """The shared pass scores exactly as ``text_scores`` does and takes the same per-layer
    means as a pass per layer; the recording hooks are gone afterwards."""
    modules = [hidden_state_module(tiny.classifier, layer) for layer in (1, 2)]
    before = [dict(m._forward_hooks) for m in modules]
    scores, means = splice.clean_pass(tiny.classifier, tiny.val, [1, 2])
    assert [dict(m._forward_hooks) for m in modules] == before
    np.testing.assert_array_equal(scores.correct, clean.correct)
    np.testing.assert_array_equal(scores.loss, clean.loss)
    assert sorted(means) == [1, 2]
    for layer in (1, 2):
        alone = splice.mean_hidden_state(tiny.classifier, tiny.val, layer)
        torch.testing.assert_close(means[layer], alone)
    assert not torch.allclose(means[1], means[2])


def test_autocast_scoring_runs_in_bf16_and_stays_close(
    tiny: SimpleNamespace, clean: splice.TextScores
) -> None:
    """Under bf16 autocast (as the fine-tune stage scores val) the losses move by bf16 rounding
    only, and a bf16 pass is really taken (the losses are not bit-identical)."""
    scores, _ = splice.clean_pass(tiny.classifier, tiny.val, [2], torch.bfloat16)
    np.testing.assert_allclose(scores.loss, clean.loss, rtol=0.05, atol=0.02)
    assert not np.array_equal(scores.loss, clean.loss)


def test_val_texts_need_one_label_per_text(tiny: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="3 texts and 2 labels"):
        splice.ValTexts.tokenize(tiny.tokenizer, ["a", "b", "c"], np.array([0, 1]), 8, 2, "cpu")


# --------------------------------------------------------------------------------------------
# The paired bootstrap
# --------------------------------------------------------------------------------------------


def _constructed(n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-text correctness: clean 90%, ablated 50%, spliced right on 80% of texts (a subset of
    the clean model's right answers, as a lossy replacement would be)."""
    rng = np.random.default_rng(1)
    clean = rng.random(n) < 0.9
    spliced = clean & (rng.random(n) < 0.8 / 0.9)
    ablated = rng.random(n) < 0.5
    return clean.astype(float), spliced.astype(float), ablated.astype(float)


def test_the_bootstrap_interval_brackets_the_point_and_is_seeded() -> None:
    clean, spliced, ablated = _constructed()
    point, lo, hi = splice.recovered(clean, spliced, ablated, n_boot=500, seed=3)
    expected = (spliced.mean() - ablated.mean()) / (clean.mean() - ablated.mean())
    assert point == pytest.approx(expected)
    assert lo < point < hi
    assert lo > 0.5 and hi < 1.0
    assert splice.recovered(clean, spliced, ablated, n_boot=500, seed=3) == (point, lo, hi)
    assert splice.recovered(clean, spliced, ablated, n_boot=500, seed=4) != (point, lo, hi)
    _, lo90, hi90 = splice.recovered(clean, spliced, ablated, 500, 3, confidence=0.5)
    assert lo < lo90 < hi90 < hi


def test_the_bootstrap_is_paired_over_texts() -> None:
    """A replacement that equals the clean model on every text recovers exactly 1 in every
    resample (unpaired resampling of the three vectors would scatter it)."""
    clean, _, ablated = _constructed()
    assert splice.recovered(clean, clean.copy(), ablated, 300, 0) == (1.0, 1.0, 1.0)


def test_a_zero_denominator_gives_nan() -> None:
    clean = np.array([1.0, 0.0, 1.0, 0.0])
    ablated = np.array([0.0, 1.0, 1.0, 0.0])
    point, lo, hi = splice.recovered(clean, np.ones(4), ablated, 100, 0)
    assert np.isnan(point) and np.isnan(lo) and np.isnan(hi)


def test_bad_arguments_name_the_value() -> None:
    x = np.ones(3)
    with pytest.raises(ValueError, match="confidence"):
        splice.recovered(x, x, x, 10, 0, confidence=95)
    with pytest.raises(ValueError, match="n_boot must be >= 1, got 0"):
        splice.recovered(x, x, x, 0, 0)
    with pytest.raises(ValueError, match=r"got \(3, 2, 3\)"):
        splice.recovered(x, np.ones(2), x, 10, 0)


def test_unspliceable_units_are_nan_but_for_the_clean_loss() -> None:
    clean = splice.TextScores(np.array([True, False]), np.array([0.2, 0.4]))
    m = splice.nan_splice_metrics(clean)
    assert set(m) == set(SAE_SPLICE_KEYS)
    assert m["ft_loss_clean"] == pytest.approx(0.3)
    assert all(np.isnan(v) for k, v in m.items() if k != "ft_loss_clean")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_sae_splices_into_a_cuda_classifier(tiny: SimpleNamespace) -> None:
    model = tiny.classifier.to("cuda")
    try:
        val = splice.ValTexts(tiny.val.ids, tiny.val.labels, tiny.val.pad_id, BATCH, "cuda")
        clean = splice.text_scores(model, val)
        exact = splice.per_batch(splice.sae_replace(identity_sae(32)))
        spliced = splice.text_scores(model, val, 1, exact)
    finally:
        tiny.classifier.to("cpu")
    np.testing.assert_array_equal(spliced.correct, clean.correct)
