"""Everything the paper stage reads from the earlier stages, listed, checked and loaded.

:func:`required_inputs` lists every file with the DVC stage that makes it, so a missing file
fails before anything is drawn, naming what to run. :func:`load_inputs` reads them into
:class:`PaperInputs` (one :class:`RunSet` per (model, task), holding every seed), checking
columns and keys so a stale format fails with the file named rather than as a ``KeyError`` deep
inside a plot. The column and key sets come from :mod:`layerwise.schema`, which the writing
stages use too, so reader and writers cannot drift apart without a test noticing.

Besides the seed runs it reads the controls the claims are judged against: the shuffled-label
fine-tune (its similarity.csv, val accuracy and crosscoder), the FT-vs-FT seed floor, every seed's
layer-reset curves and the separate-SAE dictionary overlap beside its seed baseline
(sae_baseline.csv). Per-layer numbers are summarised over seeds as a :class:`Stat` (mean and a
Student t interval over seeds), because the seeds, not the texts, are what a rerun would change.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.config import Params
from layerwise.errors import MissingInputError, StaleInputError
from layerwise.paths import Paths
from layerwise.schema import (
    CROSSCODER_HIST_BINS,
    CROSSCODER_LAYER_COLUMNS,
    FEATURE_LAYER_COLUMNS,
    FINETUNE_CURVE_COLUMNS,
    FINETUNE_KEYS,
    RESET_COLUMNS,
    SAE_BASELINE_COLUMNS,
    SAE_METRIC_KEYS,
    SAE_SPLICE_KEYS,
    SEED_FLOOR_COLUMNS,
    SIMILARITY_COLUMNS,
    run_item,
    unit_name,
)
from layerwise.similarity.intervals import t_interval

logger = logging.getLogger(__name__)

SHUFFLED = "shuffled"
"""The shuffled-label control run (``layerwise.schema.CONTROLS``)."""
RESET_DIRECTIONS = ("bottom_up", "top_down")
"""The reset.csv directions: blocks 1..k, or the top k blocks."""

PER_SEED_FILES = (
    "sim",
    "sim_json",
    "ft",
    "curve",
    "sae",
    "features",
    "reset",
    "reset_json",
    "crosscoder",
)
"""What :func:`load_inputs` reads per (model, task, seed), in :class:`RunSet` field order."""


@dataclass(frozen=True)
class Input:
    """One file the paper stage reads, and the stage that makes it."""

    path: Path
    made_by: str


def required_inputs(params: Params, paths: Paths) -> list[Input]:
    """Every input file, in pipeline order, each with the DVC stage that writes it."""
    out = [Input(paths.prepare_metrics(t), f"prepare@{t}") for t in params.tasks]
    for m in params.models:
        for t in params.tasks:
            for s in params.seeds:
                item = run_item(m, t, s)
                out += _seed_inputs(paths, m, t, s)
                out += [
                    Input(paths.reset_csv(m, t, s), f"reset@{item}"),
                    Input(paths.reset_json(m, t, s), f"reset@{item}"),
                    Input(paths.crosscoder_csv(m, t, s), f"crosscoder@{item}"),
                    Input(paths.crosscoder_json(m, t, s), f"crosscoder@{item}"),
                ]
            out += _control_inputs(paths, m, t)
    for m in params.size_models:
        for t in params.tasks:
            out += _size_inputs(paths, m, t, params.size_seeds)
    return out


def _seed_inputs(paths: Paths, m: str, t: str, s: int, suffix: str = "") -> list[Input]:
    """The files every seed run writes in either protocol (finetune, compare, sae, features);
    ``suffix`` is ``_size`` for a size model's stages."""
    item = run_item(m, t, s)
    return [
        Input(paths.finetune_metrics(m, t, s), f"finetune{suffix}@{item}"),
        Input(paths.finetune_curve(m, t, s), f"finetune{suffix}@{item}"),
        Input(paths.similarity_csv(m, t, s), f"compare{suffix}@{item}"),
        Input(paths.similarity_json(m, t, s), f"compare{suffix}@{item}"),
        Input(paths.sae_metrics(m, t, s), f"sae{suffix}@{item}"),
        Input(paths.features_json(m, t, s), f"features{suffix}@{item}"),
    ]


def _size_inputs(paths: Paths, m: str, t: str, seeds: list[int]) -> list[Input]:
    """A size model's files (``size_models``): seed runs without reset or crosscoder, and the
    shuffled-label control's fine-tune and similarity, made by the ``*_size`` stages."""
    out = [i for s in seeds for i in _seed_inputs(paths, m, t, s, "_size")]
    out.append(Input(paths.finetune_metrics(m, t, SHUFFLED), f"finetune_shuffled_size@{m}-{t}"))
    out.append(Input(paths.similarity_csv(m, t, SHUFFLED), f"compare_shuffled_size@{m}-{t}"))
    return out


def _control_inputs(paths: Paths, m: str, t: str) -> list[Input]:
    """The per-(model, task) controls: shuffled-label fine-tune, compare and crosscoder, seed
    floor, and the SAE dictionary-overlap baseline."""
    item = f"{m}-{t}"
    return [
        Input(paths.finetune_metrics(m, t, SHUFFLED), f"finetune_shuffled@{item}"),
        Input(paths.similarity_csv(m, t, SHUFFLED), f"compare_shuffled@{item}"),
        Input(paths.crosscoder_csv(m, t, SHUFFLED), f"crosscoder_shuffled@{item}"),
        Input(paths.crosscoder_json(m, t, SHUFFLED), f"crosscoder_shuffled@{item}"),
        Input(paths.seed_floor_csv(m, t), f"seed_floor@{item}"),
        Input(paths.sae_baseline_csv(m, t), f"sae_baseline@{item}"),
    ]


def check_inputs(params: Params, paths: Paths, max_listed: int = 20) -> None:
    """Fail with one message listing the missing inputs and the stages that make them."""
    missing = [i for i in required_inputs(params, paths) if not i.path.is_file()]
    if not missing:
        return
    lines = [
        f"  {i.path} (made by {i.made_by}: run `dvc repro {i.made_by}`)"
        for i in missing[:max_listed]
    ]
    if len(missing) > max_listed:
        lines.append(f"  ... and {len(missing) - max_listed} more")
    raise MissingInputError(
        f"paper: {len(missing)} input file(s) missing, made by earlier stages "
        f"(first: {missing[0].made_by}):\n" + "\n".join(lines)
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StaleInputError(f"{path} is not valid JSON: {exc}") from exc


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_csv_columns(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    """A CSV as column -> float array (empty cells NaN); fails naming missing columns."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise StaleInputError(f"{path}: missing column(s) {missing}; has {header}")
        rows = list(reader)
    try:
        return {c: np.array([_float(r[c] or "") for r in rows], dtype=float) for c in header}
    except ValueError as exc:
        raise StaleInputError(f"{path}: non-numeric cell ({exc})") from exc


def _require_keys(data: dict[str, Any], keys: Iterable[str], path: Path, made_by: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise StaleInputError(
            f"{path}: missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"rerun {made_by} (`dvc repro {made_by}`)"
        )


@dataclass(frozen=True)
class Stat:
    """A number across seeds: mean, sample standard deviation and count, and the Student t
    interval of the mean over seeds (``lo``, ``hi``; NaN with one seed, where there is no
    spread to estimate). Non-finite values (a seed without the number) are left out."""

    mean: float
    std: float
    n: int
    lo: float = math.nan
    hi: float = math.nan

    @classmethod
    def of(cls, values: Iterable[float], confidence: float = 0.95) -> Stat:
        arr = np.asarray([float(v) for v in values], dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return cls(math.nan, math.nan, 0)
        std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
        mean, lo, hi = t_interval(arr, confidence)
        return cls(mean, std, int(arr.size), lo, hi)

    @property
    def excludes_zero_above(self) -> bool:
        """The seed interval lies above 0 (False with one seed: no interval, no evidence)."""
        return bool(self.lo > 0)

    def ci_text(self, digits: int = 3, scale: float = 1.0) -> str:
        """``0.912 [0.880, 0.944]`` (seed interval), ``0.912`` for one seed, ``n/a`` for none."""
        if not math.isfinite(self.mean):
            return "n/a"
        out = f"{self.mean * scale:.{digits}f}"
        if math.isfinite(self.lo):
            out += f" [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"
        return out

    def text(self, digits: int = 3, scale: float = 1.0, pm: str = " ± ") -> str:
        """``0.912`` for one seed, ``0.912 ± 0.010`` for several, ``n/a`` when no value."""
        if not math.isfinite(self.mean):
            return "n/a"
        out = f"{self.mean * scale:.{digits}f}"
        if self.n > 1 and math.isfinite(self.std):
            out += f"{pm}{self.std * scale:.{digits}f}"
        return out


FEATURE_TABLE_KEYS = ("layer", "model", "feature", "top_tokens", "selectivity", "selectivity_null")
"""Keys of a features.json ``table`` row the paper reads (``selectivity_excess`` is optional:
it is recomputed from the two when absent)."""
CROSSCODER_JSON_KEYS = ("hist", "top_ft_only")
"""Keys of crosscoder.json the paper reads (the per-layer numbers come from crosscoder.csv)."""


@dataclass(frozen=True)
class CrosscoderRun:
    """One run's crosscoders (a seed or the shuffled-label control), one per SAE layer."""

    columns: dict[str, np.ndarray]
    """crosscoder.csv (``schema.CROSSCODER_LAYER_COLUMNS``), rows by ascending SAE layer."""
    hist: dict[int, np.ndarray]
    """SAE layer -> counts of alive latents per relative-decoder-norm bin on [0, 1]."""
    top_ft_only: dict[int, list[dict[str, Any]]]
    """SAE layer -> the crosscoder stage's top FT-only latents (possibly none)."""

    def norm_spread(self, layer: int) -> float:
        """Standard deviation of the relative decoder norm over alive latents, from the
        histogram (bin centres): how far the latents move from 'used alike' (0.5) towards one
        model, whether or not any crosses the PT-only / FT-only thresholds (NaN: none alive)."""
        counts = self.hist[layer]
        if counts.sum() <= 0:
            return math.nan
        centres = (np.arange(counts.size) + 0.5) / counts.size
        mean = float(np.average(centres, weights=counts))
        return float(np.sqrt(np.average((centres - mean) ** 2, weights=counts)))

    def value(self, column: str, layer: int) -> float:
        """One crosscoder.csv cell (NaN for an empty class, as the stage writes it)."""
        idx = np.flatnonzero(self.columns["layer"].astype(int) == layer)
        return float(self.columns[column][idx[0]])


@dataclass
class RunSet:
    """One (model, task) across all seeds: the per-seed inputs, plus seed means on demand."""

    model: str
    task: str
    seeds: list[int]
    sae_layers: list[int]
    similarity: list[dict[str, np.ndarray]]
    similarity_summary: list[dict[str, Any]]
    finetune: list[dict[str, Any]]
    curves: list[dict[str, np.ndarray]]
    sae: list[dict[str, Any]]
    features: list[dict[str, Any]]
    reset: list[dict[str, dict[str, np.ndarray]]]
    """Per seed: direction (``bottom_up`` / ``top_down``) -> reset.csv columns, by ascending k."""
    reset_summary: list[dict[str, Any]]
    """Per seed: reset.json (FT and majority accuracy, each direction's midpoint)."""
    shuffled_similarity: dict[str, np.ndarray]
    """similarity.csv of the shuffled-label control (PT vs FT-shuffled; one run)."""
    shuffled_finetune: dict[str, Any]
    """The shuffled-label fine-tune's metrics (its val accuracy must sit at chance)."""
    seed_floor: dict[str, np.ndarray]
    """seed_floor.csv: FT-vs-FT similarity over seed pairs per layer (NaN with one seed)."""
    crosscoder: list[CrosscoderRun] = field(default_factory=list)
    """Per seed: the PT/FT crosscoders (model diffing)."""
    shuffled_crosscoder: CrosscoderRun | None = None
    """The crosscoders of PT vs the shuffled-label fine-tune (the control, one run)."""
    sae_baseline: dict[str, np.ndarray] = field(default_factory=dict)
    """sae_baseline.csv: separate-SAE overlap per (SAE layer, seed) beside its seed baseline."""

    @property
    def layers(self) -> np.ndarray:
        return self.similarity[0]["layer"].astype(int)

    @property
    def n_layers(self) -> int:
        """L: the model's transformer layers (layers run 0..L)."""
        return int(self.layers.max())

    @property
    def depth(self) -> np.ndarray:
        return self.layers / max(self.n_layers, 1)

    @property
    def confidence(self) -> float:
        return float(self.similarity_summary[0].get("confidence", 0.95))

    def sim(self, column: str) -> np.ndarray:
        """``[n_seeds, n_layers]`` values of one similarity.csv column."""
        return np.stack([s[column] for s in self.similarity])

    def sim_mean(self, column: str) -> np.ndarray:
        return self.sim(column).mean(axis=0)

    def sim_stat(self, column: str, layer_index: int) -> Stat:
        """One similarity.csv cell across seeds, with its seed interval."""
        return Stat.of(self.sim(column)[:, layer_index], self.confidence)

    def seed_band(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per column of ``[n_seeds, n]`` values: seed mean and t interval (NaN bounds with one
        seed), for curves drawn with a seed-level band."""
        stats = [Stat.of(values[:, i], self.confidence) for i in range(values.shape[1])]
        return tuple(np.array([getattr(s, k) for s in stats]) for k in ("mean", "lo", "hi"))

    def reset_values(self, direction: str, column: str) -> np.ndarray:
        """``[n_seeds, L + 1]`` values of one reset.csv column for k = 0..L in ``direction``."""
        return np.stack([r[direction][column] for r in self.reset])

    def reset_stat(self, key: str) -> Stat:
        """One reset.json number (e.g. ``top_down/midpoint_depth``) across seeds."""
        return Stat.of((r.get(key, math.nan) for r in self.reset_summary), self.confidence)

    def feature_rows(self, seed_index: int) -> dict[int, dict[str, float]]:
        return {int(r["layer"]): r for r in self.features[seed_index]["layers"]}

    def feature_stat(self, column: str, layer: int) -> Stat:
        values = (self.feature_rows(i)[layer][column] for i in range(len(self.seeds)))
        return Stat.of(values, self.confidence)

    def feature_values(self, column: str, layer: int) -> np.ndarray:
        """``[n_seeds]`` values of one features.csv cell."""
        return np.array(
            [float(self.feature_rows(i)[layer][column]) for i in range(len(self.seeds))]
        )

    def crosscoder_values(self, column: str, layer: int) -> np.ndarray:
        """``[n_seeds]`` values of one crosscoder.csv cell."""
        return np.array([run.value(column, layer) for run in self.crosscoder])

    def crosscoder_stat(self, column: str, layer: int) -> Stat:
        return Stat.of(self.crosscoder_values(column, layer), self.confidence)

    def shuffled_crosscoder_value(self, column: str, layer: int) -> float:
        """One crosscoder.csv cell of the shuffled-label control (NaN when not loaded)."""
        run = self.shuffled_crosscoder
        return run.value(column, layer) if run is not None else math.nan

    def baseline_values(self, column: str, layer: int) -> np.ndarray:
        """``[n_seeds]`` values of one sae_baseline.csv column at ``layer``, in seed order."""
        b = self.sae_baseline
        out = []
        for s in self.seeds:
            hit = np.flatnonzero((b["layer"].astype(int) == layer) & (b["seed"] == s))
            out.append(float(b[column][hit[0]]) if hit.size else math.nan)
        return np.array(out)

    def baseline_stat(self, column: str, layer: int) -> Stat:
        return Stat.of(self.baseline_values(column, layer), self.confidence)

    def finetune_stat(self, key: str) -> Stat:
        return Stat.of((m.get(key, math.nan) for m in self.finetune), self.confidence)

    def sae_stat(self, key: str) -> Stat:
        return Stat.of((m.get(key, math.nan) for m in self.sae), self.confidence)


@dataclass
class PaperInputs:
    """Everything the paper stage reads, loaded and checked."""

    params: Params
    prepare: dict[str, dict[str, Any]]
    runs: dict[tuple[str, str], RunSet] = field(default_factory=dict)
    """(model, task) -> every seed and control of a ``models`` entry (the full protocol)."""
    size_runs: dict[tuple[str, str], RunSet] = field(default_factory=dict)
    """(model, task) -> a ``size_models`` entry: its seeds and the shuffled-label control only
    (no reset, seed floor, crosscoder or SAE seed baseline: those fields are empty)."""

    @property
    def models(self) -> list[str]:
        """The full-protocol models (``models``)."""
        return list(self.params.models)

    @property
    def size_models(self) -> list[str]:
        """The models of the model-size comparison only (``size_models``)."""
        return list(self.params.size_models)

    @property
    def all_models(self) -> list[str]:
        """Every model, full protocol first: what the model-size figure and table show."""
        return self.models + self.size_models

    def any_run(self, model: str, task: str) -> RunSet:
        """A (model, task) of either protocol."""
        return self.runs.get((model, task)) or self.size_runs[(model, task)]

    @property
    def tasks(self) -> list[str]:
        return list(self.params.tasks)

    @property
    def seeds(self) -> list[int]:
        return list(self.params.seeds)

    @property
    def n_seeds(self) -> int:
        return len(self.params.seeds)

    def run(self, model: str, task: str) -> RunSet:
        return self.runs[(model, task)]

    def majority_analysis(self, task: str) -> float:
        """Majority-class accuracy on the analysis split (the probes' data), from prepare."""
        meta = self.prepare[task]
        rows = meta.get("analysis/rows")
        counts = [v for k, v in meta.items() if k.startswith("analysis/label/")]
        if rows and counts:
            return float(max(counts)) / float(rows)
        return math.nan


def _check_features(data: Any, path: Path, sae_layers: list[int], made_by: str) -> None:
    if not isinstance(data, dict):
        raise StaleInputError(f"{path}: expected a JSON object")
    _require_keys(data, ("units", "layers", "examples", "table"), path, made_by)
    units = [unit_name(w, k) for k in sae_layers for w in ("pt", "ft")]
    _require_keys(data["units"], units, path, made_by)
    layers = {int(r["layer"]) for r in data["layers"]}
    missing = [k for k in sae_layers if k not in layers]
    if missing:
        raise StaleInputError(
            f"{path}: no 'layers' row for SAE layer(s) {missing}; rerun {made_by}"
        )
    for row in data["layers"]:
        _require_keys(row, FEATURE_LAYER_COLUMNS, path, made_by)
    for row in data["table"]:
        _require_keys(row, FEATURE_TABLE_KEYS, path, made_by)


def _read_crosscoder(
    csv_path: Path, json_path: Path, sae_layers: list[int], made_by: str
) -> CrosscoderRun:
    """crosscoder.csv and .json of one run: a row, a histogram per SAE layer."""
    cols = read_csv_columns(csv_path, CROSSCODER_LAYER_COLUMNS)
    if sorted(cols["layer"].astype(int).tolist()) != sae_layers:
        raise StaleInputError(
            f"{csv_path}: layers {cols['layer'].astype(int).tolist()} are not the SAE layers "
            f"{sae_layers}; rerun {made_by} (`dvc repro {made_by}`)"
        )
    order = np.argsort(cols["layer"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    data = _read_json(json_path)
    if not isinstance(data, dict):
        raise StaleInputError(f"{json_path}: expected a JSON object")
    _require_keys(data, CROSSCODER_JSON_KEYS, json_path, made_by)
    _require_keys(data["hist"], [str(k) for k in sae_layers], json_path, made_by)
    hist = {k: np.asarray(data["hist"][str(k)], dtype=float) for k in sae_layers}
    bad = [k for k, h in hist.items() if h.shape != (CROSSCODER_HIST_BINS,)]
    if bad:
        raise StaleInputError(
            f"{json_path}: 'hist' of layer(s) {bad} must hold {CROSSCODER_HIST_BINS} counts; "
            f"rerun {made_by}"
        )
    top = {k: list(data["top_ft_only"].get(str(k), [])) for k in sae_layers}
    return CrosscoderRun(cols, hist, top)


def _read_sae_baseline(
    path: Path, sae_layers: list[int], seeds: list[int], made_by: str
) -> dict[str, np.ndarray]:
    """sae_baseline.csv, which must hold one row per (SAE layer, seed)."""
    cols = read_csv_columns(path, SAE_BASELINE_COLUMNS)
    have = set(zip(cols["layer"].astype(int).tolist(), cols["seed"].tolist(), strict=True))
    missing = [(k, s) for k in sae_layers for s in seeds if (k, s) not in have]
    if missing:
        raise StaleInputError(
            f"{path}: no row for (layer, seed) {missing[:4]}; rerun {made_by} "
            f"(`dvc repro {made_by}`)"
        )
    return cols


def _read_similarity(path: Path, model: str, sae_layers: list[int]) -> dict[str, np.ndarray]:
    """similarity.csv, which must cover layers 0..L including every SAE layer."""
    sim = read_csv_columns(path, SIMILARITY_COLUMNS)
    if sim["layer"].size < 2:
        raise StaleInputError(f"{path}: needs layers 0..L")
    missing_layers = [k for k in sae_layers if k not in set(sim["layer"].astype(int))]
    if missing_layers:
        raise StaleInputError(
            f"{path}: SAE layer(s) {missing_layers} of models.{model}.layers are not among its "
            "layers"
        )
    return sim


def _read_reset(path: Path, made_by: str) -> dict[str, dict[str, np.ndarray]]:
    """reset.csv as direction -> numeric columns sorted by k; each direction must run k = 0..L
    (the ``direction`` and ``blocks`` columns are text, so :func:`read_csv_columns` cannot)."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in RESET_COLUMNS if c not in (reader.fieldnames or [])]
        rows = list(reader)
    if missing:
        raise StaleInputError(f"{path}: missing column(s) {missing}; rerun {made_by}")
    numeric = [c for c in RESET_COLUMNS if c not in ("direction", "blocks")]
    out: dict[str, dict[str, np.ndarray]] = {}
    for direction in RESET_DIRECTIONS:
        picked = sorted((r for r in rows if r["direction"] == direction), key=lambda r: int(r["k"]))
        if not picked or [int(r["k"]) for r in picked] != list(range(len(picked))):
            raise StaleInputError(f"{path}: {direction} rows must run k = 0..L; rerun {made_by}")
        try:
            out[direction] = {c: np.array([_float(r[c]) for r in picked]) for c in numeric}
        except ValueError as exc:
            raise StaleInputError(f"{path}: non-numeric cell ({exc}); rerun {made_by}") from exc
    return out


def _read_sae(
    paths: Paths, m: str, t: str, s: int, sae_layers: list[int], made_by: str
) -> dict[str, Any]:
    """sae metrics of one run, which must hold every unit's quality and splice keys."""
    sae = _read_json(paths.sae_metrics(m, t, s))
    sae_keys = [
        f"{unit_name(w, k)}/{x}" for w in ("pt", "ft") for k in sae_layers for x in SAE_METRIC_KEYS
    ] + [f"{unit_name('ft', k)}/{x}" for k in sae_layers for x in SAE_SPLICE_KEYS]
    _require_keys(sae, sae_keys, paths.sae_metrics(m, t, s), made_by)
    return sae


def _load_seed(paths: Paths, m: str, t: str, s: int, sae_layers: list[int]) -> dict[str, Any]:
    """One (model, task, seed)'s files, keyed as :data:`PER_SEED_FILES`, each checked."""
    item = run_item(m, t, s)
    return {
        **_load_seed_run(paths, m, t, s, sae_layers),
        "reset": _read_reset(paths.reset_csv(m, t, s), f"reset@{item}"),
        "reset_json": _read_json(paths.reset_json(m, t, s)),
        "crosscoder": _read_crosscoder(
            paths.crosscoder_csv(m, t, s),
            paths.crosscoder_json(m, t, s),
            sae_layers,
            f"crosscoder@{item}",
        ),
    }


def _load_controls(
    paths: Paths, m: str, t: str, sae_layers: list[int], layers: np.ndarray, seeds: list[int]
) -> dict[str, Any]:
    """The shuffled-label control, the seed floor and the SAE overlap baseline, on the seed
    runs' layers."""
    item = f"{m}-{t}"
    shuffled = _read_similarity(paths.similarity_csv(m, t, SHUFFLED), m, sae_layers)
    floor = read_csv_columns(paths.seed_floor_csv(m, t), SEED_FLOOR_COLUMNS)
    for what, cols, made_by in (
        ("similarity.csv", shuffled, f"compare_shuffled@{item}"),
        ("seed_floor.csv", floor, f"seed_floor@{item}"),
    ):
        if tuple(cols["layer"].astype(int)) != tuple(layers):
            raise StaleInputError(
                f"{m}/{t}: the control's {what} has other layers than the seed runs; "
                f"rerun {made_by} (`dvc repro {made_by}`)"
            )
    ft_path = paths.finetune_metrics(m, t, SHUFFLED)
    shuffled_ft = _read_json(ft_path)
    _require_keys(shuffled_ft, FINETUNE_KEYS, ft_path, f"finetune_shuffled@{item}")
    shuffled_cc = _read_crosscoder(
        paths.crosscoder_csv(m, t, SHUFFLED),
        paths.crosscoder_json(m, t, SHUFFLED),
        sae_layers,
        f"crosscoder_shuffled@{item}",
    )
    baseline = _read_sae_baseline(
        paths.sae_baseline_csv(m, t), sae_layers, seeds, f"sae_baseline@{item}"
    )
    return {
        "shuffled_similarity": shuffled,
        "shuffled_finetune": shuffled_ft,
        "seed_floor": floor,
        "shuffled_crosscoder": shuffled_cc,
        "sae_baseline": baseline,
    }


def _load_run_set(params: Params, paths: Paths, m: str, t: str) -> RunSet:
    """Every seed of one (model, task); the seeds must agree on the similarity layers."""
    sae_layers = sorted(params.models[m].layers)
    per_seed = [_load_seed(paths, m, t, s, sae_layers) for s in params.seeds]
    if len({tuple(seed["sim"]["layer"].astype(int)) for seed in per_seed}) > 1:
        raise StaleInputError(f"{m}/{t}: seeds disagree on the layers in similarity.csv")
    files = {k: [seed[k] for seed in per_seed] for k in PER_SEED_FILES}
    return RunSet(
        model=m,
        task=t,
        seeds=list(params.seeds),
        sae_layers=sae_layers,
        similarity=files["sim"],
        similarity_summary=files["sim_json"],
        finetune=files["ft"],
        curves=files["curve"],
        sae=files["sae"],
        features=files["features"],
        reset=files["reset"],
        reset_summary=files["reset_json"],
        crosscoder=files["crosscoder"],
        **_load_controls(
            paths, m, t, sae_layers, per_seed[0]["sim"]["layer"].astype(int), list(params.seeds)
        ),
    )


def _load_size_run_set(params: Params, paths: Paths, m: str, t: str) -> RunSet:
    """A size model's seeds and its shuffled-label control (similarity and fine-tune)."""
    sae_layers = sorted(params.size_models[m].layers)
    seeds = list(params.size_seeds)
    per_seed = [_load_seed_run(paths, m, t, s, sae_layers, "_size") for s in seeds]
    layers = per_seed[0]["sim"]["layer"].astype(int)
    if any(tuple(seed["sim"]["layer"].astype(int)) != tuple(layers) for seed in per_seed):
        raise StaleInputError(f"{m}/{t}: seeds disagree on the layers in similarity.csv")
    shuffled = _read_similarity(paths.similarity_csv(m, t, SHUFFLED), m, sae_layers)
    if tuple(shuffled["layer"].astype(int)) != tuple(layers):
        raise StaleInputError(
            f"{m}/{t}: the shuffled control's similarity.csv has other layers than the seed "
            f"runs; rerun compare_shuffled_size@{m}-{t}"
        )
    ft_path = paths.finetune_metrics(m, t, SHUFFLED)
    shuffled_ft = _read_json(ft_path)
    _require_keys(shuffled_ft, FINETUNE_KEYS, ft_path, f"finetune_shuffled_size@{m}-{t}")
    nan = np.full(layers.size, math.nan)
    return RunSet(
        model=m,
        task=t,
        seeds=seeds,
        sae_layers=sae_layers,
        similarity=[x["sim"] for x in per_seed],
        similarity_summary=[x["sim_json"] for x in per_seed],
        finetune=[x["ft"] for x in per_seed],
        curves=[x["curve"] for x in per_seed],
        sae=[x["sae"] for x in per_seed],
        features=[x["features"] for x in per_seed],
        reset=[],
        reset_summary=[],
        shuffled_similarity=shuffled,
        shuffled_finetune=shuffled_ft,
        seed_floor={
            **{c: nan for c in SEED_FLOOR_COLUMNS},
            "layer": layers.astype(float),
            "depth": layers / max(int(layers.max()), 1),
        },
    )


def _load_seed_run(
    paths: Paths, m: str, t: str, s: int, sae_layers: list[int], suffix: str = ""
) -> dict[str, Any]:
    """The files of :func:`_seed_inputs`, each checked (``suffix``: ``_size`` names the size
    stages in errors): what :func:`_load_seed` reads beyond them is the full protocol's."""
    item = run_item(m, t, s)
    ft = _read_json(paths.finetune_metrics(m, t, s))
    _require_keys(ft, FINETUNE_KEYS, paths.finetune_metrics(m, t, s), f"finetune{suffix}@{item}")
    feats = _read_json(paths.features_json(m, t, s))
    _check_features(feats, paths.features_json(m, t, s), sae_layers, f"features{suffix}@{item}")
    return {
        "sim": _read_similarity(paths.similarity_csv(m, t, s), m, sae_layers),
        "sim_json": _read_json(paths.similarity_json(m, t, s)),
        "ft": ft,
        "curve": read_csv_columns(paths.finetune_curve(m, t, s), FINETUNE_CURVE_COLUMNS),
        "sae": _read_sae(paths, m, t, s, sae_layers, f"sae{suffix}@{item}"),
        "features": feats,
    }


def load_inputs(params: Params, paths: Paths) -> PaperInputs:
    """Read every input (after :func:`check_inputs`), checking formats file by file."""
    check_inputs(params, paths)
    inputs = PaperInputs(
        params=params, prepare={t: _read_json(paths.prepare_metrics(t)) for t in params.tasks}
    )
    for m in params.models:
        for t in params.tasks:
            inputs.runs[(m, t)] = _load_run_set(params, paths, m, t)
    for m in params.size_models:
        for t in params.tasks:
            inputs.size_runs[(m, t)] = _load_size_run_set(params, paths, m, t)
    logger.info(
        "loaded %d run set(s): %d model(s) x %d task(s) x %d seed(s)",
        len(inputs.runs),
        len(params.models),
        len(params.tasks),
        len(params.seeds),
    )
    return inputs
