"""The features stage's work: for every (PT|FT, SAE layer) the top-variance features with their
texts and tokens, label selectivity, PT-vs-FT dictionary overlap, token maps and the generated
qualitative table. Everything is computed on the analysis split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from layerwise import features as F
from layerwise.activations import ActivationStore, store_name
from layerwise.config import FeaturesParams

logger = logging.getLogger(__name__)

LAYER_COLUMNS = [
    "layer",
    "depth",
    "mmcs",
    "kept_frac",
    "selectivity_top_pt",
    "selectivity_top_ft",
    "selective_frac_pt",
    "selective_frac_ft",
    "alive_pt",
    "alive_ft",
]


def _tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def analyse(
    store_root: Path,
    sae_root: Path,
    layers: list[int],
    n_model_layers: int,
    texts: list[str],
    labels: np.ndarray,
    label_names: list[str],
    tokenizer: Any,
    params: FeaturesParams,
    seed: int,
    device: Any = "cpu",
) -> dict[str, Any]:
    """All feature results of one run, as one JSON-able dict (see ``LAYER_COLUMNS`` for the
    per-layer summary rows under ``layers``)."""
    from layerwise.sae import load_sae, numpy_encoder

    store = ActivationStore.open(store_root, "analysis")
    text_id, position, token_id = (store.column(c) for c in ("text_id", "position", "token_id"))
    n_texts, n_classes = store.n_texts, len(label_names)
    if len(labels) != n_texts:
        raise ValueError(
            f"analysis split has {len(labels)} texts but the activation store {store_root} "
            f"holds {n_texts}: rerun compare"
        )
    examples = F.select_examples(labels, params.examples_per_label, seed, n_classes)
    out: dict[str, Any] = {"units": {}, "layers": [], "examples": []}
    decoders: dict[str, np.ndarray] = {}
    alive: dict[str, np.ndarray] = {}
    for which in ("pt", "ft"):
        for layer in layers:
            name = store_name(which, layer)
            sae_dir = sae_root / name
            if not (sae_dir / "cfg.json").is_file():
                raise FileNotFoundError(
                    f"no SAE at {sae_dir}: it is made by the sae stage (run `dvc repro sae@...`)"
                )
            sae = load_sae(sae_dir, device=device)
            acts = store.acts(name)
            encode = numpy_encoder(sae)
            tf = F.text_feature_matrix(
                encode, acts, text_id, n_texts, reduce=params.reduce, d_in=sae.cfg.d_in
            )
            alive[name] = tf.alive
            decoders[name] = sae.W_dec.detach().cpu().numpy()
            top = F.top_variance_features(tf.per_text, params.top_n)
            sel = F.label_selectivity(tf.per_text, labels, n_classes)
            alive_auc = sel.auc[tf.alive]
            tokens_by_feature = F.top_tokens(
                encode,
                acts,
                token_id,
                top,
                params.top_tokens,
                min_count=params.token_min_count,
                d_in=sae.cfg.d_in,
            )
            feats = []
            for f in top:
                f = int(f)
                top_t = F.top_texts(tf.per_text, f, params.top_k)
                dist = F.label_distribution([i for i, _ in top_t], labels, n_classes)
                toks = tokens_by_feature.get(f, [])
                feats.append(
                    {
                        "feature": f,
                        "variance": float(tf.per_text[:, f].var()),
                        "fire_rate": float(tf.fire_rate[f]),
                        "selectivity": float(sel.auc[f]),
                        "best_class": label_names[int(sel.best_class[f])],
                        "dominant_label": label_names[dist.dominant],
                        "label_distribution": dict(
                            zip(label_names, dist.fractions.round(4).tolist(), strict=True)
                        ),
                        "top_tokens": [
                            {"token": tok, "mean_activation": round(a, 4), "count": c}
                            for tok, (_, a, c) in zip(
                                _tokens(tokenizer, [t for t, _, _ in toks]), toks, strict=True
                            )
                        ],
                        "top_texts": [
                            {
                                "text_index": i,
                                "activation": round(a, 4),
                                "label": label_names[int(labels[i])],
                                "text": texts[i],
                            }
                            for i, a in top_t
                        ],
                    }
                )
            out["units"][name] = {
                "which": which,
                "layer": layer,
                "n_features": int(tf.per_text.shape[1]),
                "alive_frac": float(tf.alive.mean()),
                "selectivity_top": float(np.mean([x["selectivity"] for x in feats])),
                "selective_frac": float(np.mean(alive_auc >= params.selectivity_threshold))
                if alive_auc.size
                else 0.0,
                "selectivity_alive_mean": float(alive_auc.mean()) if alive_auc.size else 0.5,
                "top_features": feats,
            }
            for ex in examples:
                # Of the unit's top-variance features, the three most active on this text: a
                # map of features that stay silent on the example shows nothing.
                shown = top[np.argsort(-tf.per_text[ex, top], kind="stable")[:3]]
                tm = F.token_map(
                    encode, acts, text_id, position, token_id, ex, shown, d_in=sae.cfg.d_in
                )
                entry = _example_entry(
                    out["examples"], ex, labels, label_names, texts, tm, tokenizer
                )
                entry["maps"][name] = {
                    "features": [int(f) for f in tm["features"]],
                    "activations": np.asarray(tm["activations"]).round(4).tolist(),
                }
    for layer in layers:
        pt, ft = store_name("pt", layer), store_name("ft", layer)
        max_cos = F.dictionary_overlap(decoders[ft][alive[ft]], decoders[pt][alive[pt]])
        overlap = F.overlap_summary(max_cos, params.kept_threshold)
        out["layers"].append(
            {
                "layer": layer,
                "depth": layer / n_model_layers,
                "mmcs": overlap["mmcs"],
                "kept_frac": overlap["kept_frac"],
                "selectivity_top_pt": out["units"][pt]["selectivity_top"],
                "selectivity_top_ft": out["units"][ft]["selectivity_top"],
                "selective_frac_pt": out["units"][pt]["selective_frac"],
                "selective_frac_ft": out["units"][ft]["selective_frac"],
                "alive_pt": out["units"][pt]["alive_frac"],
                "alive_ft": out["units"][ft]["alive_frac"],
            }
        )
    out["table"] = feature_table(out["units"], n_top=3)
    return out


def _example_entry(
    examples: list[dict[str, Any]],
    text_index: int,
    labels: np.ndarray,
    label_names: list[str],
    texts: list[str],
    tm: dict[str, Any],
    tokenizer: Any,
) -> dict[str, Any]:
    for entry in examples:
        if entry["text_index"] == text_index:
            return entry
    entry = {
        "text_index": int(text_index),
        "label": label_names[int(labels[text_index])],
        "text": texts[text_index],
        "tokens": _tokens(tokenizer, list(tm["token_id"])),
        "maps": {},
    }
    examples.append(entry)
    return entry


def feature_table(units: dict[str, Any], n_top: int = 3) -> list[dict[str, Any]]:
    """The paper's qualitative table, from data: per (layer, PT|FT) the top features by
    variance with their top tokens, dominant label and selectivity."""
    rows = []
    for name, unit in sorted(units.items(), key=lambda kv: (kv[1]["layer"], kv[1]["which"])):
        for feat in unit["top_features"][:n_top]:
            rows.append(
                {
                    "layer": unit["layer"],
                    "model": unit["which"].upper(),
                    "feature": feat["feature"],
                    "top_tokens": " ".join(t["token"] for t in feat["top_tokens"][:5]),
                    "dominant_label": feat["dominant_label"],
                    "selectivity": round(feat["selectivity"], 3),
                    "unit": name,
                }
            )
    return rows


def summary_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat keys for DVC metrics and MLflow."""
    out: dict[str, float] = {}
    for row in result["layers"]:
        layer = row["layer"]
        for key in LAYER_COLUMNS[2:]:
            out[f"L{layer}/{key}"] = float(row[key])
    return out
