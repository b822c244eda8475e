"""seed_floor@<model>-<task>: how different two equally good fine-tunes are, layer by layer.

Fine-tunes of the same model on the same data that differ only in their training seed are as
far apart as fine-tuning's noise makes them. PT-vs-FT similarity means something only where it
falls below that floor, so this stage runs the analysis split once through every seed's FT
encoder (one forward per model per batch, the compare stage's tokens, batches and masking) and
feeds every seed pair (FT_i as "pt", FT_j as "ft") into its own similarity accumulator.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise import io
from layerwise.activations import (
    length_sorted_batches,
    pad_batch,
    special_token_mask,
    tokenize_texts,
)
from layerwise.cli import StageArgs, stage_run
from layerwise.config import CompareParams, ConfigError
from layerwise.data import model_splits
from layerwise.models import load_config, load_encoder, load_tokenizer, pick_device
from layerwise.paths import Paths
from layerwise.runtime import seed_everything
from layerwise.schema import SEED_FLOOR_COLUMNS, SIMILARITY_CI_METHODS

if TYPE_CHECKING:
    from pathlib import Path

    from layerwise.similarity.accumulator import LayerSimilarityAccumulator
    from layerwise.tracking import StageRun

logger = logging.getLogger("seed_floor")

COMPARE_KEYS = ("batch_size", "exclude_special", "n_boot", "n_blocks", "confidence")
"""The ``compare`` params this stage reads: it measures the way the compare stage does."""
PAIR_KEYS = ("layer", "cosine", "cosine_lo", "cosine_hi", "cka", "cka_lo", "cka_hi")
"""What seed_floor.json keeps of each pair's per-layer similarity (value and CI)."""


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    ft_dirs = _finetuned_dirs(args, paths)
    check_same_shape(ft_dirs)
    n_layers = load_config(str(ft_dirs[0])).num_hidden_layers + 1
    device = pick_device(p.device)
    used = {
        "seeds": p.seeds,
        "finetune.max_length": p.finetune.max_length,
        **{f"compare.{k}": getattr(p.compare, k) for k in COMPARE_KEYS},
        "device": str(device),
    }
    with stage_run("seed_floor", args, used) as tracked:
        seed_everything(p.seeds[0], device)
        pairs, n_texts = _pair_results(args, paths, ft_dirs, device)
        rows = floor_rows([layers for _, layers in pairs], n_layers)
        with io.Staging() as staging:
            summary = _write_outputs(rows, pairs, n_texts, args, paths, staging, tracked)
    _log_rows(rows)
    return summary


def _log_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        logger.info(
            "layer %d: seed floor cosine %.3f (%.3f..%.3f), CKA %.3f (%.3f..%.3f)",
            *(row[k] for k in ("layer", "cosine_mean", "cosine_min", "cosine_max")),
            *(row[k] for k in ("cka_mean", "cka_min", "cka_max")),
        )


def _finetuned_dirs(args: StageArgs, paths: Paths) -> list[Path]:
    """Every seed's FT model folder (failing, naming the missing stage, before MLflow opens)."""
    dirs = []
    for seed in args.params.seeds:
        made_by = f"finetune@{args.model}-{args.task}-{seed}"
        dirs.append(io.require(paths.finetuned(args.model, args.task, seed), made_by))
    return dirs


def _pair_results(
    args: StageArgs, paths: Paths, ft_dirs: list[Path], device: Any
) -> tuple[list[tuple[tuple[int, int], list[dict[str, Any]]]], int]:
    """``((seed_i, seed_j), per-layer rows)`` for every seed pair, and the analysis texts."""
    p = args.params
    seeds = p.seeds
    analysis = model_splits(paths.prepared(args.task), p.model(args.model), p.seed)["analysis"]
    if len(seeds) < 2:
        logger.warning(
            "seed_floor@%s: seeds=%s holds one seed, so there is no pair to compare: the seed "
            "floor is NaN (give two or more seeds)",
            args.item,
            seeds,
        )
        return [], len(analysis)
    tokenizer = load_tokenizer(str(ft_dirs[0]))
    ids = tokenize_texts(tokenizer, list(analysis["text"]), p.finetune.max_length)
    encoders = [load_encoder(str(d)).to(device) for d in ft_dirs]
    special = sorted(set(tokenizer.all_special_ids))
    accs = pair_similarity(encoders, ids, tokenizer.pad_token_id, special, p.compare, device)
    results = [
        ((seeds[i], seeds[j]), acc.result(p.compare.n_boot, seeds[0], p.compare.confidence))
        for (i, j), acc in accs.items()
    ]
    return results, len(ids)


def check_same_shape(ft_dirs: list[Path]) -> None:
    """Every seed's fine-tune must tokenise the same way and have the same width and depth (a
    stale model of another source would otherwise be compared token by token)."""
    first_config, first_tokenizer = load_config(str(ft_dirs[0])), load_tokenizer(str(ft_dirs[0]))
    for other in ft_dirs[1:]:
        if load_tokenizer(str(other)).get_vocab() != first_tokenizer.get_vocab():
            raise ConfigError(f"{other} tokenises differently from {ft_dirs[0]}")
        config = load_config(str(other))
        for attr in ("hidden_size", "num_hidden_layers"):
            a, b = getattr(first_config, attr), getattr(config, attr)
            if a != b:
                raise ConfigError(f"{ft_dirs[0]} and {other} differ in {attr}: {a} vs {b}")


def pair_similarity(
    encoders: list[Any],
    ids: list[list[int]],
    pad_id: int,
    special_ids: list[int],
    params: CompareParams,
    device: Any,
) -> dict[tuple[int, int], LayerSimilarityAccumulator]:
    """One accumulator per pair ``i < j`` of ``encoders`` (``i`` in the "pt" slot), fed from
    one forward per encoder per batch: the compare stage's batches, jackknife blocks and token
    mask, so the floor and the PT-vs-FT curves are measured alike."""
    import torch
    from tqdm import tqdm

    from layerwise.similarity.accumulator import LayerSimilarityAccumulator, batch_blocks

    config = encoders[0].config
    batches = length_sorted_batches([len(x) for x in ids], params.batch_size)
    block_of = batch_blocks(batches, len(ids), params.n_blocks)
    accs = {
        pair: LayerSimilarityAccumulator(
            config.num_hidden_layers + 1,
            config.hidden_size,
            len(ids),
            n_blocks=params.n_blocks,
            device=device,
            matmul_dtype=torch.float32,
            block_of=block_of,
        )
        for pair in itertools.combinations(range(len(encoders)), 2)
    }
    for idx in tqdm(batches, desc="analysis (seed pairs)", unit="batch"):
        batch = pad_batch([ids[i] for i in idx], pad_id, device)
        with torch.inference_mode():
            states = [enc(**batch, output_hidden_states=True).hidden_states for enc in encoders]
        mask = batch["attention_mask"].bool()
        if params.exclude_special:
            mask &= ~special_token_mask(batch["input_ids"], special_ids)
        for (i, j), acc in accs.items():
            acc.update(states[i], states[j], mask, idx)
    return accs


def floor_rows(pairs: list[list[dict[str, Any]]], n_layers: int) -> list[dict[str, Any]]:
    """seed_floor.csv rows: per layer, the mean, min and max over pairs of cosine and CKA
    (NaN without pairs)."""
    rows = []
    for layer in range(n_layers):
        row: dict[str, Any] = {"layer": layer, "depth": layer / (n_layers - 1)}
        for metric in ("cosine", "cka"):
            values = np.array([pair[layer][metric] for pair in pairs], dtype=np.float64)
            stats = (values.mean(), values.min(), values.max()) if values.size else (np.nan,) * 3
            for name, value in zip(("mean", "min", "max"), stats, strict=True):
                row[f"{metric}_{name}"] = float(value)
        row["n_pairs"] = len(pairs)
        rows.append(row)
    return rows


def _write_outputs(
    rows: list[dict[str, Any]],
    pairs: list[tuple[tuple[int, int], list[dict[str, Any]]]],
    n_texts: int,
    args: StageArgs,
    paths: Paths,
    staging: io.Staging,
    tracked: StageRun,
) -> dict[str, Any]:
    """seed_floor.json and seed_floor.csv (staged), the same numbers to MLflow; the summary."""
    n_tokens = pairs[0][1][0]["n_tokens"] if pairs else 0
    summary: dict[str, Any] = {"n_pairs": len(pairs), "n_texts": n_texts, "n_tokens": n_tokens}
    for row in rows:
        for metric in ("cosine", "cka"):
            summary[f"{metric}/L{row['layer']}/mean"] = row[f"{metric}_mean"]
    io.write_json(
        staging.file(paths.seed_floor_json(args.model, args.task)),
        {
            **summary,
            "seeds": args.params.seeds,
            "confidence": args.params.compare.confidence,
            "ci_methods": {k: SIMILARITY_CI_METHODS[k] for k in ("cosine", "cka")},
            "pairs": [
                {"seeds": list(seeds), "layers": [{k: r[k] for k in PAIR_KEYS} for r in layers]}
                for seeds, layers in pairs
            ],
        },
    )
    csv_path = staging.file(paths.seed_floor_csv(args.model, args.task))
    io.write_csv(csv_path, rows, list(SEED_FLOOR_COLUMNS))
    tracked.log_metrics(summary)
    for row in rows:
        tracked.log_metrics({k: row[k] for k in ("cosine_mean", "cka_mean")}, step=row["layer"])
    tracked.log_artifact(csv_path, "seed_floor", name="seed_floor.csv")
    return summary
