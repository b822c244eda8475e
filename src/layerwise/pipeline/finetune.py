"""finetune@<model>-<task>-<seed>: fine-tune the model on the task; PT-head and probe baselines.

Training runs through transformers' ``Trainer``, which gives us, tested upstream: linear
warmup/decay schedules, gradient clipping, per-epoch evaluation, mixed precision and multi-GPU
when a GPU is present, and length-grouped sampling. We add the pre-trained-head baseline (the
paper's "pre-trained accuracy": the same classifier before any training step) and a fair
baseline the paper lacks, a logistic-regression probe on frozen mean-pooled PT features.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise import io
from layerwise.activations import pooled_last_layer, tokenize_texts
from layerwise.architectures import layout_of, probe_pooling
from layerwise.classification import classification_metrics, confusion_counts, majority_accuracy
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import CompareParams, ConfigError, FinetuneParams
from layerwise.data import model_splits
from layerwise.models import (
    autocast_dtype,
    check_max_length,
    load_classifier,
    load_config,
    load_encoder,
    load_tokenizer,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.runtime import seed_everything, single_threaded_blas
from layerwise.schema import FINETUNE_CURVE_COLUMNS

if TYPE_CHECKING:
    from datasets import DatasetDict

    from layerwise.similarity.probes import ProbeSpec
    from layerwise.tracking import StageRun

logger = logging.getLogger("finetune")

OnLog = Callable[[dict[str, float], int], None]
"""Receives Trainer's step logs as ``train/<key>`` metrics and the global step (for MLflow)."""


@dataclass
class FinetuneResult:
    """What one fine-tune measured: flat metrics, the val confusion matrix, the loss curve."""

    metrics: dict[str, Any]
    confusion: list[list[int]]
    curve: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def, task_def = p.model(args.model), p.task(args.task)
    splits = _checked_inputs(args, paths)
    train_labels, control_metrics = _control_labels(args, splits)
    device = pick_device(p.device)
    used = {
        **prefixed("finetune", p.finetune),
        f"{p.model_key(args.model)}.source": model_def.source,
        "compare.pooling": p.compare.pooling,
        "compare.probe_c_grid": p.compare.probe_c_grid,
        "compare.probe_inner_folds": p.compare.probe_inner_folds,
        "seed": args.seed,
        "device": str(device),
        **({"control": args.control} if args.control else {}),
    }
    with stage_run("finetune", args, used) as run:
        with io.Staging() as staging, tempfile.TemporaryDirectory() as scratch:
            out_dir = staging.dir(paths.finetuned(*args.key))
            result = finetune(
                model_def.source,
                splits,
                p.finetune,
                args.seed,
                out_dir,
                ordinal=task_def.labels.kind == "bins",
                device=device,
                on_log=lambda metrics, step: run.log_metrics(metrics, step=step),
                work_dir=Path(scratch),
                pooling=p.compare.pooling,
                probe=_probe_spec(p.compare),
                train_labels=train_labels,
            )
            result.metrics.update(control_metrics)
            names = splits["train"].features["label"].names
            stable = _write_outputs(result, names, args, paths, staging, out_dir, run)
        _log_summary(args.item, result.metrics)
    return stable


def _checked_inputs(args: StageArgs, paths: Paths) -> DatasetDict:
    """The prepared splits, after everything cheap that can be wrong was checked: the model
    loads, its architecture is supported, ``max_length`` fits it,
    the train split holds two classes. Fails before any
    training and before the MLflow run opens."""
    p = args.params
    model_def = p.model(args.model)
    config = load_config(model_def.source)
    layout_of(config)
    check_max_length(
        p.finetune.max_length, config, load_tokenizer(model_def.source), "finetune.max_length"
    )
    splits = model_splits(paths.prepared(args.task), model_def, p.seed)
    names = splits["train"].features["label"].names
    if len(set(splits["train"]["label"])) < 2:
        raise ConfigError(f"task {args.task!r}: the train split holds one class only ({names})")
    return splits


def _control_labels(args: StageArgs, splits: DatasetDict) -> tuple[np.ndarray | None, dict]:
    """The labels the classifier trains on when they are not the train split's own, and the
    metrics that show it.

    The shuffled-label control permutes the train labels (seeded by the data seed ``seed``, so
    every rerun trains on the same permutation); texts, val labels and every hyperparameter stay
    those of a seed run, so its val accuracy measures what training without the task reaches.
    ``control/label_agreement`` (the fraction of train rows whose label survived the
    permutation) lets a reader check the labels were really shuffled."""
    if args.control is None:
        return None, {}
    if args.control != "shuffled":
        raise ConfigError(f"finetune has no control {args.control!r}")
    true = np.asarray(splits["train"]["label"])
    permuted = np.random.default_rng(args.params.seed).permutation(true)
    agreement = float(np.mean(permuted == true))
    logger.info("%s: shuffled labels, %.3f of train labels unchanged", args.item, agreement)
    return permuted, {"control/label_agreement": agreement}


def _write_outputs(
    result: FinetuneResult,
    names: list[str],
    args: StageArgs,
    paths: Paths,
    staging: io.Staging,
    out_dir: Path,
    run: StageRun,
) -> dict[str, Any]:
    """Stage the metrics file, the model folder's ``eval.json`` and the curve; log them.
    Returns the metrics without timings (what the DVC metrics file holds)."""
    # Timings go to MLflow only: DVC metrics files must be byte-identical across reruns.
    stable = {k: v for k, v in result.metrics.items() if not k.startswith("speed/")}
    io.write_json(
        out_dir / "eval.json",
        {"label_names": names, "confusion_val": result.confusion, "metrics": stable},
    )
    io.write_json(staging.file(paths.finetune_metrics(*args.key)), stable)
    curve = staging.file(paths.finetune_curve(*args.key))
    io.write_csv(curve, result.curve, list(FINETUNE_CURVE_COLUMNS))
    run.log_metrics(result.metrics)
    run.log_artifact(curve, "plots", name=paths.finetune_curve(*args.key).name)
    return stable


def _log_summary(item: str, metrics: dict[str, Any]) -> None:
    logger.info(
        "%s: val accuracy PT head %.3f, PT probe %.3f, FT %.3f (macro-F1 %.3f) in %.0f s",
        item,
        metrics["pt_head/accuracy"],
        metrics["pt_probe/accuracy"],
        metrics["ft/accuracy"],
        metrics["ft/macro_f1"],
        metrics["speed/train_s"],
    )


# --------------------------------------------------------------------------------------------
# One fine-tune with its baselines
# --------------------------------------------------------------------------------------------


def finetune(
    model_source: str,
    splits: DatasetDict,
    params: FinetuneParams,
    seed: int,
    output_dir: Path,
    *,
    ordinal: bool = False,
    device: Any = None,
    on_log: OnLog | None = None,
    work_dir: Path,
    pooling: str = "auto",
    probe: ProbeSpec | None = None,
    train_labels: np.ndarray | None = None,
) -> FinetuneResult:
    """Fine-tune ``model_source`` on ``splits['train']``, evaluate on ``splits['val']``, save the
    classifier (safetensors + tokenizer + config with label names) to ``output_dir``.

    ``work_dir`` is Trainer's scratch folder (no checkpoints are kept: the stage output is the
    saved model). ``train_labels`` replace the train split's labels for training only (a
    control); the baselines and the val split keep the true labels, so they stay comparable
    with a seed run's.
    """
    device = pick_device(str(device) if device is not None else None)
    names = list(splits["train"].features["label"].names)
    tokenizer = load_tokenizer(model_source)
    seed_everything(seed, device)  # the new classification head is drawn from this seed
    model = load_classifier(model_source, names)
    tokenized = _tokenized(splits, tokenizer, params.max_length, train_labels)
    trainer = _trainer(
        model, tokenizer, tokenized, _training_args(params, seed, device, work_dir), on_log
    )
    pt_labels, pt_preds, _ = _predict(trainer, tokenized["val"])  # the paper's "pre-trained"
    start = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - start
    labels, ft_preds, eval_s = _predict(trainer, tokenized["val"])
    encoder = load_encoder(model_source).to(device)
    pooling = probe_pooling(pooling, encoder.config)
    probe_preds = _probe_baseline(encoder, tokenizer, splits, params, device, seed, pooling, probe)
    probe_labels = np.asarray(splits["val"]["label"])
    metrics: dict[str, Any] = {
        **classification_metrics(labels, ft_preds, names, "ft", ordinal),
        **classification_metrics(pt_labels, pt_preds, names, "pt_head", ordinal),
        **classification_metrics(probe_labels, probe_preds, names, "pt_probe", ordinal),
        "data/n_train": len(splits["train"]),
        "data/n_val": len(splits["val"]),
        "data/majority_accuracy": majority_accuracy(labels),
        "speed/train_s": round(train_s, 2),
        "speed/train_examples_per_s": round(len(splits["train"]) * params.epochs / train_s, 2),
        "speed/eval_examples_per_s": round(len(labels) / eval_s, 2),
        "train/final_loss": float(train_out.training_loss),
    }
    # safetensors + config (id2label: the label names). Not trainer.save_model: it also pickles
    # the TrainingArguments (with a temp path), which would change the folder's hash every run.
    trainer.model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return FinetuneResult(
        metrics=metrics,
        confusion=confusion_counts(labels, ft_preds, len(names)),
        curve=_curve_rows(trainer.state.log_history),
    )


def _tokenized(
    splits: DatasetDict, tokenizer: Any, max_length: int, train_labels: np.ndarray | None = None
) -> DatasetDict:
    """Token ids, lengths (for length-grouped batches) and ``labels``, as Trainer wants them;
    ``train_labels`` (a control's) replace the train split's labels."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(x) for x in enc["input_ids"]]
        return enc

    tokenized = splits.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True)
    tokenized = tokenized.rename_column("label", "labels")
    if train_labels is not None:
        train = tokenized["train"].remove_columns("labels")
        tokenized["train"] = train.add_column("labels", np.asarray(train_labels).tolist())
    return tokenized


def _training_args(params: FinetuneParams, seed: int, device: Any, work_dir: Path) -> Any:
    """``TrainingArguments`` from the params: evaluate every epoch, keep no checkpoint."""
    import torch
    from transformers import TrainingArguments

    mixed = autocast_dtype(params.precision, device)
    n_devices = training_devices(params.data_parallel, device)
    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=per_device_batch(params.batch_size, n_devices),
        per_device_eval_batch_size=params.eval_batch_size,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=params.weight_decay,
        max_grad_norm=params.grad_clip,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        seed=seed,
        data_seed=seed,
        report_to="none",
        use_cpu=device.type == "cpu",
        bf16=mixed == torch.bfloat16,
        fp16=mixed is None and params.precision == "auto" and device.type == "cuda",
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        disable_tqdm=False,
    )
    if device.type == "cuda" and not params.data_parallel:
        args._n_gpu = 1  # as Trainer does for model parallelism: no silent nn.DataParallel
    return args


def training_devices(data_parallel: bool, device: Any) -> int:
    """How many devices one optimiser step spans: 1 unless ``data_parallel`` on CUDA, then every
    visible GPU (one process, ``nn.DataParallel``). Multi-process launches (``torchrun``) are
    refused: the stage stages, logs and renames its outputs from a single process."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(
            f"launched on WORLD_SIZE={world} processes: run the stage as one process and set "
            "finetune.data_parallel=true to use every visible GPU"
        )
    if not data_parallel or torch.device(device).type != "cuda":
        return 1
    return max(1, torch.cuda.device_count())


def per_device_batch(batch_size: int, n_devices: int) -> int:
    """The per-device batch that keeps the effective (optimiser) batch at ``batch_size``."""
    if batch_size % n_devices:
        raise ConfigError(
            f"finetune.batch_size={batch_size} does not split evenly over {n_devices} devices; "
            f"use a multiple of {n_devices} or finetune.data_parallel=false"
        )
    return batch_size // n_devices


def _trainer(
    model: Any, tokenizer: Any, tokenized: DatasetDict, args: Any, on_log: OnLog | None
) -> Any:
    """A Trainer over the tokenized train/val splits that reports val accuracy per epoch and
    forwards its step logs to ``on_log``."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

    class ForwardLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is not None and logs:
                on_log({f"train/{k}": v for k, v in logs.items()}, state.global_step)

    return Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["val"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy,
        callbacks=[ForwardLogs()],
    )


def _accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))}


def _predict(trainer: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Val predictions with their labels, as Trainer returns them, and the seconds taken: its
    eval loader may reorder texts (length grouping), so labels must come from the same output."""
    start = time.perf_counter()
    out = trainer.predict(dataset)
    return out.label_ids, out.predictions.argmax(-1), time.perf_counter() - start


def _probe_baseline(
    encoder: Any,
    tokenizer: Any,
    splits: DatasetDict,
    params: FinetuneParams,
    device: Any,
    seed: int,
    pooling: str,
    probe: ProbeSpec | None,
) -> np.ndarray:
    """The compare stage's probe (same pooling, same search over its regularisation) on frozen
    last-layer PT features: fit train, predict val (``probe`` None: the library's search).

    The fair "pre-trained" baseline: what a linear read-out of the PT model can do without
    changing it, against which fine-tuning's gain is measured."""
    from layerwise.similarity.probes import ProbeSpec, fit_probe

    feats = {}
    for split in ("train", "val"):
        ids = tokenize_texts(tokenizer, list(splits[split]["text"]), params.max_length)
        feats[split] = pooled_last_layer(
            encoder, ids, params.eval_batch_size, tokenizer.pad_token_id, device, pooling
        )
    labels = np.asarray(splits["train"]["label"])
    model = fit_probe(feats["train"], labels, probe or ProbeSpec(), seed)
    with single_threaded_blas():
        return model.predict(feats["val"])


def _probe_spec(params: CompareParams) -> ProbeSpec:
    """The probes' search as params set it (imported here: sklearn loads once the work starts)."""
    from layerwise.similarity.probes import probe_spec

    return probe_spec(params)


def _curve_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trainer's log history as plot rows: train loss per logging step, val loss/acc per epoch
    (a cell is empty where that row has no such value)."""
    rows = []
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:
            values = (
                int(entry.get("step", 0)),
                round(float(entry.get("epoch", 0.0)), 4),
                entry.get("loss", ""),
                entry.get("eval_loss", ""),
                entry.get("eval_accuracy", ""),
            )
            rows.append(dict(zip(FINETUNE_CURVE_COLUMNS, values, strict=True)))
    return rows
