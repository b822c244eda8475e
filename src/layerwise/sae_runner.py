"""The sae stage's work: train every (PT|FT, layer) SAE of a run in one pass, evaluate each on
held-out analysis tokens, and measure what the fine-tuned classifier loses when a layer is
replaced by its SAE reconstruction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.activations import ActivationStore, iterate_batches, store_name, tokenize_texts
from layerwise.config import ConfigError, SAEParams
from layerwise.models import autocast_dtype

logger = logging.getLogger(__name__)

METRIC_KEYS = ("mse", "explained_variance", "fvu", "l0", "dead_frac", "dense_frac", "cos_sim")


def sae_width(params: SAEParams, d_in: int) -> int:
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


def spliced_accuracy(
    classifier: Any,
    tokenizer: Any,
    texts: list[str],
    labels: np.ndarray,
    layer: int,
    sae: Any | None,
    max_length: int,
    batch_size: int,
    device: Any,
) -> float:
    """Val accuracy with ``hidden_states[layer]`` replaced by its SAE reconstruction (``sae`` =
    None: the clean model). A forward hook on the module producing that hidden state."""
    import torch

    base = classifier.base_model
    module = base.embeddings if layer == 0 else base.encoder.layer[layer - 1]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        shape = hidden.shape
        recon = sae(hidden.reshape(-1, shape[-1]).float()).x_hat.reshape(shape).to(hidden.dtype)
        return (recon, *output[1:]) if isinstance(output, tuple) else recon

    handle = module.register_forward_hook(hook) if sae is not None else None
    ids = tokenize_texts(tokenizer, texts, max_length)
    preds = np.zeros(len(ids), dtype=np.int64)
    try:
        with torch.inference_mode():
            for idx, batch in iterate_batches(ids, batch_size, tokenizer.pad_token_id, device):
                preds[idx] = classifier(**batch).logits.argmax(-1).cpu().numpy()
    finally:
        if handle is not None:
            handle.remove()
    return float((preds == labels).mean())


@dataclass
class SAERunResult:
    saes: dict[str, Any]
    metrics: dict[str, float]
    curve: list[dict[str, Any]]
    freqs: dict[str, np.ndarray]


def train_and_evaluate(
    store_root: Path,
    layers: list[int],
    params: SAEParams,
    seed: int,
    device: Any,
    on_log: Any = None,
    meta: dict[str, Any] | None = None,
) -> SAERunResult:
    """Train the PT and FT SAEs of every layer together and evaluate them on the analysis split."""
    from layerwise.sae import (
        SAEConfig,
        check_finite,
        estimate_scale_factor,
        evaluate_sae_detailed,
        train_saes,
    )

    train, analysis = (ActivationStore.open(store_root, s) for s in ("train", "analysis"))
    names = [store_name(w, layer) for w in ("pt", "ft") for layer in layers]
    for name in names:  # missing layers are named before any work
        train.acts(name)
        analysis.acts(name)
    data_train, data_eval = {}, {}
    for name in names:
        x_train, x_eval = train.acts(name), analysis.acts(name)
        if params.pooling == "mean":
            x_train = mean_pool_store(x_train, train.column("text_id"))
            x_eval = mean_pool_store(x_eval, analysis.column("text_id"))
        check_finite(x_train, f"{store_root}/train/{name}")
        check_finite(x_eval, f"{store_root}/analysis/{name}")
        data_train[name], data_eval[name] = x_train, x_eval
    d_in = data_train[names[0]].shape[1]
    d_sae = check_sae_params(params, d_in)
    cfgs = [
        SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            sparsity=params.sparsity,
            l1_coefficient=params.l1_coefficient,
            k=params.k,
            scale_factor=estimate_scale_factor(data_train[name], seed=seed),
            metadata={**(meta or {}), "store": name, "pooling": params.pooling},
        )
        for name in names
    ]
    saes, curve = train_saes(
        cfgs,
        [data_train[n] for n in names],
        lr=params.learning_rate,
        batch_size=params.batch_size,
        epochs=params.epochs,
        max_tokens=params.train_tokens,
        warmup_steps=params.warmup_steps,
        lr_decay_ratio=params.lr_decay_ratio,
        seed=seed,
        device=device,
        on_log=on_log,
        progress=True,
        autocast_dtype=autocast_dtype(params.precision, device),
    )
    metrics: dict[str, float] = {}
    freqs = {}
    for name, sae in zip(names, saes, strict=True):
        ev = evaluate_sae_detailed(
            sae, data_eval[name], batch_size=params.eval_batch_size, device=device
        )
        freqs[name] = ev.feature_freq
        for key in METRIC_KEYS:
            metrics[f"{name}/{key}"] = float(ev.metrics[key])
    for row in curve:
        row["store"] = names[int(row["sae"])]
    return SAERunResult(dict(zip(names, saes, strict=True)), metrics, curve, freqs)
