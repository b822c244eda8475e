"""The paper's tables: one data model (:class:`Table` of :class:`Column` s), three writers.

Each table is written as CSV (machine-readable: means, ``_std`` columns when there are several
seeds, CI bounds as their own columns), Markdown and LaTeX (booktabs; ``mean ± std`` cells), so
the numbers a reader sees and the numbers a script reads come from the same rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from layerwise.config import SAEParams
from layerwise.paper.claims import ClaimResult, reset_k
from layerwise.paper.inputs import PaperInputs, RunSet, Stat
from layerwise.paper.reference import (
    PAPER_DATASET_FOR_TASK,
    PAPER_MODEL,
    PAPER_REPORTED_ACCURACY,
    paper_reference_cosine,
)
from layerwise.schema import SAE_METRIC_KEYS, unit_name

# --------------------------------------------------------------------------------------------
# Tables: one data model, three writers
# --------------------------------------------------------------------------------------------

Cell = str | int | float | Stat | None
DASH = "—"


@dataclass(frozen=True)
class Column:
    """How one column is written. ``scale`` applies to Markdown/LaTeX only (CSV keeps the raw
    value, e.g. accuracies as fractions); ``ci`` cells also have ``<key>_lo``/``<key>_hi``
    (a within-seed interval, e.g. the text bootstrap); ``seed_ci`` cells show their
    :class:`Stat`'s t interval over seeds (CSV: ``<key>_seed_lo``/``<key>_seed_hi``)."""

    key: str
    header: str
    digits: int = 3
    scale: float = 1.0
    ci: bool = False
    align: Literal["l", "r"] = "r"
    seed_ci: bool = False


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
            if col.seed_ci:
                header += [f"{col.key}_seed_lo", f"{col.key}_seed_hi"]
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
                if col.seed_ci:
                    seed = value if isinstance(value, Stat) else Stat.of([])
                    cells += [_csv_value(seed.lo), _csv_value(seed.hi)]
                if col.ci:
                    cells += [
                        _csv_value(row.get(f"{col.key}_lo")),
                        _csv_value(row.get(f"{col.key}_hi")),
                    ]
            out.append(cells)
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header())
        writer.writerows(self.csv_rows())
        return buf.getvalue()

    # Markdown / LaTeX ----------------------------------------------------------------------
    def display(self, row: dict[str, Cell], col: Column, latex: bool) -> str:
        pm = r" $\pm$ " if latex else " ± "
        value = row.get(col.key)
        if col.seed_ci and isinstance(value, Stat):
            text = value.ci_text(col.digits, col.scale)
        else:
            text = _display(value, col, pm)
        if latex and not isinstance(value, Stat | float | int):
            text = latex_escape(text)
        if col.ci and text not in ("n/a", DASH, "--"):
            lo = _display(row.get(f"{col.key}_lo"), col, pm, with_std=False)
            hi = _display(row.get(f"{col.key}_hi"), col, pm, with_std=False)
            text += f"; text [{lo}, {hi}]" if col.seed_ci else f" [{lo}, {hi}]"
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


LAYER_KEY_COLUMNS = (
    Column("model", "model", align="l"),
    Column("task", "task", align="l"),
    Column("layer", "layer"),
    Column("depth", "depth (layer/L)", digits=2),
)
"""The leading columns of every per-(model, task, layer) table."""


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
    """How to read a table's numbers: seeds, and which spread a cell shows."""
    size = (
        f" Models of size_models ({', '.join(inputs.size_models)}) ran seed(s) "
        f"{inputs.params.size_seeds} on a sample of each task."
        if inputs.size_models
        else ""
    )
    if inputs.n_seeds > 1:
        return (
            f" Numbers are means across {inputs.n_seeds} seeds {inputs.seeds}: ± std, or "
            f"[{round(100 * _confidence(inputs))}% t interval over seeds] in reset and "
            "[seed CI] columns." + size
        )
    return f" One seed ({inputs.seeds[0]}): no seed interval." + size


def _confidence(inputs: PaperInputs) -> float:
    return inputs.run(inputs.models[0], inputs.tasks[0]).confidence


def _data_used(inputs: PaperInputs, model: str, task: str) -> str:
    """The task's description, and the sample a model with text caps used of it."""
    text = inputs.params.task(task).description or task
    d = inputs.params.model(model)
    caps = (d.max_train, d.max_val, d.max_analysis)
    if any(c is not None for c in caps):
        rows = inputs.prepare[task]
        used = [
            min(c, int(rows.get(f"{split}/rows", c)))
            if c is not None
            else rows.get(f"{split}/rows")
            for c, split in zip(caps, ("train", "val", "analysis"), strict=True)
        ]
        text += f" (sample: {used[0]} train / {used[1]} val / {used[2]} analysis texts)"
    return text


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
        Column("shuffled_acc", "shuffled-label FT acc (%)", **pct),
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
    for m in inputs.all_models:
        for t in inputs.tasks:
            rs = inputs.any_run(m, t)
            paper = PAPER_DATASET_FOR_TASK.get(t)
            reported = PAPER_REPORTED_ACCURACY.get(paper or "", {})
            within = rs.finetune_stat("ft/within_one_accuracy")
            rows.append(
                {
                    "model": m,
                    "task": t,
                    "data": _data_used(inputs, m, t),
                    "paper_dataset": paper,
                    "majority": rs.finetune_stat("data/majority_accuracy"),
                    "shuffled_acc": Stat.of([rs.shuffled_finetune["ft/accuracy"]]),
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
        "(FT), and the shuffled-label control (same texts and hyperparameters, train labels "
        "permuted: it must sit at the majority class beside it), beside the paper's reported "
        f"accuracy ({PAPER_MODEL}) on the dataset each of our "
        "tasks stands for. Our data are substitutes, so the paper columns are a reference, not "
        "a target." + _seed_note(inputs)
    )
    return Table("finetune_accuracy", caption, columns, rows)


def _similarity_row(rs: RunSet, i: int, ref: float | None) -> dict[str, Cell]:
    """One layer: PT-FT metrics (seed stats, text CIs), the controls and the probe difference."""
    row: dict[str, Cell] = {
        "model": rs.model,
        "task": rs.task,
        "layer": int(rs.layers[i]),
        "depth": float(rs.depth[i]),
        "paper_cosine": None if ref is None else round(ref, 4),
    }
    for metric in ("cosine", "cka", "probe_diff"):
        row[metric] = rs.sim_stat(metric, i)
        row[f"{metric}_lo"] = float(rs.sim(f"{metric}_lo")[:, i].mean())
        row[f"{metric}_hi"] = float(rs.sim(f"{metric}_hi")[:, i].mean())
    for metric in ("cosine", "cka"):
        row[f"floor_{metric}"] = float(rs.seed_floor[f"{metric}_mean"][i])
        row[f"floor_{metric}_lo"] = float(rs.seed_floor[f"{metric}_min"][i])
        row[f"floor_{metric}_hi"] = float(rs.seed_floor[f"{metric}_max"][i])
        row[f"shuffled_{metric}"] = float(rs.shuffled_similarity[metric][i])
    return row


def layer_similarity_table(inputs: PaperInputs) -> Table:
    """Per layer: PT-FT cosine and CKA (seed mean, seed t interval, text CI) beside the seed
    floor and the shuffled-label control, the paired probe difference, and the paper's
    bert-base cosine on the task's dataset at the same relative depth."""
    pp = {"digits": 1, "scale": 100.0, "ci": True, "seed_ci": True}
    columns = [
        *LAYER_KEY_COLUMNS,
        Column("cosine", "PT-FT cosine [seed CI]; text CI", ci=True, seed_ci=True),
        Column("floor_cosine", "FT-FT cosine, mean [min, max] over seed pairs", ci=True),
        Column("shuffled_cosine", "PT-FT-shuffled cosine"),
        Column("cka", "PT-FT CKA [seed CI]; text CI", ci=True, seed_ci=True),
        Column("floor_cka", "FT-FT CKA, mean [min, max]", ci=True),
        Column("shuffled_cka", "PT-FT-shuffled CKA"),
        Column("probe_diff", "probe FT-PT (pp) [seed CI]; paired text CI", **pp),
        Column("paper_cosine", f"paper cosine ({PAPER_MODEL}, the task's dataset)"),
    ]
    rows = []
    for m in inputs.all_models:
        for t in inputs.tasks:
            rs = inputs.any_run(m, t)
            ref = paper_reference_cosine(rs.depth, t)
            rows += [
                _similarity_row(rs, i, None if ref is None else float(ref[i]))
                for i in range(rs.layers.size)
            ]
    level = round(100 * inputs.run(inputs.models[0], inputs.tasks[0]).confidence)
    caption = (
        f"Similarity per layer (0 = embeddings). PT-FT: seed mean with the {level}% t interval "
        "over seeds (none with one seed), then the mean of the per-seed text CIs (cosine: "
        "bootstrap over texts; CKA: block jackknife). Controls: FT-FT similarity between "
        "fine-tunes of different seeds (mean, [min, max] over pairs; n/a with one seed) and PT "
        "vs the shuffled-label fine-tune. Probe FT-PT: paired difference of probe accuracy in "
        "percentage points with its paired bootstrap CI. The last column is the paper's "
        f"reported cosine for {PAPER_MODEL} on the dataset the task stands for (sentiment: IMDB, "
        "rating: Spotify reviews, topic: news; n/a for a task the paper did not run), linearly "
        "interpolated at the same relative depth (layer/L vs k/12)." + _seed_note(inputs)
    )
    return Table("layer_similarity", caption, columns, rows)


def _reset_row(rs: RunSet, direction: str) -> dict[str, Cell]:
    """One reset direction of one (model, task): FT accuracy, midpoint, what k blocks cost."""
    k = reset_k(rs.sae_layers, rs.n_layers)
    midpoint = rs.reset_stat(f"{direction}/midpoint")
    return {
        "model": rs.model,
        "task": rs.task,
        "direction": direction,
        "ft_acc": rs.reset_stat("ft/accuracy"),
        "majority": rs.reset_stat("data/majority_accuracy"),
        "midpoint": midpoint,
        "midpoint_depth": rs.reset_stat(f"{direction}/midpoint_depth"),
        "n_midpoints": f"{midpoint.n}/{len(rs.seeds)}",
        "k": k,
        "lost_k": Stat.of(rs.reset_values(direction, "lost_gain")[:, k], rs.confidence),
        "acc_all": Stat.of(rs.reset_values(direction, "accuracy")[:, -1], rs.confidence),
    }


def reset_table(inputs: PaperInputs) -> Table:
    """Per (model, task, direction): where resetting blocks to PT loses half the gain."""
    pct = {"digits": 1, "scale": 100.0, "seed_ci": True}
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("direction", "direction", align="l"),
        Column("ft_acc", "FT acc (%)", **pct),
        Column("majority", "majority (%)", **pct),
        Column("midpoint", "midpoint k [seed CI]", digits=2, seed_ci=True),
        Column("midpoint_depth", "midpoint k/L [seed CI]", digits=2, seed_ci=True),
        Column("n_midpoints", "seeds with a midpoint", align="l"),
        Column("k", "k (early SAE layer)"),
        Column("lost_k", "gain lost at k (%)", **pct),
        Column("acc_all", "acc, all blocks reset (%)", **pct),
    ]
    rows = [
        _reset_row(inputs.run(m, t), d)
        for m in inputs.models
        for t in inputs.tasks
        for d in ("bottom_up", "top_down")
    ]
    caption = (
        "Layer reset: the fine-tuned classifier's val accuracy with encoder blocks reset to "
        "their pre-trained weights, bottom-up (blocks 1..k) or top-down (the top k blocks). "
        "Midpoint: the smallest k that loses half of fine-tuning's gain over the majority "
        "class (seeds without one are left out of its mean). Gain lost at k: k = the early "
        "SAE layer, the comparison C1 makes." + _seed_note(inputs)
    )
    return Table("layer_reset", caption, columns, rows)


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
        Column("l1_coefficient", "L1 coef.", digits=2),
        Column("dead_frac", "dead (%)", **pct),
        Column("dense_frac", "dense (%)", **pct),
        Column("cos_sim", "cos sim"),
        Column("spliced_acc", "spliced acc (%)", **pct),
        Column("clean_acc", "clean acc (%)", **pct),
        Column(
            "recovered_acc", "recovered acc (%) [seed CI]; text CI", **pct, seed_ci=True, ci=True
        ),
    ]
    rows = []
    for m in inputs.all_models:
        for t in inputs.tasks:
            rs = inputs.any_run(m, t)
            for layer in rs.sae_layers:
                for which in ("pt", "ft"):
                    unit = unit_name(which, layer)
                    row: dict[str, Cell] = {
                        "model": m,
                        "task": t,
                        "layer": layer,
                        "which": which.upper(),
                    }
                    for key in (*SAE_METRIC_KEYS, "l1_coefficient"):
                        row[key] = rs.sae_stat(f"{unit}/{key}")
                    spliced = rs.sae_stat(f"{unit}/ft_accuracy_spliced")
                    clean = rs.sae_stat("ft/accuracy_clean")
                    row["spliced_acc"] = spliced if which == "ft" and spliced.n else None
                    row["clean_acc"] = clean if which == "ft" and clean.n else None
                    if which == "ft":
                        row.update(_recovered(rs, unit))
                    rows.append(row)
    caption = (
        "SAE quality on the analysis split: MSE, explained variance (summed over the set), FVU "
        "= 1 - explained variance, L0 (mean active features per token), the L1 coefficient the "
        "SAE ended at (tuned per SAE to one L0 when sae.l0_target is set, so PT and FT are "
        "compared at matched sparsity; blank for TopK), dead and dense feature "
        "fractions, cosine(x, x_hat); for FT SAEs also the fine-tuned classifier's validation "
        "accuracy with the layer replaced by its SAE reconstruction (spliced) vs unchanged "
        "(clean), and the share of accuracy splicing recovers relative to mean-ablating the "
        "layer, (spliced - ablated) / (clean - ablated), with its seed interval and the mean "
        "of the per-seed paired bootstrap CIs over val texts." + _seed_note(inputs)
    )
    return Table("sae_metrics", caption, columns, rows)


def _recovered(rs: RunSet, unit: str) -> dict[str, Cell]:
    """Recovered accuracy of one FT unit: seed stat, and the mean per-seed text CI bounds."""
    key = f"{unit}/ft_recovered_accuracy"
    bounds = {
        f"recovered_acc_{b}": _nanmean([m.get(f"{key}_{b}", math.nan) for m in rs.sae])
        for b in ("lo", "hi")
    }
    return {"recovered_acc": rs.sae_stat(key), **bounds}


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
        Column("selectivity_null", "permutation null"),
        Column("selectivity_excess", "excess over null"),
    ]
    rows = []
    for m in inputs.all_models:
        for t in inputs.tasks:
            rs = inputs.any_run(m, t)
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
                        "selectivity_null": float(r["selectivity_null"]),
                        "selectivity_excess": float(
                            r.get("selectivity_excess", r["selectivity"] - r["selectivity_null"])
                        ),
                    }
                )
    caption = (
        "Top-variance SAE features per layer, pre-trained (PT) vs fine-tuned (FT): the tokens "
        "they fire on most, the majority label of their top-activating texts and their label "
        "selectivity (best one-vs-rest ROC AUC on the half of the analysis texts they were not "
        "selected on), beside its label-permutation null (the best of several classes sits "
        "above 0.5 by chance) and the excess over that null."
        + (
            f" Feature ids are specific to one SAE, so only seed {inputs.seeds[0]} is listed."
            if inputs.n_seeds > 1
            else ""
        )
    )
    return Table("feature_table", caption, columns, rows)


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (no warning) when there are none."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


CROSSCODER_CLASSES = ("pt_only", "shared", "ft_only")


def _crosscoder_row(rs: RunSet, layer: int) -> dict[str, Cell]:
    """One (model, task, SAE layer): latent classes, the shuffled control, selectivity beyond
    the null, per-side FVU and recovered accuracy, each a seed stat."""
    row: dict[str, Cell] = {
        "model": rs.model,
        "task": rs.task,
        "layer": layer,
        "depth": layer / max(rs.n_layers, 1),
    }
    for column in (
        "alive_frac",
        *(f"{c}_frac" for c in CROSSCODER_CLASSES),
        "ft_only_artefact_frac",
        "selectivity_excess_ft_only",
        "selectivity_excess_shared",
        "fvu_pt",
        "fvu_ft",
        "ft_recovered_accuracy",
    ):
        row[column] = rs.crosscoder_stat(column, layer)
    shuffled = rs.shuffled_crosscoder_value("ft_only_frac", layer)
    row["shuffled_ft_only_frac"] = shuffled
    row["ft_only_minus_shuffled"] = Stat.of(
        rs.crosscoder_values("ft_only_frac", layer) - shuffled, rs.confidence
    )
    row["shuffled_excess_ft_only"] = rs.shuffled_crosscoder_value(
        "selectivity_excess_ft_only", layer
    )
    row["norm_spread"] = Stat.of([run.norm_spread(layer) for run in rs.crosscoder], rs.confidence)
    control = rs.shuffled_crosscoder
    row["shuffled_norm_spread"] = control.norm_spread(layer) if control else math.nan
    return row


def crosscoder_summary_table(inputs: PaperInputs) -> Table:
    """Model diffing per (model, task, SAE layer): how the crosscoder's latents split into
    PT-only / shared / FT-only, FT-only beside the shuffled-label control, and whether the
    FT-only latents are more label-selective beyond chance than the shared ones."""
    pct = {"digits": 1, "scale": 100.0, "seed_ci": True}
    columns = [
        *LAYER_KEY_COLUMNS,
        Column("alive_frac", "alive (%)", **pct),
        Column("pt_only_frac", "PT-only (%)", **pct),
        Column("shared_frac", "shared (%)", **pct),
        Column("ft_only_frac", "FT-only (%)", **pct),
        Column("shuffled_ft_only_frac", "FT-only, shuffled (%)", digits=1, scale=100.0),
        Column("ft_only_minus_shuffled", "FT-only minus shuffled (pp)", **pct),
        Column("ft_only_artefact_frac", "Latent Scaling artefacts (%)", **pct),
        Column("norm_spread", "spread of r (std)", digits=3, seed_ci=True),
        Column("shuffled_norm_spread", "spread of r, shuffled", digits=3),
        Column("selectivity_excess_ft_only", "sel. excess, FT-only", seed_ci=True),
        Column("selectivity_excess_shared", "sel. excess, shared", seed_ci=True),
        Column("shuffled_excess_ft_only", "sel. excess, FT-only, shuffled"),
        Column("fvu_pt", "FVU PT", seed_ci=True),
        Column("fvu_ft", "FVU FT", seed_ci=True),
        Column("ft_recovered_accuracy", "recovered acc (%)", **pct),
    ]
    rows = [
        _crosscoder_row(inputs.run(m, t), k)
        for m in inputs.models
        for t in inputs.tasks
        for k in inputs.run(m, t).sae_layers
    ]
    cc = inputs.params.crosscoder
    caption = (
        "Crosscoders (one dictionary over paired PT and FT activations of the same tokens) per "
        "SAE layer. Alive latents are classed by relative FT decoder norm r = |d_FT| / (|d_PT| "
        f"+ |d_FT|): PT-only r < {cc.pt_only_below:g}, FT-only r > {cc.ft_only_above:g}, "
        "shared otherwise; an 'only' latent that Latent Scaling finds explained by the other "
        "model counts as shared (artefacts column, share of alive latents). Spread of r: "
        "standard deviation of r over alive latents (0 = every latent used alike by both "
        "models), a threshold-free view of the same split. Shuffled: the "
        "crosscoder of PT vs the shuffled-label fine-tune (one run); FT-only minus shuffled is "
        "per seed, with its seed interval. Selectivity excess: mean label selectivity of the "
        "class's latents minus the same under label permutations (n/a for an empty class). "
        "FVU per model; recovered acc: share of the FT classifier's val accuracy recovered by "
        "splicing the FT reconstruction, relative to mean-ablating the layer." + _seed_note(inputs)
    )
    return Table("crosscoder_summary", caption, columns, rows)


SNIPPET_CHARS = 80
"""Characters of a latent's top text shown in the latents table."""


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line of at most ``limit`` characters (whitespace collapsed, '...' when cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def _latent_row(m: str, t: str, layer: int, latent: dict) -> dict[str, Cell]:
    texts = latent.get("top_texts") or []
    top = texts[0] if texts else {}
    sel, null = float(latent["selectivity"]), float(latent["selectivity_null"])
    return {
        "model": m,
        "task": t,
        "layer": layer,
        "latent": int(latent["latent"]),
        "relative_norm": float(latent["relative_norm"]),
        "fire_rate": float(latent["fire_rate"]),
        "best_class": str(latent.get("best_class", "")),
        "top_tokens": ", ".join(str(tok) for tok in latent.get("top_tokens", [])[:6]),
        "top_text": f"[{top.get('label', '?')}] {snippet(top.get('text', ''))}" if top else None,
        "selectivity": sel,
        "selectivity_null": null,
        "selectivity_excess": sel - null,
    }


def crosscoder_latents_table(inputs: PaperInputs) -> Table:
    """What the top FT-only crosscoder latents of each (model, task, SAE layer) respond to,
    from the first seed (latent ids are per crosscoder, so seeds cannot be pooled)."""
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("layer", "layer"),
        Column("latent", "latent"),
        Column("relative_norm", "r"),
        Column("fire_rate", "fires on (% tokens)", digits=2, scale=100.0),
        Column("best_class", "best class", align="l"),
        Column("top_tokens", "top tokens", align="l"),
        Column("top_text", "top text [label]", align="l"),
        Column("selectivity", "selectivity"),
        Column("selectivity_null", "null"),
        Column("selectivity_excess", "excess"),
    ]
    n_top = inputs.params.crosscoder.top_latents
    rows: list[dict[str, Cell]] = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            for k in rs.sae_layers:
                latents = rs.crosscoder[0].top_ft_only[k][:n_top]
                rows += [_latent_row(m, t, k, lat) for lat in latents]
                if not latents:
                    rows.append({"model": m, "task": t, "layer": k, "top_tokens": "(none)"})
    caption = (
        f"The top FT-only crosscoder latents (up to {n_top} per SAE layer, by selectivity) of "
        f"seed {inputs.seeds[0]}: relative FT decoder norm r, how often they fire, the class "
        "they separate best, the tokens they fire on most and their top-activating text, and "
        "their label selectivity beside its permutation null. '(none)': no confirmed FT-only "
        "latent at that layer."
    )
    return Table("crosscoder_latents", caption, columns, rows)


def _sparsity_note(sae: SAEParams) -> str:
    """Whether the PT and FT dictionaries were compared at matched sparsity, and how."""
    if sae.sparsity == "topk":
        return f"both sides are TopK SAEs with k = {sae.k}, so sparsity is matched."
    if sae.l0_target is not None:
        return (
            f"each L1 SAE's coefficient was tuned during training to L0 = {sae.l0_target:g} "
            "(sae.l0_target), so PT and FT are compared at matched sparsity."
        )
    return (
        "the L1 SAEs share one coefficient and are not at matched sparsity, so read the "
        "crosscoders (one shared k) for a like-for-like comparison."
    )


def dictionary_overlap_table(inputs: PaperInputs) -> Table:
    """Separate-SAE dictionary overlap (MMCS) PT vs FT per (model, task, SAE layer), beside the
    seed baseline (PT vs PT, FT vs FT from another seed) and the random-direction floor."""
    ci = {"seed_ci": True}
    columns = [
        *LAYER_KEY_COLUMNS,
        Column("mmcs_pt_ft", "MMCS PT-FT", **ci),
        Column("mmcs_pt_pt", "MMCS PT-PT (seed baseline)", **ci),
        Column("mmcs_ft_ft", "MMCS FT-FT", **ci),
        Column("mmcs_floor", "random floor", **ci),
        Column("overlap_rel", "overlap_rel", **ci),
        Column("l0_pt", "L0 PT", digits=1, **ci),
        Column("l0_ft", "L0 FT", digits=1, **ci),
    ]
    rows = []
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            for k in rs.sae_layers:
                row: dict[str, Cell] = {
                    "model": m,
                    "task": t,
                    "layer": k,
                    "depth": k / max(rs.n_layers, 1),
                }
                for col in (c.key for c in columns[4:]):
                    row[col] = rs.baseline_stat(col, k)
                rows.append(row)
    caption = (
        "Dictionary overlap of the separate PT and FT SAEs: symmetric MMCS (mean over both "
        "directions of the mean over decoder rows of the maximum signed cosine to the other "
        "dictionary) of PT vs FT, of the PT SAE vs the PT SAE of another seed trained on the "
        "same PT activations (the seed baseline: what retraining alone changes), FT vs FT of "
        "two seeds (different fine-tunes), and of random directions of the same counts (the "
        "floor). overlap_rel = (PT-FT - floor) / (PT-PT - floor): 1 = as alike as two seeds of "
        "the same model, 0 = chance; n/a with one seed. L0: mean active features per token; "
        + _sparsity_note(inputs.params.sae)
        + _seed_note(inputs)
    )
    return Table("dictionary_overlap", caption, columns, rows)


def claims_table(
    results: Sequence[ClaimResult],
    name: str = "claims",
    caption: str = (
        "The paper's three claims checked per (model, task) by the rules in paper/summary.md, "
        "each against its control, with effect sizes and their t intervals over seeds."
    ),
    effects_header: str = "effect sizes, seed mean [seed CI]",
) -> Table:
    """The verdicts with the control each was judged against and the effect sizes."""
    columns = [
        Column("model", "model", align="l"),
        Column("task", "task", align="l"),
        Column("claim", "claim", align="l"),
        Column("statement", "statement", align="l"),
        Column("verdict", "verdict", align="l"),
        Column("control", "compared with", align="l"),
        Column("effects", effects_header, align="l"),
        Column("evidence", "evidence", align="l"),
    ]
    rows: list[dict[str, Cell]] = [
        {
            "model": r.model,
            "task": r.task,
            "claim": r.claim,
            "statement": r.title,
            "verdict": r.verdict,
            "control": r.control,
            "effects": r.effect_text(),
            "evidence": r.evidence,
        }
        for r in results
    ]
    return Table(name, caption, columns, rows)


def size_claims_table(results: Sequence[ClaimResult]) -> Table:
    """C1 and C2 on one seed against the shuffled-label control, for every model."""
    caption = (
        "C1 and C2 checked on one seed per (model, task) against the shuffled-label fine-tune "
        "by the one-seed rules in paper/summary.md: what the models of the model-size "
        "comparison (one seed, no reset or seed floor) can be judged on, and the full-protocol "
        "models on their first seed, alike. Intervals are text-level (bootstrap over analysis "
        "texts), not seed-level: weaker evidence than the claims table's."
    )
    header = "effect sizes, one seed [conservative text interval]"
    return claims_table(results, "model_size_claims", caption, header)


def build_tables(
    inputs: PaperInputs,
    results: Sequence[ClaimResult],
    size_results: Sequence[ClaimResult] = (),
) -> list[Table]:
    """Every paper table, in the order summary.md lists them."""
    return [
        finetune_accuracy_table(inputs),
        layer_similarity_table(inputs),
        reset_table(inputs),
        sae_metrics_table(inputs),
        dictionary_overlap_table(inputs),
        feature_table(inputs),
        crosscoder_summary_table(inputs),
        crosscoder_latents_table(inputs),
        claims_table(results),
        size_claims_table(size_results),
    ]
