"""The paper's view: a run, a layer, PT or FT, any sentence -> each token coloured by the
activation of the chosen SAE feature (or the sentence's top features), with a bar per token."""

from __future__ import annotations

import streamlit as st

from layerwise.app import widgets as W
from layerwise.app.catalog import ExplorerError, RunKey, unit_layer
from layerwise.app.encode import TextActivations, encode_text
from layerwise.app.loaders import Workspace
from layerwise.schema import unit_name

SHOWN_FEATURES = 3
"""Features drawn when no feature id is given: the sentence's most active ones."""
LISTED_FEATURES = 10
EXAMPLE = "The acting was terrible but the soundtrack is great."


def render(ws: Workspace, key: RunKey) -> None:
    st.header("Sentence")
    outputs = ws.require(key, "finetune", "sae")
    text = W.text_box("Sentence (Enter to run)", "text", placeholder=EXAMPLE)
    left, middle, right = st.columns(3)
    with left:
        layer = W.choose("SAE layer", [str(x) for x in outputs.sae_layers], "layer")
    with middle:
        which = st.radio(
            "Model: fine-tuned or pre-trained", ["FT", "PT"], key="which", horizontal=True,
            bind="query-params",
        )  # fmt: skip
    with right:
        feature_text = W.text_box("Feature id (blank: the sentence's top features)", "feature")
    unit = unit_name(which.lower(), int(layer))
    if unit not in outputs.sae_units:
        raise ExplorerError(f"{key.label} has no SAE {unit}; it has {', '.join(outputs.sae_units)}")
    feature = W.parse_feature(feature_text)
    if not text.strip():
        st.info(f"Type a sentence above, e.g. “{EXAMPLE}”")
        return
    acts = encode_text(ws, key, text, units=[unit])
    features = [feature] if feature is not None else _top(acts, unit, SHOWN_FEATURES)
    for f in features:
        _draw_feature(acts, unit, f)
    _draw_top_table(acts, unit)
    st.caption(_timing_note(acts))


def _top(acts: TextActivations, unit: str, n: int) -> list[int]:
    top = [f for f, _, _ in acts.top_features(unit, n)]
    if not top:
        st.info(f"No feature of {unit} fires on this sentence.")
    return top


def _draw_feature(acts: TextActivations, unit: str, feature: int) -> None:
    values = acts.feature(unit, feature)
    st.subheader(f"{unit} · feature {feature} (max {values.max():.3f})")
    st.markdown(W.token_html(acts.tokens, values), unsafe_allow_html=True)
    W.token_bar_chart(acts.tokens, values, f"{unit} feature {feature}: activation per token")
    with st.expander("Values per token"):
        st.dataframe(
            {"token": acts.tokens, "activation": [round(float(v), 4) for v in values]},
            hide_index=False,
        )


def _draw_top_table(acts: TextActivations, unit: str) -> None:
    top = acts.top_features(unit, LISTED_FEATURES)
    if not top:
        return
    st.markdown(
        f"**Most active features of {unit} on this sentence** (open one on *Feature cards*)"
    )
    st.dataframe(
        [
            {"feature": f, "max activation": round(a, 4), "on token": acts.tokens[pos]}
            for f, a, pos in top
        ],
        hide_index=True,
    )


def _timing_note(acts: TextActivations) -> str:
    parts = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in acts.timings.items())
    layer = unit_layer(next(iter(acts.units)))
    return f"{len(acts.tokens)} tokens, special tokens included; SAE layer {layer}; {parts}"
