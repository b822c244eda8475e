"""Tiny random models of every supported family, saved with ``save_pretrained`` next to a
tokenizer, so the whole pipeline can run on each without a network.

Encoders share the packaged MiniLM WordPiece tokenizer (real English tokenises as for the
default model). Decoder-only families get a small byte-level BPE trained here on the keyword
task's words, with an end-of-text token and, like GPT-2 and Llama, no padding token: the
pipeline must supply one itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers as T

ENCODERS = ("bert", "roberta", "electra", "distilbert", "mpnet", "modernbert")
DECODERS = ("gpt2", "llama", "qwen2")
FAMILIES = ENCODERS + DECODERS
EOS = "<|endoftext|>"


def _dims(model_type: str, vocab: int) -> dict[str, Any]:
    if model_type == "distilbert":
        return {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": vocab}
    if model_type == "gpt2":
        return {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": vocab, "n_positions": 66}
    dims = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": vocab,
        "max_position_embeddings": 66,
    }
    if model_type in DECODERS:
        dims["num_key_value_heads"] = 2
    if model_type == "modernbert":
        dims.update(global_attn_every_n_layers=1, local_attention=16)
    return dims


def bpe_tokenizer(words: list[str]) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE over ``words`` with an end-of-text token and no padding token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" ".join(words)] * 4, trainer=trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)


def save_tiny(model_type: str, out: Path, wordpiece_dir: Path, words: list[str]) -> Path:
    """A seeded random 2-block, 32-wide ``model_type`` base model and its tokenizer in ``out``."""
    if model_type in DECODERS:
        tokenizer = bpe_tokenizer(words)
        special = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    else:
        tokenizer = T.AutoTokenizer.from_pretrained(wordpiece_dir)
        special = {
            "pad_token_id": tokenizer.pad_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        }
    config = T.AutoConfig.for_model(model_type, **_dims(model_type, len(tokenizer)), **special)
    torch.manual_seed(0)
    T.AutoModel.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
