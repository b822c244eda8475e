"""The same sentence through PT and FT at every SAE layer at once, and the sentence's own
PT-vs-FT cosine per layer 0..L beside the run's analysis-split average."""

from __future__ import annotations

import numpy as np
import streamlit as st

from layerwise.app import widgets as W
from layerwise.app.catalog import RunKey, unit_layer
from layerwise.app.encode import TextActivations, encode_text
from layerwise.app.loaders import Workspace
from layerwise.app.results import similarity_rows
from layerwise.app.views.sentence import EXAMPLE
from layerwise.schema import unit_name


def render(ws: Workspace, key: RunKey) -> None:
    st.header("PT vs FT, every SAE layer")
    outputs = ws.require(key, "finetune", "sae")
    text = W.text_box("Sentence (Enter to run)", "text", placeholder=EXAMPLE)
    if not text.strip():
        st.info(f"Type a sentence above, e.g. “{EXAMPLE}”")
        return
    acts = encode_text(ws, key, text)
    _cosine_curve(ws, key, acts)
    st.markdown(
        "Each row: the layer's SAE feature most active on this sentence, per model; tokens "
        "shaded by its activation (hover for the value)."
    )
    for layer in outputs.sae_layers:
        st.subheader(f"Layer {layer}")
        columns = st.columns(2)
        for column, which in zip(columns, ("pt", "ft"), strict=True):
            unit = unit_name(which, layer)
            with column:
                _unit_row(acts, unit) if unit in acts.units else st.write(f"no SAE {unit}")
    st.caption(", ".join(f"{k} {1000 * v:.0f} ms" for k, v in acts.timings.items()))


def _unit_row(acts: TextActivations, unit: str) -> None:
    top = acts.top_features(unit, 1)
    if not top:
        st.write(f"{unit.upper()[:2]}: no feature fires")
        return
    feature, peak, _ = top[0]
    st.markdown(f"**{unit[:2].upper()}** feature {feature} (max {peak:.3f})")
    st.markdown(W.token_html(acts.tokens, acts.feature(unit, feature)), unsafe_allow_html=True)


def _cosine_curve(ws: Workspace, key: RunKey, acts: TextActivations) -> None:
    rows = [{"layer": k, "this sentence": float(c)} for k, c in enumerate(acts.cosine)]
    dataset = similarity_rows(ws, key)
    if dataset:
        by_layer = {int(r["layer"]): float(r["cosine"]) for r in dataset}
        for row in rows:
            row["analysis split (mean)"] = by_layer.get(row["layer"])
    ys = ["this sentence", "analysis split (mean)"] if dataset else ["this sentence"]
    left, right = st.columns([2, 1])
    with left:
        W.line_chart(rows, "layer", ys, "PT-vs-FT cosine of the same token, mean over tokens")
    with right:
        st.dataframe(
            {"layer": [r["layer"] for r in rows], "cosine": np.round(acts.cosine, 4)},
            hide_index=True,
        )
        sae_layers = sorted({unit_layer(u) for u in acts.units})
        st.caption(f"Layer 0 is the embedding output; SAE layers: {sae_layers}.")
