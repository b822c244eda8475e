"""sae@<model>-<task>-<seed>: sparse autoencoders on the early/middle/late layers of the PT and
FT models, judged by MSE, explained variance, L0, dead/dense fractions and spliced accuracy.

Every (PT|FT, layer) SAE of a run trains in one pass over the activation stores, is evaluated on
the held-out analysis tokens, and the fine-tuned classifier is rerun with each FT layer replaced
by its SAE reconstruction: val accuracy and loss, and the share of them the reconstruction
recovers relative to mean-ablating the layer (:mod:`layerwise.splice`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise import io, splice
from layerwise.activations import ActivationStore
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import CompareParams, ConfigError, ModelDef, SAEParams, section_dict
from layerwise.data import model_splits
from layerwise.models import (
    autocast_dtype,
    check_layers,
    check_max_length,
    load_config,
    load_tokenizer,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.runtime import seed_everything
from layerwise.sae.evaluate import evaluate_sae
from layerwise.sae.model import SAEConfig, SparseAutoencoder, save_sae
from layerwise.sae.train import (
    OnLog,
    SAETrainer,
    TrainConfig,
    check_finite,
    estimate_scale_factor,
)
from layerwise.schema import SAE_CURVE_COLUMNS, SAE_METRIC_KEYS, SAE_SPLICE_KEYS, unit_name
from layerwise.tracking import StageRun

logger = logging.getLogger("sae")

CURVE_CSV_COLUMNS = [*SAE_CURVE_COLUMNS, "store"]
"""The curve CSV: the trainer's columns plus the unit (``pt_L2``) each row's SAE belongs to."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def sae_width(params: SAEParams, d_in: int) -> int:
    """Dictionary width F for activations of width ``d_in``."""
    return max(1, round(params.expansion * d_in))


def check_sae_params(params: SAEParams, d_in: int) -> int:
    """Width and k against the model width: fail before training."""
    d_sae = sae_width(params, d_in)
    if params.sparsity == "topk" and params.k > d_sae:
        raise ConfigError(
            f"sae.k={params.k} is above the number of features {d_sae} "
            f"(sae.expansion={params.expansion} x width {d_in})"
        )
    return d_sae


def mean_pool_store(acts: np.ndarray, text_id: np.ndarray) -> np.ndarray:
    """Per-text mean of token rows (rows are grouped by text): the paper's SAE inputs."""
    texts, starts, counts = np.unique(text_id, return_index=True, return_counts=True)
    order = np.argsort(starts)
    out = np.zeros((len(texts), acts.shape[1]), dtype=np.float32)
    for j, i in enumerate(order):
        s, c = starts[i], counts[i]
        out[j] = np.asarray(acts[s : s + c], dtype=np.float32).mean(0)
    return out


def load_unit_data(
    store_root: Path, names: list[str], pooling: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train and eval activations of each unit (mean-pooled per text for ``pooling="mean"``),
    checked finite; every missing unit is named before any is read."""
    train, analysis = (ActivationStore.open(store_root, s) for s in ("train", "analysis"))
    for name in names:
        train.acts(name)
        analysis.acts(name)
    data_train, data_eval = {}, {}
    for name in names:
        x_train, x_eval = train.acts(name), analysis.acts(name)
        if pooling == "mean":
            x_train = mean_pool_store(x_train, train.column("text_id"))
            x_eval = mean_pool_store(x_eval, analysis.column("text_id"))
        check_finite(x_train, f"{store_root}/train/{name}")
        check_finite(x_eval, f"{store_root}/analysis/{name}")
        data_train[name], data_eval[name] = x_train, x_eval
    return data_train, data_eval


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class SAERunResult:
    saes: dict[str, SparseAutoencoder]
    """Trained SAEs by unit name (``pt_L2``, ``ft_L4``)."""
    metrics: dict[str, float]
    """``<unit>/<key>`` for every unit and ``schema.SAE_METRIC_KEYS`` key."""
    curve: list[dict[str, Any]]
    """Training-curve rows (``CURVE_CSV_COLUMNS``)."""


def sae_configs(
    data_train: dict[str, np.ndarray], params: SAEParams, seed: int, meta: dict[str, Any]
) -> list[SAEConfig]:
    """One config per unit, in ``data_train`` order, each with its own scale factor."""
    d_in = next(iter(data_train.values())).shape[1]
    d_sae = check_sae_params(params, d_in)
    return [
        SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            sparsity=params.sparsity,
            l1_coefficient=params.l1_coefficient,
            k=params.k,
            scale_factor=estimate_scale_factor(x, seed=seed),
            metadata={**meta, "store": name, "pooling": params.pooling},
        )
        for name, x in data_train.items()
    ]


def model_sae_params(params: SAEParams, model: ModelDef) -> SAEParams:
    """The ``sae`` section as one model's SAEs use it: its ``sae_train_tokens`` (a larger model
    runs at a smaller scale) in place of ``sae.train_tokens``. A section that trains by
    ``sae.epochs`` applies to every model (the paper's recipe is 2 epochs for all)."""
    if model.sae_train_tokens is None or params.train_tokens is None:
        return params
    return dataclasses.replace(params, train_tokens=model.sae_train_tokens)


def train_config(params: SAEParams, seed: int, device: Any) -> TrainConfig:
    """The trainer's settings from the ``sae`` params section."""
    return TrainConfig(
        lr=params.learning_rate,
        batch_size=params.batch_size,
        epochs=params.epochs,
        max_tokens=params.train_tokens,
        warmup_steps=params.warmup_steps,
        lr_decay_ratio=params.lr_decay_ratio,
        seed=seed,
        device=device,
        progress=True,
        autocast_dtype=autocast_dtype(params.precision, device),
        l0_target=params.l0_target if params.sparsity == "l1" else None,
    )


def train_and_evaluate(
    store_root: Path,
    layers: list[int],
    params: SAEParams,
    seed: int,
    device: Any,
    on_log: OnLog | None = None,
    meta: dict[str, Any] | None = None,
) -> SAERunResult:
    """Train the PT and FT SAEs of every layer together and evaluate them on the analysis split."""
    names = [unit_name(w, layer) for w in ("pt", "ft") for layer in layers]
    data_train, data_eval = load_unit_data(store_root, names, params.pooling)
    cfgs = sae_configs(data_train, params, seed, meta or {})
    trainer = SAETrainer(
        cfgs, list(data_train.values()), train_config(params, seed, device), on_log=on_log
    )
    saes, curve = trainer.fit()
    metrics: dict[str, float] = {}
    for name, sae in zip(names, saes, strict=True):
        m = evaluate_sae(sae, data_eval[name], batch_size=params.eval_batch_size, device=device)
        metrics.update({f"{name}/{key}": float(m[key]) for key in SAE_METRIC_KEYS})
        if sae.cfg.sparsity == "l1":  # the coefficient it ended at (tuned with l0_target)
            metrics[f"{name}/l1_coefficient"] = float(sae.cfg.l1_coefficient)
    for row in curve:
        row["store"] = names[int(row["sae"])]
    return SAERunResult(dict(zip(names, saes, strict=True)), metrics, curve)


# --------------------------------------------------------------------------------------------
# Spliced accuracy and loss
# --------------------------------------------------------------------------------------------


def splice_unit(
    base: splice.CleanRun, layer: int, sae: SparseAutoencoder, compare: CompareParams, seed: int
) -> dict[str, float]:
    """``schema.SAE_SPLICE_KEYS`` of one FT layer: the classifier with the layer replaced by
    its SAE reconstruction, against mean-ablating the layer, scored as the fine-tune stage
    scores val."""
    spliced = base.scores_with(layer, splice.per_batch(splice.sae_replace(sae)))
    return splice.splice_metrics(
        base.scores, spliced, base.ablated(layer), compare.n_boot, seed, compare.confidence
    )


def accuracy_metrics(
    args: StageArgs, ft_dir: Path, saes: dict[str, SparseAutoencoder], device: Any
) -> dict[str, float]:
    """Clean val accuracy of the fine-tuned classifier and, per FT layer, ``<unit>/<key>`` for
    every ``schema.SAE_SPLICE_KEYS`` key (NaN for mean-pooled SAEs, which never saw a single
    token's state)."""
    p = args.params
    val_split = model_splits(Paths(args.root).prepared(args.task), p.model(args.model), p.seed)[
        "val"
    ]
    layers = p.model(args.model).layers
    base = splice.CleanRun.load(ft_dir, val_split, p.finetune, layers, device)
    metrics = {"ft/accuracy_clean": base.scores.accuracy}
    for layer in layers:
        name = unit_name("ft", layer)
        unit = (
            splice_unit(base, layer, saes[name], p.compare, args.seed)
            if p.sae.pooling == "token"
            else splice.nan_splice_metrics(base.scores)
        )
        metrics.update({f"{name}/{k}": v for k, v in unit.items()})
    return metrics


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def sae_extra(params: SAEParams, metrics: dict[str, float], name: str) -> dict[str, Any]:
    """What a unit's ``cfg.json`` holds besides the SAE's own config: the params it was trained
    with and its eval metrics. No commit, date or host: the folder is a content-hashed DVC
    output, and those live in the stage run's MLflow tags."""
    return {
        "params": section_dict(params),
        "eval": {k: metrics[f"{name}/{k}"] for k in SAE_METRIC_KEYS},
    }


def write_outputs(
    run: StageRun, args: StageArgs, result: SAERunResult, metrics: dict[str, float]
) -> None:
    """Every SAE folder, the metrics file and the curve, staged and committed together; the
    metrics and curve go to MLflow before the commit, so a tracking failure leaves no output."""
    paths = Paths(args.root)
    with io.Staging() as staging:
        sae_root = staging.dir(paths.saes(*args.key))
        for name, sae in result.saes.items():
            save_sae(sae.cpu(), sae_root / name, extra=sae_extra(args.params.sae, metrics, name))
        io.write_json(staging.file(paths.sae_metrics(*args.key)), metrics)
        curve = staging.file(paths.sae_curve(*args.key))
        io.write_csv(curve, result.curve, CURVE_CSV_COLUMNS)
        run.log_metrics(metrics)
        run.log_artifact(curve, "plots", name=paths.sae_curve(*args.key).name)


def log_summary(names: list[str], metrics: dict[str, float]) -> None:
    """One log line per unit: the numbers a reader checks first."""
    for name in names:
        spliced = ""
        if name.startswith("ft"):
            m = {k: metrics[f"{name}/{k}"] for k in SAE_SPLICE_KEYS}
            spliced = (
                f"  spliced acc {m['ft_accuracy_spliced']:.3f} "
                f"(clean {metrics['ft/accuracy_clean']:.3f}, ablated "
                f"{m['ft_accuracy_ablated']:.3f}; recovered {m['ft_recovered_accuracy']:.2f} "
                f"[{m['ft_recovered_accuracy_lo']:.2f}, {m['ft_recovered_accuracy_hi']:.2f}])  "
                f"loss recovered {m['ft_recovered_loss']:.2f}"
            )
        logger.info(
            "%s: FVU %.3f  L0 %.1f  dead %.1f%%  dense %.1f%%%s",
            name,
            metrics[f"{name}/fvu"],
            metrics[f"{name}/l0"],
            100 * metrics[f"{name}/dead_frac"],
            100 * metrics[f"{name}/dense_frac"],
            spliced,
        )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def check_inputs(args: StageArgs, store_root: Path, ft_dir: Path) -> None:
    """Params against the stores and the fine-tuned model: fail before any training."""
    p = args.params
    store = ActivationStore.open(store_root, "train")
    check_sae_params(p.sae, int(store.meta["dim"]))
    ft_config = load_config(str(ft_dir))
    check_layers(p.model(args.model).layers, ft_config, f"{p.model_key(args.model)}.layers")
    check_max_length(
        p.finetune.max_length, ft_config, load_tokenizer(str(ft_dir)), "finetune.max_length"
    )


def curve_logger(run: StageRun) -> OnLog:
    """``on_log`` for the trainer: each SAE's loss, MSE and L0 as MLflow step metrics."""

    def log_curve(step: int, rows: list[dict]) -> None:
        for i, row in enumerate(rows):
            run.log_metrics(
                {f"train/{k}/{i}": v for k, v in row.items() if k in ("loss", "mse_loss", "l0")},
                step=step,
            )

    return log_curve


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    layers = p.model(args.model).layers
    sae_params = model_sae_params(p.sae, p.model(args.model))
    store_root = args.require_store()
    ft_dir = io.require(paths.finetuned(*args.key), args.stage_name("finetune"))
    check_inputs(args, store_root, ft_dir)
    device = pick_device(p.device)
    used = {
        **prefixed("sae", sae_params),
        f"{p.model_key(args.model)}.layers": layers,
        f"{p.model_key(args.model)}.sae_train_tokens": p.model(args.model).sae_train_tokens,
        "finetune.max_length": p.finetune.max_length,
        "finetune.eval_batch_size": p.finetune.eval_batch_size,
        "finetune.precision": p.finetune.precision,
        "compare.n_boot": p.compare.n_boot,
        "compare.confidence": p.compare.confidence,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("sae", args, used) as run:
        seed_everything(args.seed, device)
        meta = {"model": args.model, "task": args.task, "seed": args.seed}
        result = train_and_evaluate(
            store_root, layers, sae_params, args.seed, device, on_log=curve_logger(run), meta=meta
        )
        metrics = {**result.metrics, **accuracy_metrics(args, ft_dir, result.saes, device)}
        write_outputs(run, args, result, metrics)
        log_summary(list(result.saes), metrics)
    return metrics
