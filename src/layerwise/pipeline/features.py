"""features@<model>-<task>-<seed>: which SAE features change with fine-tuning, layer by layer:
top-variance features with texts and tokens, label selectivity, PT/FT dictionary overlap, token
maps and the generated qualitative table.

Everything is computed on the analysis split. The statistics themselves live in
:mod:`layerwise.features` (plain numpy over an ``encode`` callable); this module feeds them the
stored activations and trained SAEs, and assembles one JSON-able result per run.

Selectivity is calibrated three ways (:class:`Calibration`): the analysis texts are split into
two label-stratified halves, features are chosen by variance on one and scored on the other;
every score comes with its label-permutation null (the best of several one-vs-rest AUCs is
above 0.5 by chance); and features whose activation sits mostly on special tokens ([CLS], the
token the classifier reads) are reported apart and, with ``features.exclude_special``, kept out
of the top features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from layerwise import features as F
from layerwise import io
from layerwise.activations import ActivationStore
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import FeaturesParams
from layerwise.data import DataError, model_splits
from layerwise.errors import MissingInputError
from layerwise.models import load_config, load_tokenizer, num_layers, pick_device
from layerwise.paths import Paths
from layerwise.plots import plot_token_maps
from layerwise.sae.model import load_sae, numpy_encoder
from layerwise.schema import FEATURE_LAYER_COLUMNS, unit_name

logger = logging.getLogger("features")

WHICH = ("pt", "ft")
TABLE_FEATURES_PER_UNIT = 3
"""Rows per (layer, PT|FT) in the qualitative table."""
MAPPED_FEATURES = 3
"""Features drawn per unit on each example's token map."""


@dataclass(frozen=True)
class AnalysisSplit:
    """The analysis split's texts and labels, and the tokenizer that reads its token ids."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    tokenizer: Any

    def tokens(self, ids: Any) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    def label(self, text_index: int) -> str:
        return self.label_names[int(self.labels[text_index])]


class _StoreIndex(NamedTuple):
    """Per token row of the activation store: its text, position in the text, vocabulary id."""

    text_id: np.ndarray
    position: np.ndarray
    token_id: np.ndarray


@dataclass(frozen=True)
class _UnitCodes:
    """One unit's SAE applied to that unit's stored activations."""

    encode: F.Encode
    acts: np.ndarray
    d_in: int
    text_features: F.TextFeatures
    decoder: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """What every unit's selectivity is computed against: the split halves of the analysis
    texts (features chosen on ``halves.select``, scored on ``halves.score``), the number of
    label permutations and their seed, and the rows holding special tokens."""

    halves: F.Halves
    n_permutations: int
    seed: int
    special: np.ndarray
    """``[N_tokens]`` bool over the activation store's rows."""

    def describe(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_select": int(self.halves.select.size),
            "n_score": int(self.halves.score.size),
            "n_permutations": self.n_permutations,
        }


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    key = args.key
    store_root = args.require_store()
    sae_root = io.require(paths.saes(*key), args.stage_name("sae"))
    analysis = model_splits(paths.prepared(args.task), model_def, p.seed)["analysis"]
    split = AnalysisSplit(
        texts=list(analysis["text"]),
        labels=np.asarray(analysis["label"]),
        label_names=list(analysis.features["label"].names),
        tokenizer=load_tokenizer(model_def.source),
    )
    n_model_layers = num_layers(load_config(model_def.source))
    device = pick_device(p.device)
    used = {
        **prefixed("features", p.features),
        f"{p.model_key(args.model)}.layers": model_def.layers,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("features", args, used) as run:
        result = analyse(
            store_root,
            sae_root,
            model_def.layers,
            n_model_layers,
            split,
            p.features,
            args.seed,
            device,
        )
        metrics = summary_metrics(result)
        with io.Staging() as staging:
            io.write_json(staging.file(paths.features_json(*key)), result)
            columns = list(FEATURE_LAYER_COLUMNS)
            io.write_csv(staging.file(paths.features_csv(*key)), result["layers"], columns)
            io.write_json(staging.file(paths.features_metrics(*key)), metrics)
            maps = staging.dir(paths.token_maps(*key))
            _write_token_maps(result["examples"], model_def.layers, maps, args)
            run.log_metrics(metrics)
            run.log_artifacts(maps, "token_maps")
        _log_layers(result["layers"], p.features.top_n)
    return metrics


def _write_token_maps(
    examples: list[dict[str, Any]], layers: list[int], folder: Path, args: StageArgs
) -> None:
    """The example texts' token maps as JSON (for the paper and the app) and as one PNG."""
    io.write_json(folder / "token_maps.json", examples)
    plot_token_maps(
        examples,
        [unit_name(which, layer) for layer in layers for which in WHICH],
        folder / "token_maps.png",
        title=f"{args.task}: top-feature activation per token ({args.model})",
        dpi=args.params.paper.dpi,
    )


def _log_layers(rows: list[dict[str, Any]], top_n: int) -> None:
    for row in rows:
        logger.info(
            "layer %d: MMCS %.3f (kept %.0f%%)  selectivity top-%d PT %.3f (null %.3f) "
            "FT %.3f (null %.3f)  special frac PT %.3f FT %.3f",
            row["layer"],
            row["mmcs"],
            100 * row["kept_frac"],
            top_n,
            row["selectivity_top_pt"],
            row["selectivity_null_pt"],
            row["selectivity_top_ft"],
            row["selectivity_null_ft"],
            row["special_frac_pt"],
            row["special_frac_ft"],
        )


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


def analyse(
    store_root: Path,
    sae_root: Path,
    layers: list[int],
    n_model_layers: int,
    split: AnalysisSplit,
    params: FeaturesParams,
    seed: int,
    device: Any = "cpu",
) -> dict[str, Any]:
    """All feature results of one run, as one JSON-able dict: ``units`` (per PT|FT unit its
    top features and its special-token features), ``layers`` (one ``FEATURE_LAYER_COLUMNS``
    row per SAE layer), ``examples`` (token maps), ``table`` (the paper's qualitative table)
    and ``split_half`` (the halves' sizes, seed and permutation count)."""
    store = ActivationStore.open(store_root, "analysis")
    index = _StoreIndex(*(store.column(c) for c in _StoreIndex._fields))
    if len(split.labels) != store.n_texts:
        raise DataError(
            f"analysis split has {len(split.labels)} texts but the activation store "
            f"{store_root} holds {store.n_texts}: rerun compare"
        )
    examples = F.select_examples(
        split.labels, params.examples_per_label, seed, len(split.label_names)
    )
    calibration = Calibration(
        halves=F.split_halves(split.labels, seed, len(split.label_names)),
        n_permutations=params.n_permutations,
        seed=seed,
        special=F.special_rows(index.token_id, _special_ids(split.tokenizer)),
    )
    out: dict[str, Any] = {
        "units": {},
        "layers": [],
        "examples": [],
        "split_half": calibration.describe(),
    }
    dictionaries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for which in WHICH:
        for layer in layers:
            name = unit_name(which, layer)
            codes = _apply_sae(
                sae_root / name, store, name, index.text_id, calibration.special, params, device
            )
            dictionaries[name] = codes.decoder, codes.text_features.alive
            out["units"][name], top = _unit_result(
                which, layer, codes, index, split, params, calibration
            )
            for text_index in examples:
                token_ids, token_map = _token_map(text_index, top, codes, index)
                entry = _example_entry(out["examples"], text_index, split, token_ids)
                entry["maps"][name] = token_map
    out["layers"] = [
        _layer_row(layer, n_model_layers, out["units"], dictionaries, params.kept_threshold)
        for layer in layers
    ]
    out["table"] = feature_table(out["units"], n_top=TABLE_FEATURES_PER_UNIT)
    return out


def _special_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's special token ids ([CLS], [SEP], [PAD], ...) except [UNK], which stands
    for a word of the text rather than a position the model adds."""
    unk = getattr(tokenizer, "unk_token_id", None)
    return [int(i) for i in tokenizer.all_special_ids if i != unk]


def _apply_sae(
    sae_dir: Path,
    store: ActivationStore,
    name: str,
    text_id: np.ndarray,
    special: np.ndarray,
    params: FeaturesParams,
    device: Any,
) -> _UnitCodes:
    """Load the unit's SAE and reduce its feature activations per text, with each feature's
    activation mass on special tokens (one streaming pass)."""
    if not (sae_dir / "cfg.json").is_file():
        raise MissingInputError(
            f"no SAE at {sae_dir}: it is made by the sae stage (run `dvc repro sae@...`)"
        )
    sae = load_sae(sae_dir, device=device)
    acts = store.acts(name)
    encode = numpy_encoder(sae)
    d_in = sae.cfg.d_in
    text_features = F.text_feature_matrix(
        encode, acts, text_id, store.n_texts, reduce=params.reduce, d_in=d_in, special=special
    )
    decoder = sae.W_dec.detach().cpu().numpy()
    return _UnitCodes(encode, acts, d_in, text_features, decoder)


def _unit_result(
    which: str,
    layer: int,
    codes: _UnitCodes,
    index: _StoreIndex,
    split: AnalysisSplit,
    params: FeaturesParams,
    calibration: Calibration,
) -> tuple[dict[str, Any], np.ndarray]:
    """One unit's summary, its top features and its special-token features (with texts and
    tokens), and the indices of the top features.

    ``selectivity_top``/``_null``/``_excess`` average the top features' split-half scores;
    ``selective_frac`` and ``selectivity_alive_mean`` describe all alive features on all texts
    (uncalibrated, kept for continuity)."""
    tf = codes.text_features
    special = tf.alive & (tf.special_share >= params.special_share)
    top = _split_half(tf, split, params, calibration, _candidates(tf.alive, special, params))
    special_top = _split_half(tf, split, params, calibration, special) if special.any() else None
    shown = top.features if special_top is None else np.r_[top.features, special_top.features]
    tokens = F.top_tokens(
        codes.encode,
        codes.acts,
        index.token_id,
        np.unique(shown),
        params.top_tokens,
        min_count=params.token_min_count,
        d_in=codes.d_in,
    )
    whole = F.label_selectivity(tf.per_text, split.labels, len(split.label_names))
    alive_auc = whole.auc[tf.alive]

    def entries(scored: F.SplitHalfSelectivity | None) -> list[dict[str, Any]]:
        if scored is None:
            return []
        return [
            _feature_entry(j, scored, tf, whole, special, tokens, split, params.top_k)
            for j in range(scored.features.size)
        ]

    unit = {
        "which": which,
        "layer": layer,
        "n_features": int(tf.per_text.shape[1]),
        "alive_frac": float(tf.alive.mean()),
        "selectivity_top": float(top.auc.mean()),
        "selectivity_null": float(top.null.mean.mean()),
        "selectivity_excess": float(top.excess.mean()),
        "special_frac": float(special.sum() / tf.alive.sum()) if tf.alive.any() else 0.0,
        "selective_frac": (
            float(np.mean(alive_auc >= params.selectivity_threshold)) if alive_auc.size else 0.0
        ),
        "selectivity_alive_mean": float(alive_auc.mean()) if alive_auc.size else 0.5,
        "top_features": entries(top),
        "special_features": entries(special_top),
    }
    return unit, top.features


def _candidates(alive: np.ndarray, special: np.ndarray, params: FeaturesParams) -> np.ndarray:
    """``[F]`` bool: the features the top ones are chosen from, i.e. the alive ones, less the
    special-token ones under ``exclude_special``; a unit with none left falls back (with a
    warning) to all alive features, and one with no alive feature to all features."""
    if not alive.any():
        logger.warning("no SAE feature fires on the analysis split; choosing among all of them")
        return np.ones_like(alive)
    if not params.exclude_special:
        return alive
    if (alive & ~special).any():
        return alive & ~special
    logger.warning("every alive feature is a special-token feature; keeping them as candidates")
    return alive


def _split_half(
    tf: F.TextFeatures,
    split: AnalysisSplit,
    params: FeaturesParams,
    calibration: Calibration,
    among: np.ndarray,
) -> F.SplitHalfSelectivity:
    """Top-``top_n`` variance features of ``among`` on the selecting half, scored on the
    other half against their label-permutation null."""
    return F.split_half_selectivity(
        tf.per_text,
        split.labels,
        len(split.label_names),
        calibration.halves,
        params.top_n,
        among=among,
        n_permutations=calibration.n_permutations,
        seed=calibration.seed,
    )


def _feature_entry(
    j: int,
    scored: F.SplitHalfSelectivity,
    tf: F.TextFeatures,
    whole: F.Selectivity,
    special: np.ndarray,
    tokens: dict[int, list[tuple[int, float, int]]],
    split: AnalysisSplit,
    top_k: int,
) -> dict[str, Any]:
    """The ``j``-th scored feature: its variance and firing rate (all texts), its split-half
    selectivity with null and excess, its selectivity on all texts, its special-token share,
    the labels of its top texts, its top tokens and its top texts."""
    feature = int(scored.features[j])
    top_texts = F.top_texts(tf.per_text, feature, top_k)
    dist = F.label_distribution([i for i, _ in top_texts], split.labels, len(split.label_names))
    feature_tokens = tokens.get(feature, [])
    token_names = split.tokens([t for t, _, _ in feature_tokens])
    return {
        "feature": feature,
        "variance": float(tf.per_text[:, feature].var()),
        "fire_rate": float(tf.fire_rate[feature]),
        "selectivity": float(scored.auc[j]),
        "selectivity_null": float(scored.null.mean[j]),
        "selectivity_excess": float(scored.excess[j]),
        "selectivity_all": float(whole.auc[feature]),
        "best_class": split.label_names[int(scored.best_class[j])],
        "special_share": float(tf.special_share[feature]),
        "is_special": bool(special[feature]),
        "dominant_label": split.label_names[dist.dominant],
        "label_distribution": dict(
            zip(split.label_names, dist.fractions.round(4).tolist(), strict=True)
        ),
        "top_tokens": [
            {"token": tok, "mean_activation": round(a, 4), "count": c}
            for tok, (_, a, c) in zip(token_names, feature_tokens, strict=True)
        ],
        "top_texts": [
            {
                "text_index": i,
                "activation": round(a, 4),
                "label": split.label(i),
                "text": split.texts[i],
            }
            for i, a in top_texts
        ],
    }


def _token_map(
    text_index: int, top: np.ndarray, codes: _UnitCodes, index: _StoreIndex
) -> tuple[np.ndarray, dict[str, Any]]:
    """The text's token ids in position order, and the activation per token of the few
    top-variance features most active on it (a map of features that stay silent on the
    example would show nothing)."""
    active = -codes.text_features.per_text[text_index, top]
    shown = top[np.argsort(active, kind="stable")[:MAPPED_FEATURES]]
    tm = F.token_map(codes.encode, codes.acts, *index, text_index, shown, d_in=codes.d_in)
    token_map = {
        "features": [int(f) for f in tm["features"]],
        "activations": np.asarray(tm["activations"]).round(4).tolist(),
    }
    return tm["token_id"], token_map


def _example_entry(
    examples: list[dict[str, Any]], text_index: int, split: AnalysisSplit, token_ids: np.ndarray
) -> dict[str, Any]:
    """The example's entry in ``examples`` (added on first use): its text, label, tokens and,
    filled in per unit, its token maps."""
    for entry in examples:
        if entry["text_index"] == text_index:
            return entry
    entry = {
        "text_index": int(text_index),
        "label": split.label(text_index),
        "text": split.texts[text_index],
        "tokens": split.tokens(token_ids),
        "maps": {},
    }
    examples.append(entry)
    return entry


def _layer_row(
    layer: int,
    n_model_layers: int,
    units: dict[str, Any],
    dictionaries: dict[str, tuple[np.ndarray, np.ndarray]],
    kept_threshold: float,
) -> dict[str, Any]:
    """One ``FEATURE_LAYER_COLUMNS`` row: how much of the PT dictionary the FT one keeps
    (alive features only), and the two units' selectivity (split-half, with its null and
    excess), selective, alive and special-token fractions."""
    pt, ft = unit_name("pt", layer), unit_name("ft", layer)
    (decoder_pt, alive_pt), (decoder_ft, alive_ft) = dictionaries[pt], dictionaries[ft]
    max_cos = F.dictionary_overlap(decoder_ft[alive_ft], decoder_pt[alive_pt])
    overlap = F.overlap_summary(max_cos, kept_threshold)
    return {
        "layer": layer,
        "depth": layer / n_model_layers,
        "mmcs": overlap["mmcs"],
        "kept_frac": overlap["kept_frac"],
        "selectivity_top_pt": units[pt]["selectivity_top"],
        "selectivity_top_ft": units[ft]["selectivity_top"],
        "selective_frac_pt": units[pt]["selective_frac"],
        "selective_frac_ft": units[ft]["selective_frac"],
        "alive_pt": units[pt]["alive_frac"],
        "alive_ft": units[ft]["alive_frac"],
        "selectivity_null_pt": units[pt]["selectivity_null"],
        "selectivity_null_ft": units[ft]["selectivity_null"],
        "selectivity_excess_pt": units[pt]["selectivity_excess"],
        "selectivity_excess_ft": units[ft]["selectivity_excess"],
        "special_frac_pt": units[pt]["special_frac"],
        "special_frac_ft": units[ft]["special_frac"],
    }


def feature_table(units: dict[str, Any], n_top: int = TABLE_FEATURES_PER_UNIT) -> list[dict]:
    """The paper's qualitative table, from data: per (layer, PT|FT) the top features by
    variance with their top tokens, dominant label and split-half selectivity with its
    permutation null and excess."""
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
                    "selectivity_null": round(feat["selectivity_null"], 3),
                    "selectivity_excess": round(feat["selectivity_excess"], 3),
                    "unit": name,
                }
            )
    return rows


def summary_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat ``L<layer>/<column>`` keys for DVC metrics and MLflow."""
    out: dict[str, float] = {}
    for row in result["layers"]:
        for key in FEATURE_LAYER_COLUMNS[2:]:
            out[f"L{row['layer']}/{key}"] = float(row[key])
    return out
