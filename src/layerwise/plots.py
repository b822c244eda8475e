"""Token maps: one heat-map per example text, rows = SAE units, columns = tokens.

The features stage draws them for each run and the paper stage for its figures, so they live
here, apart from the paper's figures: restyling a paper figure must not rerun ``features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.image import AxesImage

RC: dict[str, Any] = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,  # tokens and texts may hold '$'
    "pdf.fonttype": 42,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
TOKEN_MAP_WIDTH = 13.0
TOKEN_MAP_MAX_TOKENS = 48
"""Long texts (news articles) are cut to their first tokens so labels stay legible."""
TOKEN_MAP_CMAP = "viridis"


def new_figure(size: tuple[float, float]) -> Figure:
    """A bare figure on an Agg canvas: no ``pyplot`` global state, nothing to close."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def token_map_figsize(n_examples: int, n_units: int) -> tuple[float, float]:
    """Inches: fixed width, height grows with examples and rows."""
    return TOKEN_MAP_WIDTH, 0.9 + max(n_examples, 1) * (0.3 * n_units + 1.3)


def _unit_label(unit: str, features: Sequence[int] | None) -> str:
    which, _, layer = unit.partition("_")
    feat = f" #{features[0]}" if features else ""
    return f"{layer} {which.upper()}{feat}"


def _token_grid(
    example: dict[str, Any], units: Sequence[str], max_tokens: int
) -> tuple[list[str], int, np.ndarray]:
    """(tokens shown, tokens in the text, ``[units, tokens]`` activations, NaN where a unit has
    no map) for one example, cut to ``max_tokens``."""
    tokens = list(example.get("tokens", []))
    maps = example.get("maps", {})
    n_all = min([len(tokens)] + [len(maps[u]["activations"]) for u in units if u in maps])
    n = min(n_all, max_tokens)
    if n == 0:  # nothing to show: one blank column keeps the panel drawable
        tokens, n_all = ["(no tokens)"], 1
    grid = np.full((len(units), max(n, 1)), np.nan)
    for r, u in enumerate(units):
        if u in maps and n:
            acts = np.asarray(maps[u]["activations"], dtype=float)
            grid[r] = acts[:n, 0] if acts.ndim == 2 else acts[:n]
    return tokens[: max(n, 1)], n_all, grid


def _draw_panel(
    ax: Axes,
    example: dict[str, Any],
    units: Sequence[str],
    shown: tuple[list[str], int, np.ndarray],
    vmax: float,
) -> AxesImage:
    """One example's heat-map on ``ax``, titled with its label and (cut) text."""
    tokens, n_all, grid = shown
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        interpolation="nearest",
        cmap=TOKEN_MAP_CMAP,
        vmin=0.0,
        vmax=vmax,
    )
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    maps = example.get("maps", {})
    ax.set_yticks(
        range(len(units)),
        [_unit_label(u, maps.get(u, {}).get("features")) for u in units],
    )
    ax.set_xticks(range(len(tokens)), tokens, rotation=90 if len(tokens) > 20 else 0, fontsize=7.5)
    ax.tick_params(length=0)
    for r in range(2, len(units), 2):
        ax.axhline(r - 0.5, color="white", linewidth=2)
    text = str(example.get("text", ""))
    text = text if len(text) <= 110 else text[:107] + "..."
    cut = f" (first {len(tokens)} of {n_all} tokens)" if n_all > len(tokens) else ""
    ax.set_title(f"label: {example.get('label', '?')}{cut} | {text}", loc="left", fontsize=9)
    return image


def draw_token_maps(
    examples: Sequence[dict[str, Any]],
    units: Sequence[str],
    title: str,
    max_tokens: int = TOKEN_MAP_MAX_TOKENS,
) -> Figure:
    """One heat-map per example text: rows = units, columns = tokens, colour = activation of the
    unit's top feature (the first of its three), on one colour scale shared by all panels.

    Args:
        examples: entries of ``features.json`` ``examples`` (``tokens``, ``maps``, ...).
        units: map keys to show, in row order (e.g. ``pt_L2``, ``ft_L2``, ...).
    """
    with rc_context(RC):
        fig = new_figure(token_map_figsize(len(examples), len(units)))
        if not examples:
            fig.text(0.5, 0.5, "no example texts in features.json", ha="center", va="center")
            fig.suptitle(title)
            return fig
        axes = fig.subplots(len(examples), 1, squeeze=False)[:, 0]
        shown = [_token_grid(ex, units, max_tokens) for ex in examples]
        vmax = max([0.0] + [float(np.nanmax(g)) for _, _, g in shown if np.isfinite(g).any()])
        vmax = vmax if vmax > 0 else 1.0
        images = [
            _draw_panel(ax, ex, units, grid, vmax)
            for ax, ex, grid in zip(axes, examples, shown, strict=True)
        ]
        fig.colorbar(
            images[-1],
            ax=list(axes),
            label="activation of the unit's top feature",
            fraction=0.025,
            pad=0.01,
        )
        fig.suptitle(title)
    return fig


def plot_token_maps(
    examples: list[dict], units: list[str], out_path: Path, title: str, dpi: int
) -> None:
    """Draw :func:`draw_token_maps` and save it to ``out_path`` (format from its suffix).

    The features stage calls this for a quick per-task PNG; the paper stage draws the same
    picture through :func:`layerwise.paper.figures.token_maps`.
    """
    fig = draw_token_maps(examples, units, title)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(RC):
        fig.savefig(out_path, dpi=dpi)
