"""Synthetic results in exactly the formats the earlier stages write, for the paper tests.

Two synthetic tasks: ``sentiment`` has a planted transition in the middle (PT-FT cosine inside
the FT-FT seed band early, far below it and below the shuffled-label control late; resetting
the top blocks costs most of the gain, the bottom ones little; FT-only crosscoder latents,
selectivity beyond the permutation null and a moved dictionary late: with two or more seeds
every claim should hold); ``rating`` is flat (the fine-tune moved every layer alike, no reset
loses half the gain and the features sit at the null: no claim should hold). :data:`ONE_MODEL` and
:data:`TWO_MODELS` are the model sets the tests use.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from conftest import REPO_PARAMS

from layerwise.config import load_params
from layerwise.paths import Paths
from layerwise.schema import (
    CROSSCODER_HIST_BINS,
    CROSSCODER_LAYER_COLUMNS,
    FEATURE_LAYER_COLUMNS,
    FINETUNE_CURVE_COLUMNS,
    RESET_COLUMNS,
    SAE_BASELINE_COLUMNS,
    SAE_SPLICE_KEYS,
    SEED_FLOOR_COLUMNS,
    SIMILARITY_COLUMNS,
)

EXPERIMENT = "layerwise-paper-test"
DPI = 160
LABELS = {"sentiment": ["negative", "positive"], "rating": ["1", "2", "3", "4", "5"]}
SHAPES = {"sentiment": "planted", "rating": "flat"}
ONE_MODEL = {"tiny": (6, [2, 4, 6])}
TWO_MODELS = {"tiny": (6, [2, 4, 6]), "small": (4, [1, 2, 4])}
TASKS = ["sentiment", "rating"]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def planted_cosine(d: float) -> float:
    """PT-FT cosine of the planted task: flat early, a steep fall around depth 0.5, low late."""
    return 0.999 - 0.5 * sigmoid(12 * (d - 0.5))


def similarity_rows(n_layers: int, shape: str, seed: int | str) -> list[dict[str, Any]]:
    """``planted``: the planted fall, tight CIs; ``flat``: constant, wide CIs; ``shuffled``: the
    shuffled-label control of the planted task (a mild fall, far above its late layers)."""
    rows = []
    for layer in range(n_layers + 1):
        d = layer / n_layers
        jitter = 0.002 * seed if isinstance(seed, int) else 0.0
        if shape == "planted":
            cos, half, cka = planted_cosine(d) - jitter, 0.004, 0.999 - 0.8 * d**2
        elif shape == "shuffled":
            cos, half, cka = 0.999 - 0.15 * d, 0.004, 0.999 - 0.2 * d
        else:
            cos, half, cka = 0.9, 0.02, 0.9
        pt, ft = 0.6 + 0.05 * d, 0.6 + (0.3 * d if shape == "planted" else 0.05 * d)
        rows.append(
            {
                "layer": layer,
                "depth": d,
                "cosine": cos,
                "cosine_lo": cos - half,
                "cosine_hi": cos + half,
                "cka": cka,
                "cka_lo": cka - 0.01,
                "cka_hi": cka + 0.01,
                "probe_pt": pt,
                "probe_pt_lo": pt - 0.03,
                "probe_pt_hi": pt + 0.03,
                "probe_ft": ft,
                "probe_ft_lo": ft - 0.03,
                "probe_ft_hi": ft + 0.03,
                "probe_diff": ft - pt,
                "probe_diff_lo": ft - pt - 0.02,
                "probe_diff_hi": ft - pt + 0.02,
                "n_tokens": 500,
            }
        )
    return rows


def features_result(
    n_layers: int, sae_layers: list[int], labels: list[str], shape: str, seed: int = 0
) -> dict[str, Any]:
    """A features.json: late FT features more selective and a changed late dictionary when
    ``planted``; nothing changes with depth when ``flat``."""
    units: dict[str, Any] = {}
    layer_rows = []
    tokens = ["[CLS]", "a", "truly", "great", "film", "$", "100", "%", "_x", "[SEP]"]
    for i, layer in enumerate(sae_layers):
        frac = i / max(len(sae_layers) - 1, 1)
        planted = shape == "planted"
        jitter = 0.004 * seed
        sel = {"pt": 0.6 + jitter, "ft": 0.6 + jitter + (0.3 * frac if planted else 0.0)}
        for which in ("pt", "ft"):
            feats = [
                {
                    "feature": 10 * i + f,
                    "variance": 1.0 / (f + 1),
                    "fire_rate": 0.1,
                    "selectivity": sel[which],
                    "best_class": labels[f % len(labels)],
                    "dominant_label": labels[f % len(labels)],
                    "label_distribution": {name: 1 / len(labels) for name in labels},
                    "top_tokens": [
                        {"token": tok, "mean_activation": 1.0, "count": 5}
                        for tok in ("great", "100%", "R&D", "a_b", "#1")
                    ],
                    "top_texts": [
                        {"text_index": 0, "activation": 2.0, "label": labels[0], "text": "great"}
                    ],
                }
                for f in range(3)
            ]
            units[f"{which}_L{layer}"] = {
                "which": which,
                "layer": layer,
                "n_features": 64,
                "alive_frac": 0.9,
                "selectivity_top": sel[which],
                "selective_frac": sel[which] - 0.5,
                "selectivity_alive_mean": 0.55,
                "top_features": feats,
            }
        layer_rows.append(
            {
                "layer": layer,
                "depth": layer / n_layers,
                "mmcs": 0.9 - 0.5 * frac if shape == "planted" else 0.8,
                "kept_frac": 0.8 - 0.4 * frac,
                "selectivity_top_pt": sel["pt"],
                "selectivity_top_ft": sel["ft"],
                "selective_frac_pt": sel["pt"] - 0.5,
                "selective_frac_ft": sel["ft"] - 0.5,
                "alive_pt": 0.9,
                "alive_ft": 0.9,
                "selectivity_null_pt": 0.58,
                "selectivity_null_ft": 0.58,
                "selectivity_excess_pt": sel["pt"] - 0.58,
                "selectivity_excess_ft": sel["ft"] - 0.58,
                "special_frac_pt": 0.02,
                "special_frac_ft": 0.03,
            }
        )
    examples = []
    for j, label in enumerate(labels[:2]):
        maps = {
            unit: {
                "features": [int(u["top_features"][k]["feature"]) for k in range(3)],
                "activations": [[float(t + j), 0.5, 0.0] for t in range(len(tokens))],
            }
            for unit, u in units.items()
        }
        examples.append(
            {
                "text_index": j,
                "label": label,
                "text": "a truly great film $100 % _x",
                "tokens": tokens,
                "maps": maps,
            }
        )
    table = [
        {
            "layer": u["layer"],
            "model": u["which"].upper(),
            "feature": f["feature"],
            "top_tokens": " ".join(t["token"] for t in f["top_tokens"]),
            "dominant_label": f["dominant_label"],
            "selectivity": f["selectivity"],
            "selectivity_null": 0.58,
            "selectivity_excess": f["selectivity"] - 0.58,
            "unit": name,
        }
        for name, u in units.items()
        for f in u["top_features"]
    ]
    return {"units": units, "layers": layer_rows, "examples": examples, "table": table}


def seed_floor_rows(n_layers: int, shape: str, n_seeds: int) -> list[dict[str, Any]]:
    """FT-FT similarity over seed pairs: slowly falling for ``planted``, above the flat task's
    PT-FT curve for ``flat``; NaN with one seed (no pair), as the seed_floor stage writes."""
    rows = []
    for layer in range(n_layers + 1):
        d = layer / n_layers
        mean = 0.999 - 0.08 * d if shape == "planted" else 0.95
        lo, hi = mean - 0.04, min(mean + 0.01, 1.0)
        if n_seeds < 2:
            mean = lo = hi = math.nan
        rows.append(
            {
                "layer": layer,
                "depth": d,
                **{
                    f"{m}_{k}": v
                    for m in ("cosine", "cka")
                    for k, v in zip(("mean", "min", "max"), (mean, lo, hi), strict=True)
                },
                "n_pairs": n_seeds * (n_seeds - 1) // 2,
            }
        )
    return rows


def lost_gain(direction: str, k: int, n_layers: int, shape: str, seed: int) -> float:
    """Share of the gain lost with k blocks reset: the planted task lives in the top blocks
    (top-down resets cost fast, bottom-up ones late); the flat one never loses half."""
    x = k / n_layers
    if shape == "flat":
        return 0.3 * x
    if direction == "top_down":
        return sigmoid(12 * (x - 0.2)) + 0.01 * seed
    return sigmoid(12 * (x - 0.5)) + 0.01 * seed


def write_reset(paths: Paths, m: str, t: str, s: int, n_layers: int, n_labels: int) -> None:
    """reset.csv and reset.json for one seed, in the reset stage's formats."""
    ft, majority = 0.85 + 0.01 * s, 1 / n_labels
    rows, summary = [], {"ft/accuracy": ft, "data/majority_accuracy": majority}
    for direction in ("bottom_up", "top_down"):
        mid = None
        for k in range(n_layers + 1):
            lost = 0.0 if k == 0 else lost_gain(direction, k, n_layers, SHAPES[t], s)
            acc = ft - lost * (ft - majority)
            first = 1 if direction == "bottom_up" else n_layers - k + 1
            blocks = f"{first}-{first + k - 1}" if k else ""
            values = (direction, k, blocks, acc, acc - 0.03, acc + 0.03, lost)
            rows.append(dict(zip(RESET_COLUMNS, values, strict=True)))
            summary[f"{direction}/accuracy_k{k}"] = acc
            if mid is None and lost >= 0.5:
                mid = k
        summary[f"{direction}/midpoint"] = math.nan if mid is None else mid
        summary[f"{direction}/midpoint_depth"] = math.nan if mid is None else mid / n_layers
    _write_csv(paths.reset_csv(m, t, s), list(RESET_COLUMNS), rows)
    _write_json(paths.reset_json(m, t, s), summary)


def write_controls(paths: Paths, m: str, t: str, n_layers: int, n_seeds: int) -> None:
    """The shuffled-label control (at chance) and the seed floor of one (model, task)."""
    write_shuffled(paths, m, t, n_layers)
    rows = seed_floor_rows(n_layers, SHAPES[t], n_seeds)
    _write_csv(paths.seed_floor_csv(m, t), list(SEED_FLOOR_COLUMNS), rows)
    _write_json(paths.seed_floor_json(m, t), {"n_pairs": rows[0]["n_pairs"]})


def write_shuffled(paths: Paths, m: str, t: str, n_layers: int) -> None:
    """The shuffled-label control's similarity and fine-tune metrics (at chance)."""
    shape = SHAPES[t]
    shuffled = similarity_rows(n_layers, "shuffled" if shape == "planted" else shape, "shuffled")
    _write_csv(paths.similarity_csv(m, t, "shuffled"), list(SIMILARITY_COLUMNS), shuffled)
    n_labels = len(LABELS[t])
    ft = {
        "ft/accuracy": 1 / n_labels + 0.01,
        "ft/macro_f1": 0.3,
        "pt_head/accuracy": 0.5,
        "pt_head/macro_f1": 0.4,
        "pt_probe/accuracy": 0.7,
        "pt_probe/macro_f1": 0.69,
        "data/majority_accuracy": 1 / n_labels,
        "control/label_agreement": 1 / n_labels,
    }
    _write_json(paths.finetune_metrics(m, t, "shuffled"), ft)


def write_results(
    root: Path,
    models: dict[str, tuple[int, list[int]]],
    tasks: list[str],
    seeds: list[int],
    size_models: dict[str, tuple[int, list[int]]] | None = None,
    size_seeds: tuple[int, ...] = (0,),
) -> None:
    """Every input of the paper stage, under ``root``, in the earlier stages' formats; size
    models get their seeds and the shuffled control only, as the ``*_size`` stages write."""
    paths = Paths(root)
    for t in tasks:
        labels = LABELS[t]
        prep: dict[str, Any] = {"texts": 1000, "classes": len(labels)}
        for split, rows in (("train", 600), ("val", 200), ("analysis", 200)):
            prep[f"{split}/rows"] = rows
            for k, name in enumerate(labels):
                prep[f"{split}/label/{name}"] = rows // len(labels) + (k == 0) * (
                    rows % len(labels)
                )
            prep.update({f"{split}/tokens/{s}": 20.0 for s in ("mean", "median", "p95", "max")})
        _write_json(paths.prepare_metrics(t), prep)
    for m, (n_layers, sae_layers) in models.items():
        for t in tasks:
            write_controls(paths, m, t, n_layers, len(seeds))
            for s in seeds:
                write_reset(paths, m, t, s, n_layers, len(LABELS[t]))
                write_seed_run(paths, m, t, s, n_layers, sae_layers)
                write_crosscoder(paths, m, t, s, n_layers, sae_layers)
            write_crosscoder(paths, m, t, "shuffled", n_layers, sae_layers)
            write_sae_baseline(paths, m, t, n_layers, sae_layers, seeds)
    for m, (n_layers, sae_layers) in (size_models or {}).items():
        for t in tasks:
            write_shuffled(paths, m, t, n_layers)
            for s in size_seeds:
                write_seed_run(paths, m, t, s, n_layers, sae_layers)


def write_seed_run(
    paths: Paths, m: str, t: str, s: int, n_layers: int, sae_layers: list[int]
) -> None:
    """One seed's finetune, compare, sae and features outputs (what every protocol runs)."""
    labels, shape = LABELS[t], SHAPES[t]
    ft: dict[str, Any] = {
        "ft/accuracy": 0.85 + 0.01 * s,
        "ft/macro_f1": 0.84,
        "pt_head/accuracy": 0.5,
        "pt_head/macro_f1": 0.4,
        "pt_probe/accuracy": 0.7,
        "pt_probe/macro_f1": 0.69,
        "data/n_train": 600,
        "data/n_val": 200,
        "data/majority_accuracy": 1 / len(labels),
        "speed/train_s": 10.0,
        **{f"ft/f1/{name}": 0.8 for name in labels},
    }
    if t == "rating":
        ft["ft/within_one_accuracy"] = 0.95
    _write_json(paths.finetune_metrics(m, t, s), ft)
    curve = []
    for step in range(1, 21):
        curve.append({"step": step, "epoch": step / 10, "train_loss": 1.0 / step + 0.01 * s})
        if step % 10 == 0:
            curve.append(
                {
                    "step": step,
                    "epoch": step / 10,
                    "val_loss": 0.3,
                    "val_accuracy": 0.8 + 0.01 * step / 10,
                }
            )
    _write_csv(paths.finetune_curve(m, t, s), list(FINETUNE_CURVE_COLUMNS), curve)
    sim = similarity_rows(n_layers, shape, s)
    _write_csv(paths.similarity_csv(m, t, s), list(SIMILARITY_COLUMNS), sim)
    _write_json(
        paths.similarity_json(m, t, s),
        {
            "cosine/first": sim[0]["cosine"],
            "cosine/last": sim[-1]["cosine"],
            "cka/last": sim[-1]["cka"],
            "ci_methods": {"cosine": "bootstrap", "cka": "jackknife"},
            "confidence": 0.95,
        },
    )
    sae: dict[str, float] = {"ft/accuracy_clean": 0.85}
    for k in sae_layers:
        for which in ("pt", "ft"):
            unit = f"{which}_L{k}"
            sae.update(
                {
                    f"{unit}/mse": 0.01 * k,
                    f"{unit}/explained_variance": 0.9 - 0.02 * k,
                    f"{unit}/fvu": 0.1 + 0.02 * k + 0.01 * s,
                    f"{unit}/l0": 20.0 + k,
                    f"{unit}/dead_frac": 0.05,
                    f"{unit}/dense_frac": 0.01,
                    f"{unit}/cos_sim": 0.95,
                }
            )
        sae.update(splice_metrics(k, s))
    _write_json(paths.sae_metrics(m, t, s), sae)
    feats = features_result(n_layers, sae_layers, labels, shape, s)
    _write_json(paths.features_json(m, t, s), feats)
    _write_csv(paths.features_csv(m, t, s), list(FEATURE_LAYER_COLUMNS), feats["layers"])


def splice_metrics(layer: int, seed: int) -> dict[str, float]:
    """``ft_L<layer>/<key>`` for ``schema.SAE_SPLICE_KEYS``: splicing recovers most of the
    accuracy, less in later layers."""
    rec = 0.95 - 0.02 * layer - 0.005 * seed
    values = {
        "ft_accuracy_spliced": 0.8,
        "ft_accuracy_ablated": 0.5,
        "ft_recovered_accuracy": rec,
        "ft_recovered_accuracy_lo": rec - 0.05,
        "ft_recovered_accuracy_hi": rec + 0.03,
        "ft_loss_clean": 0.3,
        "ft_loss_spliced": 0.4,
        "ft_loss_ablated": 0.7,
        "ft_recovered_loss": 0.75,
        "ft_recovered_loss_lo": 0.7,
        "ft_recovered_loss_hi": 0.8,
    }
    assert set(values) == set(SAE_SPLICE_KEYS)
    return {f"ft_L{layer}/{k}": v for k, v in values.items()}


def crosscoder_fractions(shape: str, frac: float, seed: int | str) -> tuple[float, float]:
    """(PT-only, FT-only) share of alive latents at relative SAE position ``frac`` (0 early, 1
    late): the planted fine-tune gains FT-only latents late, the flat one and the shuffled
    control (``seed == "shuffled"``) keep a constant few."""
    if seed == "shuffled" or shape == "flat":
        return 0.02, 0.03
    return 0.02, 0.02 + 0.13 * frac + 0.004 * int(seed)


def norm_histogram(pt_only: float, ft_only: float, n_alive: int) -> list[int]:
    """Counts per relative-norm bin: the shared latents a bump around 0.5, the PT-only and
    FT-only ones in the outer bins (below 0.1 and above 0.9 with 20 bins)."""
    centres = (np.arange(CROSSCODER_HIST_BINS) + 0.5) / CROSSCODER_HIST_BINS
    shared = np.exp(-0.5 * ((centres - 0.5) / 0.12) ** 2)
    shared[(centres < 0.1) | (centres > 0.9)] = 0.0
    counts = shared / shared.sum() * n_alive * (1 - pt_only - ft_only)
    counts[:2] += n_alive * pt_only * np.array([0.7, 0.3])
    counts[-2:] += n_alive * ft_only * np.array([0.3, 0.7])
    return np.rint(counts).astype(int).tolist()


def write_crosscoder(
    paths: Paths, m: str, t: str, run: int | str, n_layers: int, sae_layers: list[int]
) -> None:
    """crosscoder.csv and crosscoder.json of one run (a seed or ``"shuffled"``)."""
    rows, hist, top = [], {}, {}
    planted = SHAPES[t] == "planted" and run != "shuffled"
    for i, layer in enumerate(sae_layers):
        frac = i / max(len(sae_layers) - 1, 1)
        pt_only, ft_only = crosscoder_fractions(SHAPES[t], frac, run)
        excess_ft_only = 0.15 * frac if planted else 0.002
        rows.append(
            {
                "layer": layer,
                "depth": layer / n_layers,
                "n_latents": 1536,
                "alive_frac": 0.8,
                "pt_only_frac": pt_only,
                "shared_frac": 1 - pt_only - ft_only,
                "ft_only_frac": ft_only,
                "ft_only_artefact_frac": 0.01,
                "fvu_pt": 0.2 + 0.01 * layer,
                "fvu_ft": 0.22 + 0.01 * layer,
                "l0": 32.0,
                "dead_frac": 0.2,
                "selectivity_shared": 0.62,
                "selectivity_ft_only": 0.6 + excess_ft_only,
                "selectivity_null": 0.6,
                "selectivity_excess_shared": 0.02,
                "selectivity_excess_ft_only": excess_ft_only,
                "ft_recovered_accuracy": 0.9 - 0.02 * layer,
            }
        )
        hist[str(layer)] = norm_histogram(pt_only, ft_only, 1229)
        top[str(layer)] = [
            {
                "latent": 100 * i + j,
                "relative_norm": 0.97 - 0.01 * j,
                "fire_rate": 0.01,
                "selectivity": 0.6 + excess_ft_only,
                "selectivity_null": 0.6,
                "best_class": LABELS[t][j % len(LABELS[t])],
                "top_tokens": ["great", "100%", "R&D", "a_b"],
                "top_texts": [
                    {
                        "text": "a truly great film, 100% worth it " * 4,
                        "label": LABELS[t][0],
                        "activation": 3.0,
                    }
                ],
            }
            for j in range(3 if i else 0)  # the early layer has none
        ]
    _write_csv(paths.crosscoder_csv(m, t, run), list(CROSSCODER_LAYER_COLUMNS), rows)
    thresholds = {"pt_only_below": 0.1, "ft_only_above": 0.9}
    data = {"layers": rows, "hist": hist, "hist_all": hist, "top_ft_only": top}
    _write_json(paths.crosscoder_json(m, t, run), {**data, "thresholds": thresholds})


def write_sae_baseline(
    paths: Paths, m: str, t: str, n_layers: int, sae_layers: list[int], seeds: list[int]
) -> None:
    """sae_baseline.csv: the planted task's late PT-FT overlap halfway between the floor and
    the seed baseline, the flat task's at the baseline; NaN with one seed."""
    rows = []
    for i, layer in enumerate(sae_layers):
        frac = i / max(len(sae_layers) - 1, 1)
        for j, s in enumerate(seeds):
            rel = (1 - 0.5 * frac if SHAPES[t] == "planted" else 1.0) + 0.01 * s
            other = seeds[(j + 1) % len(seeds)] if len(seeds) > 1 else math.nan
            floor, pt_pt = 0.2, 0.8
            rows.append(
                {
                    "layer": layer,
                    "depth": layer / n_layers,
                    "seed": s,
                    "other_seed": other,
                    "mmcs_pt_ft": floor + rel * (pt_pt - floor),
                    "mmcs_pt_pt": pt_pt if len(seeds) > 1 else math.nan,
                    "mmcs_ft_ft": pt_pt - 0.02 if len(seeds) > 1 else math.nan,
                    "mmcs_floor": floor,
                    "overlap_rel": rel if len(seeds) > 1 else math.nan,
                    "l0_pt": 20.0 + layer,
                    "l0_ft": 21.0 + layer,
                }
            )
    _write_csv(paths.sae_baseline_csv(m, t), list(SAE_BASELINE_COLUMNS), rows)


def write_params(
    root: Path,
    models: dict[str, tuple[int, list[int]]],
    tasks: list[str],
    seeds: list[int],
    size_models: dict[str, tuple[int, list[int]]] | None = None,
    size_seeds: tuple[int, ...] = (0,),
) -> Path:
    """``root/params.yaml``: the repo's params with these models, tasks and seeds (validated);
    no size models unless given."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["tasks"] = tasks
    raw["seeds"] = seeds
    raw["task_defs"] = {t: raw["task_defs"][t] for t in tasks}
    raw["models"] = {
        m: {"source": f"hub:example/{m}", "layers": layers, "description": f"synthetic {m}"}
        for m, (_, layers) in models.items()
    }
    raw["size_models"] = {
        m: {
            "source": f"hub:example/{m}",
            "layers": layers,
            "description": f"synthetic {m}",
            "max_train": 100,
            "max_val": 50,
            "max_analysis": 50,
        }
        for m, (_, layers) in (size_models or {}).items()
    }
    raw["size_seeds"] = list(size_seeds)
    raw.setdefault("data", {}).pop("stats_model", None)
    raw.setdefault("paper", {})["dpi"] = DPI
    raw.setdefault("mlflow", {})["experiment"] = EXPERIMENT
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the decoded image."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.size
