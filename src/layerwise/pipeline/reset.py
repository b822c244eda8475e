"""reset@<model>-<task>-<seed>: the fine-tuned classifier's val accuracy with its encoder blocks
1..k (bottom-up) or L-k+1..L (top-down) reset to the pre-trained weights, for every k.

Where the accuracy falls says where the task lives, with no similarity metric in between. The
FT classifier is loaded once; each configuration loads the PT weights into its blocks and puts
the FT ones back (:func:`layerwise.controls.reset_blocks`), so no model is reloaded. Every
configuration is scored on the same val texts, and the accuracy intervals are a percentile
bootstrap over those texts with the same resamples for every row (paired across k).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise import io
from layerwise.activations import iterate_batches, tokenize_texts
from layerwise.classification import majority_accuracy
from layerwise.cli import StageArgs, stage_run
from layerwise.config import ConfigError
from layerwise.controls import (
    DIRECTIONS,
    ResetConfig,
    check_same_blocks,
    lost_gain,
    midpoint,
    reset_blocks,
    reset_schedule,
)
from layerwise.data import DataError, model_splits
from layerwise.models import (
    autocast_dtype,
    check_max_length,
    load_classifier,
    load_config,
    load_encoder,
    load_tokenizer,
    num_layers,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.runtime import seed_everything
from layerwise.schema import RESET_COLUMNS

if TYPE_CHECKING:
    import torch

    from layerwise.tracking import StageRun

logger = logging.getLogger("reset")


@dataclass
class ValSet:
    """The tokenised val split: what every configuration is scored on."""

    token_ids: list[list[int]]
    labels: np.ndarray
    pad_id: int


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    ft_dir, val = _checked_inputs(args, paths)
    device = pick_device(p.device)
    dtype = autocast_dtype(p.finetune.precision, device)
    used = {
        f"{p.model_key(args.model)}.source": model_def.source,
        "finetune.max_length": p.finetune.max_length,
        "finetune.eval_batch_size": p.finetune.eval_batch_size,
        "finetune.precision": p.finetune.precision,
        "compare.n_boot": p.compare.n_boot,
        "compare.confidence": p.compare.confidence,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("reset", args, used) as tracked:
        seed_everything(args.seed, device)
        classifier = load_classifier(str(ft_dir)).to(device).eval()
        # The PT model stays on the CPU: its blocks are only ever copied into the classifier.
        pt_encoder = load_encoder(model_def.source)
        schedule = reset_schedule(num_layers(classifier.config))
        correct = score_schedule(
            classifier, pt_encoder, schedule, val, p.finetune.eval_batch_size, device, dtype
        )
        rows = reset_rows(
            schedule, correct, val.labels, p.compare.n_boot, args.seed, p.compare.confidence
        )
        metrics = reset_metrics(rows, val.labels)
        with io.Staging() as staging:
            _write_outputs(rows, metrics, args, paths, staging, tracked)
    _log_rows(rows)
    return metrics


def _checked_inputs(args: StageArgs, paths: Paths) -> tuple[Path, ValSet]:
    """The FT model folder and the tokenised val split, after everything cheap that can be
    wrong was checked: the FT model exists, it and the PT source are one supported
    architecture of one shape, ``max_length`` fits, the val split is not empty and its labels
    are ones the classifier has. Fails before any weights load and before the MLflow run opens."""
    p = args.params
    ft_dir = io.require(paths.finetuned(*args.key), args.stage_name("finetune"))
    ft_config = load_config(str(ft_dir))
    check_same_blocks(ft_config, load_config(p.model(args.model).source))
    tokenizer = load_tokenizer(str(ft_dir))
    check_max_length(p.finetune.max_length, ft_config, tokenizer, "finetune.max_length")
    val = model_splits(paths.prepared(args.task), p.model(args.model), p.seed)["val"]
    if len(val) == 0:
        raise DataError(f"task {args.task!r}: the val split is empty; nothing to score")
    labels = np.asarray(val["label"])
    if labels.max() >= ft_config.num_labels:
        raise ConfigError(
            f"task {args.task!r} has labels the fine-tuned classifier {ft_dir} does not "
            f"({ft_config.num_labels} classes): rerun {args.stage_name('finetune')}"
        )
    ids = tokenize_texts(tokenizer, list(val["text"]), p.finetune.max_length)
    return ft_dir, ValSet(ids, labels, tokenizer.pad_token_id)


def _write_outputs(
    rows: list[dict[str, Any]],
    metrics: dict[str, Any],
    args: StageArgs,
    paths: Paths,
    staging: io.Staging,
    tracked: StageRun,
) -> None:
    """reset.json and reset.csv (staged), the same numbers to MLflow before the commit, so a
    tracking failure leaves no output; each direction's curve is logged with k as the step."""
    io.write_json(staging.file(paths.reset_json(*args.key)), metrics)
    csv_path = staging.file(paths.reset_csv(*args.key))
    io.write_csv(csv_path, rows, list(RESET_COLUMNS))
    tracked.log_metrics(metrics)
    for row in rows:
        curve = {f"{row['direction']}/{k}": row[k] for k in ("accuracy", "lost_gain")}
        tracked.log_metrics(curve, step=row["k"])
    tracked.log_artifact(csv_path, "reset", name=paths.reset_csv(*args.key).name)


def _log_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        logger.info(
            "%s k=%d (blocks %s): accuracy %.3f [%.3f, %.3f], lost gain %.2f",
            row["direction"],
            row["k"],
            row["blocks"] or "none",
            row["accuracy"],
            row["accuracy_lo"],
            row["accuracy_hi"],
            row["lost_gain"],
        )


# --------------------------------------------------------------------------------------------
# The work
# --------------------------------------------------------------------------------------------


def predict(
    classifier: Any, val: ValSet, batch_size: int, device: Any, dtype: torch.dtype | None
) -> np.ndarray:
    """The classifier's predicted class per val text (in the split's order), under bf16
    autocast where ``dtype`` says so, as the fine-tune stage scored it."""
    import torch

    preds = np.zeros(len(val.token_ids), dtype=np.int64)
    autocast = torch.autocast(
        torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
    )
    with torch.inference_mode(), autocast:
        for idx, batch in iterate_batches(val.token_ids, batch_size, val.pad_id, device):
            preds[idx] = classifier(**batch).logits.argmax(-1).cpu().numpy()
    return preds


def score_schedule(
    classifier: Any,
    pt_model: Any,
    schedule: list[ResetConfig],
    val: ValSet,
    batch_size: int,
    device: Any,
    dtype: torch.dtype | None = None,
) -> dict[tuple[int, ...], np.ndarray]:
    """Per distinct set of reset blocks, whether each val text is classified right. The
    directions share their k = 0 and k = L configurations, which run once."""
    from tqdm import tqdm

    correct: dict[tuple[int, ...], np.ndarray] = {}
    for config in tqdm(schedule, desc="reset", unit="config"):
        if config.blocks in correct:
            continue
        with reset_blocks(classifier, pt_model, config.blocks):
            preds = predict(classifier, val, batch_size, device, dtype)
        correct[config.blocks] = preds == val.labels
    return correct


def reset_rows(
    schedule: list[ResetConfig],
    correct: dict[tuple[int, ...], np.ndarray],
    labels: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float,
) -> list[dict[str, Any]]:
    """One ``RESET_COLUMNS`` row per configuration. ``lost_gain`` is measured against the
    k = 0 accuracy from this same scoring path, so it is exactly 0 at k = 0."""
    from layerwise.similarity.intervals import bootstrap_ratio_ci

    hits = np.stack([correct[c.blocks].astype(np.float64) for c in schedule])
    lo, hi = bootstrap_ratio_ci(hits, np.ones(len(labels)), n_boot, seed, confidence)
    ft_acc, floor = float(correct[()].mean()), majority_accuracy(labels)
    rows = []
    for i, config in enumerate(schedule):
        acc = float(hits[i].mean())
        values = (
            config.direction,
            config.k,
            config.label,
            acc,
            float(lo[i]),
            float(hi[i]),
            lost_gain(acc, ft_acc, floor),
        )
        rows.append(dict(zip(RESET_COLUMNS, values, strict=True)))
    return rows


def reset_metrics(rows: list[dict[str, Any]], labels: np.ndarray) -> dict[str, Any]:
    """The DVC metrics: FT and majority-class accuracy, each direction's accuracy per k, and
    its midpoint (the smallest k losing half the gain; NaN when none does) as a block count
    and as a relative depth k / L."""
    n_blocks = max(row["k"] for row in rows)
    metrics: dict[str, Any] = {
        "ft/accuracy": next(r["accuracy"] for r in rows if r["k"] == 0),
        "data/majority_accuracy": majority_accuracy(labels),
        "data/n_val": len(labels),
        "n_blocks": n_blocks,
    }
    for direction in DIRECTIONS:
        curve = sorted((r for r in rows if r["direction"] == direction), key=lambda r: r["k"])
        for row in curve:
            metrics[f"{direction}/accuracy_k{row['k']}"] = row["accuracy"]
        mid = midpoint([row["lost_gain"] for row in curve])
        metrics[f"{direction}/midpoint"] = float("nan") if mid is None else mid
        metrics[f"{direction}/midpoint_depth"] = float("nan") if mid is None else mid / n_blocks
    return metrics
