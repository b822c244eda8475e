"""The layer-reset library: resetting every block of a fine-tuned classifier gives the PT
model's hidden states exactly (head and embeddings untouched), resetting none changes nothing,
a reset reaches exactly the 1-based blocks asked for, and the FT weights come back bit for bit
after each configuration, also on an error, for encoder and decoder-only families alike. Plus
the schedule of configurations and the lost-gain arithmetic the curves are read with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import FILLER_WORDS, KEYWORDS
from tiny_models import save_tiny

from layerwise.architectures import block_list
from layerwise.controls import (
    ResetConfig,
    check_same_blocks,
    lost_gain,
    midpoint,
    reset_blocks,
    reset_schedule,
)
from layerwise.models import ModelError, load_classifier, load_config, load_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ("bert", "distilbert", "gpt2", "llama")
"""Two encoder layouts and two decoder-only ones (GPT-2's blocks under ``h``, Llama's final
norm)."""


@pytest.fixture(scope="module", params=FAMILIES)
def models(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    packaged_model_dir: Path,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny PT model and a stand-in "fine-tune" of it: its classifier with every block's
    weights moved (embeddings and final norm left as PT), so a reset is visible in every block."""
    words = [*FILLER_WORDS, *KEYWORDS.values()]
    out = tmp_path_factory.mktemp(request.param)
    model_dir = save_tiny(request.param, out, packaged_model_dir, words)
    pt = load_encoder(str(model_dir))
    torch.manual_seed(1)
    ft = load_classifier(str(model_dir), ["negative", "positive"]).eval()
    with torch.no_grad():
        for block in block_list(ft):
            for param in block.parameters():
                param.add_(0.1 * torch.randn_like(param))
    return pt, ft


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Two right-padded rows of in-vocabulary ids (the second one shorter)."""
    ids = torch.arange(3, 11).reshape(2, 4) % model.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    return {"input_ids": ids, "attention_mask": mask}


def _hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return model(**batch, output_hidden_states=True).hidden_states


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


# --------------------------------------------------------------------------------------------
# reset_blocks
# --------------------------------------------------------------------------------------------


def test_resetting_every_block_gives_the_pt_hidden_states(models) -> None:
    """All L blocks reset: every hidden state is the PT model's, bit for bit, while the head
    (the part of the state outside the encoder) keeps its FT weights."""
    pt, ft = models
    batch, n = _batch(ft), len(block_list(ft))
    before = _state(ft)
    with reset_blocks(ft, pt, range(1, n + 1)) as reset:
        assert reset is ft
        got = _hidden(ft, batch)
        head = {k: v for k, v in ft.state_dict().items() if not k.startswith(ft.base_model_prefix)}
    want = _hidden(pt, batch)
    assert len(got) == len(want) == n + 1
    for layer, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g, w), f"hidden state {layer}"
    assert head, "the classifier has a head outside its base model"
    for name, value in head.items():
        assert torch.equal(value, before[name]), f"head tensor {name} was reset"


def test_resetting_no_block_changes_nothing(models) -> None:
    pt, ft = models
    batch, before = _batch(ft), _state(ft)
    clean = _hidden(ft, batch)
    with reset_blocks(ft, pt, []):
        _assert_same_state(ft.state_dict(), before)
        got = _hidden(ft, batch)
    for g, w in zip(got, clean, strict=True):
        assert torch.equal(g, w)


def test_a_reset_reaches_exactly_the_blocks_asked_for(models) -> None:
    """Block 1 reset: hidden state 1 is PT's (the embeddings are shared); top block reset: every
    hidden state below it is the FT model's."""
    pt, ft = models
    batch, n = _batch(ft), len(block_list(ft))
    clean, pt_states = _hidden(ft, batch), _hidden(pt, batch)
    with reset_blocks(ft, pt, [1]):
        assert torch.equal(_hidden(ft, batch)[1], pt_states[1])
    with reset_blocks(ft, pt, [n]):
        got = _hidden(ft, batch)
    for layer in range(n):
        assert torch.equal(got[layer], clean[layer]), f"hidden state {layer}"
    assert not torch.equal(got[n], clean[n])


def test_weights_are_restored_after_each_configuration(models) -> None:
    pt, ft = models
    before, n = _state(ft), len(block_list(ft))
    for config in reset_schedule(n):
        with reset_blocks(ft, pt, config.blocks):
            pass
        _assert_same_state(ft.state_dict(), before)
    with pytest.raises(RuntimeError, match="boom"), reset_blocks(ft, pt, [1]):
        raise RuntimeError("boom")
    _assert_same_state(ft.state_dict(), before)


@pytest.mark.cuda
def test_a_cpu_pt_model_resets_a_cuda_classifier(models) -> None:
    """The stage keeps the PT model on the CPU and the classifier on the GPU: the PT tensors
    are copied across, and the FT ones come back on the GPU."""
    pt, ft = models
    batch, n = _batch(ft), len(block_list(ft))
    cuda = ft.to("cuda")
    try:
        before = _state(cuda)
        on_gpu = {k: v.to("cuda") for k, v in batch.items()}
        with reset_blocks(cuda, pt, range(1, n + 1)):
            got = _hidden(cuda, on_gpu)[n].cpu()
        _assert_same_state(cuda.state_dict(), before)
        torch.testing.assert_close(got, _hidden(pt, batch)[n], rtol=1e-4, atol=1e-4)
    finally:
        ft.to("cpu")


def test_blocks_outside_the_model_are_refused_before_any_change(models) -> None:
    pt, ft = models
    before, n = _state(ft), len(block_list(ft))
    for bad in ([0], [n + 1]):
        with pytest.raises(ValueError, match="outside"), reset_blocks(ft, pt, [1, *bad]):
            pass
    _assert_same_state(ft.state_dict(), before)


def test_models_of_another_shape_are_refused(
    tiny_bert_dir: Path, tmp_path: Path, packaged_model_dir: Path
) -> None:
    """A PT source that is not what the FT model was made from fails by name: from the configs
    (before any weights load) and, for loaded models, before a block is touched."""
    gpt2 = save_tiny("gpt2", tmp_path / "gpt2", packaged_model_dir, list(FILLER_WORDS))
    with pytest.raises(ModelError, match="model_type"):
        check_same_blocks(load_config(str(tiny_bert_dir)), load_config(str(gpt2)))
    check_same_blocks(load_config(str(tiny_bert_dir)), load_config(str(tiny_bert_dir)))
    bert = load_classifier(str(tiny_bert_dir), ["a", "b"])
    other = load_encoder(str(save_tiny("distilbert", tmp_path / "d", packaged_model_dir, [])))
    before = _state(bert)
    with pytest.raises(ModelError, match="names or shapes"), reset_blocks(bert, other, [1]):
        pass
    _assert_same_state(bert.state_dict(), before)


# --------------------------------------------------------------------------------------------
# The schedule and the arithmetic
# --------------------------------------------------------------------------------------------


def test_schedule_covers_both_directions_for_every_k() -> None:
    schedule = reset_schedule(3)
    assert [(c.direction, c.k, c.blocks) for c in schedule] == [
        ("bottom_up", 0, ()),
        ("bottom_up", 1, (1,)),
        ("bottom_up", 2, (1, 2)),
        ("bottom_up", 3, (1, 2, 3)),
        ("top_down", 0, ()),
        ("top_down", 1, (3,)),
        ("top_down", 2, (2, 3)),
        ("top_down", 3, (1, 2, 3)),
    ]
    assert [c.label for c in schedule[4:]] == ["", "3-3", "2-3", "1-3"]
    assert ResetConfig("bottom_up", 2, (1, 2)).label == "1-2"
    with pytest.raises(ValueError):
        reset_schedule(0)


def test_lost_gain_is_the_share_of_the_gain_over_the_majority_class() -> None:
    assert lost_gain(0.9, 0.9, 0.5) == 0.0
    assert lost_gain(0.7, 0.9, 0.5) == pytest.approx(0.5)
    assert lost_gain(0.5, 0.9, 0.5) == pytest.approx(1.0)
    assert lost_gain(0.3, 0.9, 0.5) == pytest.approx(1.5)  # below the majority class
    assert math.isnan(lost_gain(0.5, 0.5, 0.5))  # no gain to lose
    assert math.isnan(lost_gain(0.4, 0.45, 0.5))


def test_midpoint_is_the_first_k_losing_half_the_gain() -> None:
    assert midpoint([0.0, 0.1, 0.5, 0.9]) == 2
    assert midpoint([0.0, 0.6, 0.4, 1.0]) == 1
    assert midpoint([0.0, 0.2, 0.3]) is None
    assert midpoint([math.nan, math.nan]) is None
    assert midpoint([0.0, 0.3, 0.8], threshold=0.25) == 1
