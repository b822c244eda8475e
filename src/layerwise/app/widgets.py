"""Pieces every page draws the same way: menus bound to the URL, tokens coloured by
activation, the per-token bar chart and small line charts.

Every menu and text box has a fixed key and is bound to the URL's query parameter of that
name (``bind="query-params"``), so any view is a link: ``?page=Sentence&model=minilm-l6&
task=sentiment&seed=0&text=...`` opens the sentence view on that sentence.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from layerwise.app.catalog import Catalog, ExplorerError, RunKey, parse_run

COLOUR = (214, 39, 40)
"""Token highlight colour (RGB); its opacity is the activation over the row's maximum."""


def choose(label: str, options: Sequence[str], key: str, sidebar: bool = False, **kwargs) -> str:
    """A selectbox over ``options``, bound to the URL; a stale value (an old link, or options
    that changed with another menu) falls back to the first option."""
    options = list(options)
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    where = st.sidebar if sidebar else st
    return where.selectbox(label, options, key=key, bind="query-params", **kwargs)


def text_box(label: str, key: str, **kwargs) -> str:
    """A text input bound to the URL (Enter applies it)."""
    return st.text_input(label, key=key, bind="query-params", **kwargs) or ""


def run_picker(catalog: Catalog) -> RunKey:
    """Model, task and seed menus (sidebar) over the runs that exist; the seed menu lists a
    task's control runs (``shuffled``) after its seeds."""
    model = choose("Model", catalog.models(), "model", sidebar=True)
    task = choose("Task", catalog.tasks(model), "task", sidebar=True)
    seeds = [str(s) for s in catalog.seeds(model, task)]
    seed = choose("Seed", seeds, "seed", sidebar=True)
    picked = RunKey(model, task, parse_run(seed))
    # The catalog's own key: it knows whether the model is a size model (its stage names).
    return next((k for k in catalog.keys if k == picked), picked)


def pick_buttons(
    caption: str, latents: Sequence[int], key_prefix: str, on_pick: Callable[[int], None]
) -> None:
    """One ``#<id>`` button per latent a stage singled out (up to 10 a row), each calling
    ``on_pick(id)``; nothing when there are none."""
    if not latents:
        return
    st.caption(caption)
    columns = st.columns(min(len(latents), 10))
    for column, latent in zip(columns, latents, strict=False):
        column.button(f"#{latent}", key=f"{key_prefix}{latent}", on_click=on_pick, args=(latent,))


def parse_feature(text: str) -> int | None:
    """A typed feature or latent id: None when blank, an int otherwise; anything else is an
    :class:`ExplorerError` (the page shows its one line)."""
    text = str(text).strip()
    if not text:
        return None
    if not text.isdigit():
        raise ExplorerError(f"feature id {text!r} is not a whole number >= 0")
    return int(text)


WORD_START = ("Ġ", "▁")
"""Byte-level BPE (GPT-2, RoBERTa) and SentencePiece (MPNet's ``▁``) marks of a word start."""


def split_token(token: str) -> tuple[str, str]:
    """(separator before it, text shown) of one token: WordPiece continuations (``##ing``)
    join the previous token, word-start marks become a space."""
    if token.startswith("##"):
        return "", token[2:]
    if token.startswith(WORD_START):
        return " ", token[1:]
    return " ", token


def token_html(tokens: Sequence[str], values: np.ndarray, vmax: float | None = None) -> str:
    """Tokens as inline spans shaded by activation (hover: the value)."""
    vmax = float(vmax if vmax is not None else max(float(np.max(values, initial=0.0)), 1e-9))
    spans = []
    for token, value in zip(tokens, values, strict=True):
        alpha = min(max(float(value) / vmax, 0.0), 1.0) if vmax > 0 else 0.0
        sep, shown = split_token(token)
        style = (
            f"background: rgba{(*COLOUR, round(alpha, 3))}; border-radius: 3px; padding: 1px 2px"
        )
        text = html.escape(shown)
        spans.append(f'{sep}<span title="{float(value):.3f}" style="{style}">{text}</span>')
    return f'<div style="line-height: 2.0; font-size: 1.05em">{"".join(spans).strip()}</div>'


def token_bar_chart(tokens: Sequence[str], values: np.ndarray, title: str) -> None:
    """One bar per token, in sentence order (the paper's app shows the same)."""
    data = [
        {"position": i, "token": f"{i}: {t}", "activation": float(v)}
        for i, (t, v) in enumerate(zip(tokens, values, strict=True))
    ]
    spec = {
        "title": title,
        "data": {"values": data},
        "mark": {"type": "bar", "color": "#d62728"},
        "encoding": {
            "x": {"field": "token", "type": "nominal", "sort": None, "title": None},
            "y": {"field": "activation", "type": "quantitative"},
            "tooltip": [{"field": "token"}, {"field": "activation", "format": ".3f"}],
        },
        "height": 220,
    }
    st.vega_lite_chart(spec=spec, width="stretch")


def line_chart(rows: list[dict], x: str, ys: list[str], title: str) -> None:
    """A small line chart of ``ys`` against ``x`` (one line per column, with points)."""
    data = [{x: r[x], "series": y, "value": r[y]} for r in rows for y in ys if r.get(y) is not None]
    spec = {
        "title": title,
        "data": {"values": data},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": x, "type": "quantitative", "axis": {"tickMinStep": 1, "format": "d"}},
            "y": {"field": "value", "type": "quantitative", "scale": {"zero": False}},
            "color": {"field": "series", "type": "nominal", "title": None},
        },
        "height": 240,
    }
    st.vega_lite_chart(spec=spec, width="stretch")
