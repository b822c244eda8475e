"""Feature cards: any latent of any SAE of the run, and search by token."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import streamlit as st

from layerwise.app import widgets as W
from layerwise.app.cards import FeatureCard, LatentCard, feature_card
from layerwise.app.catalog import ExplorerError, RunKey
from layerwise.app.loaders import Workspace
from layerwise.app.results import top_variance_features
from layerwise.app.search import search_token


def open_card(unit: str, feature: int) -> None:
    """Button callback: show another latent's card."""
    st.session_state["unit"] = unit
    st.session_state["feature"] = str(feature)


def render(ws: Workspace, key: RunKey) -> None:
    st.header("Feature cards")
    outputs = ws.require(key, "prepare", "compare", "sae")
    unit = W.choose("SAE", list(outputs.sae_units), "unit")
    feature_text = W.text_box("Feature id", "feature", placeholder="e.g. 0")
    word = W.text_box("Search by token: which features fire on…", "word", placeholder="terrible")
    _stage_picks(ws, key, unit)
    if word.strip():
        _token_search(ws, key, unit, word)
    feature = W.parse_feature(feature_text)
    if feature is None:
        st.info("Type a feature id, or search by token above.")
        return
    _draw_card(feature_card(ws, key, unit, feature))


def _stage_picks(ws: Workspace, key: RunKey, unit: str) -> None:
    """One button per top-variance feature the features stage reported for this unit."""
    W.pick_buttons(
        "Top-variance features of this SAE (features stage):",
        top_variance_features(ws, key, unit),
        "pick_",
        partial(open_card, unit),
    )


def _token_search(ws: Workspace, key: RunKey, unit: str, word: str) -> None:
    try:
        found = search_token(ws, key, unit, word)
    except ExplorerError as exc:
        st.warning(str(exc))
        return
    st.markdown(
        f"**{unit}: features on “{found.word}”** (tokens `{' '.join(found.pieces)}`, "
        f"{found.n_occurrences} occurrences in the analysis split)"
    )
    st.dataframe(
        [
            {
                "feature": h.feature,
                "mean activation": round(h.mean_activation, 4),
                "fires on the word": f"{100 * h.fire_frac:.0f}%",
                "fires on any token": f"{100 * h.base_rate:.1f}%",
            }
            for h in found.hits
        ],
        hide_index=True,
    )
    if found.hits:
        columns = st.columns(min(len(found.hits), 5))
        for column, hit in zip(columns, found.hits, strict=False):
            column.button(
                f"card {hit.feature}", key=f"open_{hit.feature}",
                on_click=open_card, args=(unit, hit.feature),
            )  # fmt: skip


def _draw_card(card: FeatureCard) -> None:
    st.subheader(f"{card.unit} · feature {card.feature} of {card.n_features}")
    draw_latent(card, aside=lambda: _neighbour(card))


def _neighbour(card: FeatureCard) -> None:
    if card.neighbour is None:
        return
    n = card.neighbour
    st.markdown(
        f"**Nearest latent of the other model:** {n.unit} #{n.feature} "
        f"(decoder cosine {n.cosine:.3f})"
    )
    st.button(
        f"open {n.unit} #{n.feature}", key="open_neighbour",
        on_click=open_card, args=(n.unit, n.feature),
    )  # fmt: skip


def draw_latent(card: LatentCard, aside: Callable[[], None] | None = None) -> None:
    """What every latent card shows (firing, selectivity against chance, activation
    histogram, AUC per label, top texts with the tokens shaded); ``aside`` draws the card
    kind's own part under the AUC table."""
    sel = card.selectivity
    a, b, c, d = st.columns(4)
    a.metric("fires on tokens", f"{100 * card.fire_rate:.2f}%")
    b.metric("max activation", f"{card.max_activation:.3f}")
    c.metric(f"selectivity ({sel.best_label})", f"{sel.auc:.3f}")
    d.metric("chance (95% of shuffles)", f"{sel.null_q95:.3f}", help=f"p = {sel.p_value:.3f}")
    st.caption(
        f"Selectivity: best one-vs-rest ROC AUC of the per-text max activation; under "
        f"{sel.n_permutations} label shuffles it averages {sel.null_mean:.3f} and stays below "
        f"{sel.null_q95:.3f} in 95% of them (p = {sel.p_value:.3f})."
    )
    left, right = st.columns(2)
    with left:
        _histogram(card)
    with right:
        st.markdown("**AUC per label**")
        st.dataframe(
            [{"label": k, "AUC": round(v, 3)} for k, v in sel.auc_per_class.items()],
            hide_index=True,
        )
        if aside is not None:
            aside()
    st.markdown("**Top-activating analysis texts**")
    if not card.top_texts:
        st.info("This latent never fires on the analysis split (a dead latent).")
    vmax = max((float(t.token_acts.max(initial=0)) for t in card.top_texts), default=1.0)
    for t in card.top_texts:
        st.markdown(
            f"<small>text {t.text_index} · label <b>{t.label}</b> · max {t.activation:.3f}</small>"
            + W.token_html(t.tokens, t.token_acts, vmax),
            unsafe_allow_html=True,
        )


def _histogram(card: LatentCard) -> None:
    counts, edges = card.histogram
    if not counts.size:
        st.write("No nonzero activations.")
        return
    centres = (edges[:-1] + edges[1:]) / 2
    data = [
        {"activation": float(x), "tokens": int(n)} for x, n in zip(centres, counts, strict=True)
    ]
    st.markdown(f"**Activation histogram** ({int(np.sum(counts))} firing tokens)")
    st.vega_lite_chart(
        spec={
            "data": {"values": data},
            "mark": {"type": "bar", "color": "#d62728"},
            "encoding": {
                "x": {"field": "activation", "type": "quantitative", "bin": {"binned": True}},
                "y": {"field": "tokens", "type": "quantitative"},
            },
            "height": 200,
        },
        width="stretch",
    )
