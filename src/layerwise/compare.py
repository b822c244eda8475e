"""The compare stage's work: one streaming pass per split through PT and FT together.

Analysis split: every layer's PT-vs-FT token cosine and linear CKA (streaming statistics, never
all layers of all tokens in memory), mean-pooled per-text representations for the probes, and
the SAE layers' token activations written to the analysis store, all from the same forward pass.
Train split: the SAE layers' token activations of a seeded subset of texts within a token
budget, for SAE training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.activations import (
    PairedEncoders,
    budget_texts,
    length_sorted_batches,
    special_token_mask,
    tokenize_texts,
    write_store,
)
from layerwise.config import CompareParams, ConfigError

logger = logging.getLogger(__name__)

CI_METHODS = {
    "cosine": "percentile bootstrap over texts",
    "cka": "leave-one-block-out jackknife over text blocks (length-sorted batch b in block "
    "b mod n_blocks; t interval)",
    "probe": "percentile bootstrap over texts of out-of-fold correctness",
}


def check_pair(pt_tokenizer: Any, ft_tokenizer: Any, pt_config: Any, ft_config: Any) -> None:
    """PT and FT must tokenise identically and have the same width and depth."""
    if pt_tokenizer.get_vocab() != ft_tokenizer.get_vocab():
        raise ConfigError(
            "the pre-trained and fine-tuned tokenizers differ (vocabularies are not equal): "
            "token-level comparison needs the same tokens"
        )
    for attr in ("hidden_size", "num_hidden_layers"):
        a, b = getattr(pt_config, attr), getattr(ft_config, attr)
        if a != b:
            raise ConfigError(f"PT and FT models differ in {attr}: {a} vs {b}")


@dataclass
class CompareResult:
    layers: list[dict[str, Any]]
    summary: dict[str, Any]
    n_tokens_analysis: int
    n_tokens_train: int


def summarise(rows: list[dict[str, Any]], sae_layers: list[int]) -> dict[str, Any]:
    """A few scalar keys for DVC metrics / MLflow: first, last, and the SAE layers."""
    first, last = rows[0], rows[-1]
    out: dict[str, Any] = {
        "cosine/first": first["cosine"],
        "cosine/last": last["cosine"],
        "cka/first": first["cka"],
        "cka/last": last["cka"],
        "probe_pt/last": last["probe_pt"],
        "probe_ft/last": last["probe_ft"],
        "cosine/min": min(r["cosine"] for r in rows),
        "cka/min": min(r["cka"] for r in rows),
    }
    for layer in sae_layers:
        r = rows[layer]
        out[f"cosine/L{layer}"] = r["cosine"]
        out[f"cka/L{layer}"] = r["cka"]
    return out


def run_compare(
    encoders: PairedEncoders,
    tokenizer: Any,
    splits: Any,
    layers: list[int],
    params: CompareParams,
    max_length: int,
    seed: int,
    store_dir: Path,
    progress: bool = True,
) -> CompareResult:
    """Similarity per layer (with CIs) on the analysis split; activation stores for SAEs."""
    import torch

    from layerwise.similarity import LayerSimilarityAccumulator, probe_accuracy

    n_layers = encoders.pt.config.num_hidden_layers + 1
    dim = encoders.pt.config.hidden_size
    special = sorted(set(tokenizer.all_special_ids))
    analysis = splits["analysis"]
    ids = tokenize_texts(tokenizer, list(analysis["text"]), max_length)
    # Jackknife blocks: batch b (length-sorted) goes to block b mod n_blocks, so every block
    # spans all text lengths (contiguous text-index blocks would follow the source file's order,
    # e.g. BBC's label folders) and every batch updates one block only (one matmul per product).
    batches = length_sorted_batches([len(x) for x in ids], params.batch_size)
    block_of = np.zeros(len(ids), dtype=np.int64)
    for b, idx in enumerate(batches):
        block_of[idx] = b % params.n_blocks
    acc = LayerSimilarityAccumulator(
        n_layers,
        dim,
        len(ids),
        n_blocks=params.n_blocks,
        device=encoders.device,
        matmul_dtype=torch.float32,
        block_of=block_of,
    )

    def on_batch(pt: tuple, ft: tuple, batch: dict, idx: np.ndarray) -> None:
        mask = batch["attention_mask"].bool()
        if params.exclude_special:
            mask &= ~special_token_mask(batch["input_ids"], special)
        acc.update(pt, ft, mask, idx)

    meta = {"max_length": max_length, "special_ids": special}
    n_analysis = write_store(
        encoders,
        ids,
        np.arange(len(ids)),
        layers,
        store_dir / "analysis",
        params.batch_size,
        tokenizer.pad_token_id,
        {**meta, "split": "analysis", "labels": list(analysis["label"])},
        on_batch=on_batch,
        progress="analysis (similarity + store)" if progress else None,
        batches=batches,
    )

    train_ids = tokenize_texts(tokenizer, list(splits["train"]["text"]), max_length)
    lengths = [len(x) for x in train_ids]
    chosen, _ = budget_texts(lengths, params.token_budget, seed)
    train_labels = np.asarray(splits["train"]["label"])[chosen]
    n_train = write_store(
        encoders,
        [train_ids[i] for i in chosen],
        chosen,
        layers,
        store_dir / "train",
        params.batch_size,
        tokenizer.pad_token_id,
        {
            **meta,
            "split": "train",
            "labels": train_labels.tolist(),
            "token_budget": params.token_budget,
        },
        progress="train (store)" if progress else None,
    )

    rows = acc.result(n_boot=params.n_boot, seed=seed, confidence=params.confidence)
    labels = np.asarray(analysis["label"])
    for row in rows:
        layer = row["layer"]
        row["depth"] = layer / (n_layers - 1)
        for which in ("pt", "ft"):
            probe = probe_accuracy(
                acc.pooled(layer, which),
                labels,
                folds=params.probe_folds,
                seed=seed,
                n_boot=params.n_boot,
                confidence=params.confidence,
            )
            row[f"probe_{which}"] = probe.accuracy
            row[f"probe_{which}_lo"] = probe.lo
            row[f"probe_{which}_hi"] = probe.hi
    summary = summarise(rows, layers)
    summary["n_texts"] = len(ids)
    summary["n_tokens"] = acc.n_tokens
    return CompareResult(rows, summary, n_analysis, n_train)


LAYER_COLUMNS = [
    "layer",
    "depth",
    "cosine",
    "cosine_lo",
    "cosine_hi",
    "cka",
    "cka_lo",
    "cka_hi",
    "probe_pt",
    "probe_pt_lo",
    "probe_pt_hi",
    "probe_ft",
    "probe_ft_lo",
    "probe_ft_hi",
    "n_tokens",
]
