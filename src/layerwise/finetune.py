"""Fine-tune a pre-trained encoder on a task with transformers' ``Trainer``, and measure the
baselines the paper compares against.

``Trainer`` gives us, for free and tested upstream: linear warmup/decay schedules, gradient
clipping, per-epoch evaluation, mixed precision and multi-GPU when a GPU is present, and
length-grouped sampling. We add: the pre-trained-head baseline (the paper's "pre-trained
accuracy": the same classifier before any training step) and a fair baseline the paper lacks, a
logistic-regression probe on frozen mean-pooled pre-trained features.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise.activations import mean_pooled_last_layer, tokenize_texts
from layerwise.config import FinetuneParams
from layerwise.runtime import single_threaded_blas

if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, names: list[str], prefix: str, ordinal: bool
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 (and within-one accuracy for ordinal labels)."""
    from sklearn.metrics import accuracy_score, f1_score

    ids = list(range(len(names)))
    out: dict[str, Any] = {
        f"{prefix}/accuracy": float(accuracy_score(labels, preds)),
        f"{prefix}/macro_f1": float(
            f1_score(labels, preds, labels=ids, average="macro", zero_division=0)
        ),
    }
    per_class = f1_score(labels, preds, labels=ids, average=None, zero_division=0)
    for name, f1 in zip(names, per_class, strict=True):
        out[f"{prefix}/f1/{name}"] = float(f1)
    if ordinal:
        out[f"{prefix}/within_one_accuracy"] = float(np.mean(np.abs(labels - preds) <= 1))
    return out


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, preds, labels=list(range(n_classes))).tolist()


def probe_baseline(
    encoder: Any,
    tokenizer: Any,
    splits: DatasetDict,
    params: FinetuneParams,
    device: Any,
    seed: int,
) -> np.ndarray:
    """Logistic regression on frozen mean-pooled last-layer PT features: fit train, predict val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = {}
    for split in ("train", "val"):
        ids = tokenize_texts(tokenizer, list(splits[split]["text"]), params.max_length)
        feats[split] = mean_pooled_last_layer(
            encoder, ids, params.eval_batch_size, tokenizer.pad_token_id, device
        )
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=params.probe_max_iter, random_state=seed)
    )
    with single_threaded_blas():
        probe.fit(feats["train"], np.asarray(splits["train"]["label"]))
        return probe.predict(feats["val"])


@dataclass
class FinetuneResult:
    metrics: dict[str, Any]
    confusion: list[list[int]]
    curve: list[dict[str, Any]]


def _curve_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trainer's log history as plot rows: train loss per logging step, val loss/acc per epoch."""
    rows = []
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:
            rows.append(
                {
                    "step": int(entry.get("step", 0)),
                    "epoch": round(float(entry.get("epoch", 0.0)), 4),
                    "train_loss": entry.get("loss", ""),
                    "val_loss": entry.get("eval_loss", ""),
                    "val_accuracy": entry.get("eval_accuracy", ""),
                }
            )
    return rows


def finetune(
    model_source: str,
    splits: DatasetDict,
    params: FinetuneParams,
    seed: int,
    output_dir: Path,
    *,
    ordinal: bool = False,
    device: Any = None,
    on_log: Any = None,
    work_dir: Path,
) -> FinetuneResult:
    """Fine-tune ``model_source`` on ``splits['train']``, evaluate on ``splits['val']``, save the
    classifier (safetensors + tokenizer + config with label names) to ``output_dir``.

    ``on_log(metrics, step)`` receives Trainer's step logs (for MLflow); ``work_dir`` is
    Trainer's scratch folder (no checkpoints are kept: the stage output is the saved model).
    """
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from layerwise.models import (
        autocast_dtype,
        load_classifier,
        load_encoder,
        load_tokenizer,
        pick_device,
    )
    from layerwise.runtime import seed_everything

    device = device or pick_device()
    mixed = autocast_dtype(params.precision, device)
    names = list(splits["train"].features["label"].names)
    tokenizer = load_tokenizer(model_source)
    seed_everything(seed)  # the new classification head is drawn from this seed
    model = load_classifier(model_source, names)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], truncation=True, max_length=params.max_length)
        enc["length"] = [len(x) for x in enc["input_ids"]]
        return enc

    tokenized = splits.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True)
    tokenized = tokenized.rename_column("label", "labels")

    def compute_metrics(pred: Any) -> dict[str, float]:
        return {"accuracy": float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))}

    class ForwardLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is not None and logs:
                on_log({f"train/{k}": v for k, v in logs.items()}, state.global_step)

    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
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
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["val"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[ForwardLogs()],
    )

    def predict() -> tuple[np.ndarray, np.ndarray, float]:
        """Val predictions with their labels, as Trainer returns them: its eval loader may
        reorder texts (length grouping), so labels must come from the same output."""
        start = time.perf_counter()
        out = trainer.predict(tokenized["val"])
        return out.label_ids, out.predictions.argmax(-1), time.perf_counter() - start

    pt_labels, pt_preds, _ = predict()  # the untrained head: the paper's "pre-trained" column
    start = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - start
    labels, ft_preds, eval_s = predict()

    probe_preds = probe_baseline(
        load_encoder(model_source).to(device), tokenizer, splits, params, device, seed
    )
    metrics: dict[str, Any] = {}
    metrics.update(classification_metrics(labels, ft_preds, names, "ft", ordinal))
    metrics.update(classification_metrics(pt_labels, pt_preds, names, "pt_head", ordinal))
    probe_labels = np.asarray(splits["val"]["label"])
    metrics.update(classification_metrics(probe_labels, probe_preds, names, "pt_probe", ordinal))
    metrics.update(
        {
            "data/n_train": len(splits["train"]),
            "data/n_val": len(splits["val"]),
            "data/majority_accuracy": float(np.bincount(labels).max() / len(labels)),
            "speed/train_s": round(train_s, 2),
            "speed/train_examples_per_s": round(len(splits["train"]) * params.epochs / train_s, 2),
            "speed/eval_examples_per_s": round(len(labels) / eval_s, 2),
            "train/final_loss": float(train_out.training_loss),
        }
    )
    # safetensors + config (id2label: the label names). Not trainer.save_model: it also pickles
    # the TrainingArguments (with a temp path), which would change the folder's hash every run.
    trainer.model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return FinetuneResult(
        metrics=metrics,
        confusion=confusion(labels, ft_preds, len(names)),
        curve=_curve_rows(trainer.state.log_history),
    )
