"""The block accessor: for every supported family, the module it names for layer k produces
exactly ``hidden_states[k]``; unsupported architectures are refused with one clear line; and no
other module names an architecture's block attributes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers as T
from conftest import REPO_ROOT

from layerwise.architectures import (
    ArchitectureError,
    block_list,
    hidden_state_module,
    layout_of,
    supported_types,
)

_SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}


def tiny_config(model_type: str) -> T.PretrainedConfig:
    """A 2-block, 32-wide random config of ``model_type`` (ids inside a 100-token vocab)."""
    kwargs = dict(_SMALL)
    if model_type == "distilbert":
        kwargs = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": 100}
    elif model_type == "gpt2":
        kwargs = {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 100, "n_positions": 64}
    elif model_type in ("llama", "qwen2", "mistral"):
        kwargs["num_key_value_heads"] = 2
    elif model_type == "modernbert":
        kwargs.update(global_attn_every_n_layers=1, local_attention=16)
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "modernbert":
        special.update(cls_token_id=1, sep_token_id=2)
    return T.AutoConfig.for_model(model_type, **kwargs, **special, num_labels=2)


@pytest.mark.parametrize("model_type", supported_types())
def test_hook_modules_produce_exactly_the_reported_hidden_states(model_type: str) -> None:
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()
    n_blocks = len(block_list(model))
    caught: dict[int, torch.Tensor] = {}

    def keep(k: int):
        def hook(_module, _inputs, output):
            caught[k] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    handles = [
        hidden_state_module(model, k).register_forward_hook(keep(k)) for k in range(n_blocks + 1)
    ]
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    for handle in handles:
        handle.remove()
    assert len(out.hidden_states) == n_blocks + 1 == model.config.num_hidden_layers + 1
    for k, reported in enumerate(out.hidden_states):
        torch.testing.assert_close(caught[k], reported, rtol=0, atol=0, msg=f"layer {k}")


def test_electra_with_narrow_embeddings_hooks_the_projection() -> None:
    config = tiny_config("electra")
    config.embedding_size = 16  # narrower than the blocks: ELECTRA adds embeddings_project
    model = T.AutoModelForSequenceClassification.from_config(config).eval()
    assert hidden_state_module(model, 0) is model.base_model.embeddings_project


def test_unsupported_architecture_is_named_with_the_supported_ones() -> None:
    config = T.AlbertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    with pytest.raises(ArchitectureError) as info:
        layout_of(config)
    message = str(info.value)
    assert "albert" in message and "share" in message
    assert all(t in message for t in supported_types())
    assert "\n" not in message


def test_layer_outside_the_model_is_refused() -> None:
    model = T.AutoModel.from_config(tiny_config("bert"))
    with pytest.raises(ArchitectureError, match=r"layer 3 outside 0\.\.2"):
        hidden_state_module(model, 3)


def test_only_the_accessor_names_block_attributes() -> None:
    """Every intervention goes through architectures.py: no other source file reaches into a
    model's block list by attribute name."""
    pattern = re.compile(
        r"\.(encoder\.layer|transformer\.layer|embed_tokens|embeddings_project|final_norm|ln_f)\b"
        r"|\b(base|base_model|model|transformer|classifier|encoder)\.(layers|h|embeddings)\b"
    )
    src = REPO_ROOT / "src" / "layerwise"
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{i}"
        for path in sorted(src.rglob("*.py"))
        if path.name != "architectures.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], offenders


def test_the_default_model_is_supported(packaged_model_dir: Path) -> None:
    assert layout_of(T.AutoConfig.from_pretrained(packaged_model_dir)).blocks == "encoder.layer"
