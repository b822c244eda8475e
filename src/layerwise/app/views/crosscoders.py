"""Crosscoders (model diffing): a layer's histogram of relative decoder norms over alive
latents, its latent list sortable by ``r`` with a link to each card, and the card."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from layerwise.app import widgets as W
from layerwise.app.catalog import RunKey
from layerwise.app.crosscoders import (
    CLASS_NAMES,
    SORTS,
    CrosscoderCard,
    LayerDiff,
    crosscoder_card,
    layer_diff,
)
from layerwise.app.loaders import Workspace
from layerwise.app.results import top_ft_only_latents
from layerwise.app.views.feature_cards import draw_latent
from layerwise.config import CrosscoderParams

PAGE = "Crosscoders"
CLASS_COLOURS = {"PT-only": "#1f77b4", "shared": "#7f7f7f", "FT-only": "#d62728"}


def open_latent(latent: int) -> None:
    """Button callback: show another latent's card."""
    st.session_state["latent"] = str(latent)


def card_link(key: RunKey, layer: int, latent: int) -> str:
    """The page's URL (relative) with the latent's card open: every menu is bound to the URL."""
    query = {"page": PAGE, "model": key.model, "task": key.task, "seed": key.seed}
    return "?" + urlencode({**query, "cc_layer": layer, "latent": latent})


def render(ws: Workspace, key: RunKey) -> None:
    st.header("Crosscoders (model diffing)")
    outputs = ws.require(key, "prepare", "compare", "crosscoder")
    layer = int(W.choose("Layer", [str(x) for x in outputs.crosscoder_layers], "cc_layer"))
    diff = layer_diff(ws, key, layer)
    _layer_view(diff)
    _stage_picks(ws, key, layer)
    latent_text = W.text_box("Latent id", "latent", placeholder="e.g. 0")
    latent = W.parse_feature(latent_text)
    if latent is None:
        st.info("Type a latent id, or open one from the list above.")
        return
    _draw_card(crosscoder_card(ws, key, layer, latent))


def _layer_view(diff: LayerDiff) -> None:
    """The class shares, the histogram of ``r`` and the sortable latent list."""
    p, classes = diff.params, diff.classes
    fractions = classes.fractions()
    n_alive = int(classes.alive.sum())
    a, b, c, d = st.columns(4)
    a.metric("alive latents", f"{n_alive} of {len(classes.alive)}")
    for column, name in zip((b, c, d), ("pt_only", "shared", "ft_only"), strict=True):
        column.metric(CLASS_NAMES[name], f"{100 * fractions[f'{name}_frac']:.1f}%")
    st.caption(
        f"r = |d_FT| / (|d_PT| + |d_FT|) per latent: PT-only below {p.pt_only_below}, FT-only "
        f'above {p.ft_only_above}; an "only" latent that Latent Scaling flags (the other model '
        f"explains over {p.scaling_max_ratio} of it) counts as shared. Shares are over alive "
        "latents."
    )
    left, right = st.columns(2)
    with left:
        _r_histogram(diff)
    with right:
        _latent_list(diff)


def _r_histogram(diff: LayerDiff) -> None:
    counts, edges = diff.histogram()
    p = diff.params
    data = [
        {"r": float(lo), "r_end": float(hi), "latents": int(n), "class": _bin_class(lo, hi, p)}
        for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
    ]
    st.markdown(f"**Relative decoder norm r of alive latents** (layer {diff.layer})")
    st.vega_lite_chart(
        spec={
            "data": {"values": data},
            "mark": {"type": "bar"},
            "encoding": {
                "x": {"field": "r", "type": "quantitative", "bin": {"binned": True}},
                "x2": {"field": "r_end"},
                "y": {"field": "latents", "type": "quantitative"},
                "color": {
                    "field": "class",
                    "type": "nominal",
                    "scale": {
                        "domain": list(CLASS_COLOURS),
                        "range": list(CLASS_COLOURS.values()),
                    },
                },
                "tooltip": [{"field": "r"}, {"field": "r_end"}, {"field": "latents"}],
            },
            "height": 260,
        },
        width="stretch",
    )


def _bin_class(lo: float, hi: float, params: CrosscoderParams) -> str:
    """The norm class of a histogram bin (by its centre), for its colour."""
    centre = (lo + hi) / 2
    if centre < params.pt_only_below:
        return "PT-only"
    return "FT-only" if centre > params.ft_only_above else "shared"


def _latent_list(diff: LayerDiff) -> None:
    sort = W.choose("Sort latents by", SORTS, "cc_sort")
    rows = [
        {**row, "card": card_link(diff.key, diff.layer, row["latent"])} for row in diff.rows(sort)
    ]
    st.dataframe(
        rows,
        hide_index=True,
        height=260,
        column_config={
            "r": st.column_config.NumberColumn(format="%.3f"),
            "fires on tokens": st.column_config.NumberColumn(format="percent"),
            "selectivity": st.column_config.NumberColumn(format="%.3f"),
            "selectivity null": st.column_config.NumberColumn(format="%.3f"),
            "card": st.column_config.LinkColumn(display_text="open card"),
        },
    )


def _stage_picks(ws: Workspace, key: RunKey, layer: int) -> None:
    """One button per FT-only latent the crosscoder stage reported for this layer."""
    W.pick_buttons(
        "Most label-selective FT-only latents of this layer (crosscoder stage):",
        top_ft_only_latents(ws, key, layer),
        "cc_pick_",
        open_latent,
    )


def _draw_card(card: CrosscoderCard) -> None:
    st.subheader(f"crosscoder L{card.layer} · latent {card.feature} of {card.n_features}")
    a, b, c, d = st.columns(4)
    a.metric("relative norm r", f"{card.relative_norm:.3f}")
    b.metric("class", card.latent_class)
    c.metric("|d_PT|", f"{card.norm_pt:.3f}")
    d.metric("|d_FT|", f"{card.norm_ft:.3f}")
    if card.latent_class != card.norm_class:
        st.caption(
            f"By r alone this latent is {card.norm_class}, but Latent Scaling flags it as an "
            "artefact (the other model carries its direction after all), so it counts as "
            "shared."
        )
    if not card.alive:
        st.caption("Dead latent: it never fires on the analysis split and is in no share.")
    draw_latent(card)
