"""compare@<model>-<task>-<seed>: one streaming pass per split through PT and FT together.

Analysis split: every layer's PT-vs-FT token cosine and linear CKA (streaming statistics, never
all layers of all tokens in memory), mean-pooled per-text representations for the probes, and
the SAE layers' token activations written to the analysis store, all from the same forward pass.
Train split: the SAE layers' token activations of a seeded subset of texts within a token
budget, for SAE training. The stage stores the FT half only and links it to the PT half, which
does not depend on the fine-tune and is stored once per (model, task) by ``pt_store``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise import io
from layerwise.activations import (
    SIDES,
    PairedEncoders,
    StorePlan,
    plan_stores,
    special_token_mask,
    write_plan,
)
from layerwise.architectures import probe_pooling
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import CompareParams, ConfigError
from layerwise.data import model_splits
from layerwise.models import (
    check_layers,
    check_max_length,
    load_config,
    load_tokenizer,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.runtime import seed_everything
from layerwise.schema import SIMILARITY_CI_METHODS, SIMILARITY_COLUMNS

if TYPE_CHECKING:
    from layerwise.similarity.accumulator import LayerSimilarityAccumulator
    from layerwise.similarity.pooling import PositionPool
    from layerwise.tracking import StageRun

logger = logging.getLogger("compare")


@dataclass
class CompareResult:
    """What one compare run found: a row per layer, the summary metrics, store sizes."""

    layers: list[dict[str, Any]]
    summary: dict[str, Any]
    n_tokens_analysis: int
    n_tokens_train: int
    probe_pooling: str = "mean"
    """How each text became one vector for the probes (``compare.pooling`` resolved)."""


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    ft_dir = io.require(paths.finetuned(*args.key), args.stage_name("finetune"))
    pt_config, ft_config = load_config(model_def.source), load_config(str(ft_dir))
    check_layers(model_def.layers, pt_config, f"{p.model_key(args.model)}.layers")
    pt_tok, ft_tok = load_tokenizer(model_def.source), load_tokenizer(str(ft_dir))
    check_max_length(p.finetune.max_length, pt_config, pt_tok, "finetune.max_length")
    check_pair(pt_tok, ft_tok, pt_config, ft_config)

    # Looked up at call time, so the bad-input tests can make model loading fail loudly.
    from layerwise.models import load_encoder

    splits = model_splits(paths.prepared(args.task), model_def, p.seed)
    device = pick_device(p.device)
    used = {
        **prefixed("compare", p.compare),
        f"{p.model_key(args.model)}.layers": model_def.layers,
        "finetune.max_length": p.finetune.max_length,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("compare", args, used) as tracked:
        seed_everything(args.seed, device)
        encoders = PairedEncoders(
            load_encoder(model_def.source).to(device), load_encoder(str(ft_dir)).to(device), device
        )
        with io.Staging() as staging:
            store = staging.dir(paths.activations(*args.key))
            result = run_compare(
                encoders,
                pt_tok,
                splits,
                model_def.layers,
                p.compare,
                p.finetune.max_length,
                args.seed,
                store,
                token_seed=p.seed,
                pt_link=os.path.relpath(
                    paths.pt_activations(args.model, args.task), paths.activations(*args.key)
                ),
            )
            summary = _write_outputs(result, args, paths, staging, tracked)
        _log_rows(result.layers)
    return summary


def _write_outputs(
    result: CompareResult, args: StageArgs, paths: Paths, staging: io.Staging, tracked: StageRun
) -> dict[str, Any]:
    """similarity.json and similarity.csv (staged), the same numbers to MLflow; the summary."""
    summary = {
        **result.summary,
        "store/n_tokens_analysis": result.n_tokens_analysis,
        "store/n_tokens_train": result.n_tokens_train,
    }
    io.write_json(
        staging.file(paths.similarity_json(*args.key)),
        {
            **summary,
            "ci_methods": SIMILARITY_CI_METHODS,
            "probe_pooling": result.probe_pooling,
            "confidence": args.params.compare.confidence,
        },
    )
    csv_path = staging.file(paths.similarity_csv(*args.key))
    io.write_csv(csv_path, result.layers, list(SIMILARITY_COLUMNS))
    tracked.log_metrics(summary)
    for row in result.layers:
        tracked.log_metrics(
            {k: row[k] for k in ("cosine", "cka", "probe_pt", "probe_ft", "probe_diff")},
            step=row["layer"],
        )
    tracked.log_artifact(csv_path, "similarity", name="similarity.csv")
    return summary


def _log_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        logger.info(
            "layer %d: cosine %.3f [%.3f, %.3f]  CKA %.3f [%.3f, %.3f]  probe PT %.3f FT %.3f "
            "(FT - PT %+.3f [%+.3f, %+.3f])",
            row["layer"],
            row["cosine"],
            row["cosine_lo"],
            row["cosine_hi"],
            row["cka"],
            row["cka_lo"],
            row["cka_hi"],
            row["probe_pt"],
            row["probe_ft"],
            row["probe_diff"],
            row["probe_diff_lo"],
            row["probe_diff_hi"],
        )


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


# --------------------------------------------------------------------------------------------
# The work: one pass per split
# --------------------------------------------------------------------------------------------


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
    token_seed: int | None = None,
    pt_link: str | None = None,
) -> CompareResult:
    """Similarity per layer (with CIs) on the analysis split; activation stores for SAEs.

    ``token_seed`` (default ``seed``) picks the train texts of the SAE store. The stage passes
    the data seed, so every training seed's store holds the same tokens: the PT half is then
    identical across seeds, and PT SAEs of different seeds are a seed baseline on the same
    activations. With ``pt_link`` (the PT store's folder, relative to ``store_dir``) the stores
    hold the FT half only and link to it; without, they hold both halves."""
    pooling = probe_pooling(params.pooling, encoders.config)
    plan = plan_stores(
        tokenizer,
        splits,
        max_length,
        params.batch_size,
        params.token_budget,
        seed if token_seed is None else token_seed,
    )
    sides = SIDES
    if pt_link is not None:
        plan.link(pt_link)
        sides = ("ft",)
    stats = _similarity_statistics(encoders, plan, params, pooling)
    n_analysis, n_train = write_plan(
        encoders, plan, layers, store_dir, sides, on_analysis_batch=stats.update, progress=progress
    )
    rows = stats.acc.result(n_boot=params.n_boot, seed=seed, confidence=params.confidence)
    labels = np.asarray(splits["analysis"]["label"])
    _add_depth_and_probes(rows, stats.picked or stats.acc, labels, params, seed)
    summary = summarise(rows, layers)
    summary["n_texts"] = len(plan.analysis_ids)
    summary["n_tokens"] = stats.acc.n_tokens
    return CompareResult(rows, summary, n_analysis, n_train, pooling)


@dataclass
class _Statistics:
    """The similarity accumulator (and, unless the probes read token means, the token they
    read), fed batch by batch from the analysis store's forward passes."""

    acc: LayerSimilarityAccumulator
    picked: PositionPool | None
    exclude_special: bool
    special_ids: list[int]

    def update(self, pt: tuple, ft: tuple, batch: dict, idx: np.ndarray) -> None:
        mask = batch["attention_mask"].bool()
        if self.picked is not None:
            self.picked.update(pt, ft, batch["attention_mask"], idx)
        if self.exclude_special:
            mask &= ~special_token_mask(batch["input_ids"], self.special_ids)
        self.acc.update(pt, ft, mask, idx)


def _similarity_statistics(
    encoders: PairedEncoders, plan: StorePlan, params: CompareParams, pooling: str = "mean"
) -> _Statistics:
    """Empty streaming similarity statistics sized for the plan's analysis batches."""
    # torch loads only once the work starts, so parsing and validating stay cheap.
    import torch

    from layerwise.similarity.accumulator import LayerSimilarityAccumulator, batch_blocks
    from layerwise.similarity.pooling import PositionPool

    n_texts = len(plan.analysis_ids)
    acc = LayerSimilarityAccumulator(
        encoders.config.num_hidden_layers + 1,
        encoders.config.hidden_size,
        n_texts,
        n_blocks=params.n_blocks,
        device=encoders.device,
        matmul_dtype=torch.float32,
        block_of=batch_blocks(plan.analysis_batches, n_texts, params.n_blocks),
    )
    picked = None
    if pooling != "mean":
        dims = (acc.n_layers, n_texts, encoders.config.hidden_size)
        picked = PositionPool(*dims, position=pooling)
    return _Statistics(acc, picked, params.exclude_special, plan.meta["special_ids"])


def _add_depth_and_probes(
    rows: list[dict[str, Any]],
    acc: LayerSimilarityAccumulator | PositionPool,
    labels: np.ndarray,
    params: CompareParams,
    seed: int,
) -> None:
    """Each row's depth, its PT and FT probe accuracies with CIs and their paired difference
    (FT minus PT), in place.

    Both probes of a layer get the same ``seed``, so the same outer folds and the same bootstrap
    draws: the difference is paired text by text.
    """
    from layerwise.similarity.probes import paired_difference, probe_accuracy, probe_spec

    spec = probe_spec(params)
    ci = {"n_boot": params.n_boot, "seed": seed, "confidence": params.confidence}
    for row in rows:
        layer = row["layer"]
        row["depth"] = layer / (len(rows) - 1)
        probes = {
            which: probe_accuracy(
                acc.pooled(layer, which), labels, params.probe_folds, spec=spec, **ci
            )
            for which in ("pt", "ft")
        }
        for which, probe in probes.items():
            row[f"probe_{which}"] = probe.accuracy
            row[f"probe_{which}_lo"] = probe.lo
            row[f"probe_{which}_hi"] = probe.hi
        diff = paired_difference(probes["pt"], probes["ft"], **ci)
        row["probe_diff"], row["probe_diff_lo"], row["probe_diff_hi"] = diff.diff, diff.lo, diff.hi


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
