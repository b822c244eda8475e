"""The run's results: fine-tuning metrics, per-layer tables, the paper's claims with verdicts,
its figures, and the MLflow run ids of every stage."""

from __future__ import annotations

import streamlit as st

from layerwise.app import results as R
from layerwise.app import widgets as W
from layerwise.app.catalog import Catalog, RunKey
from layerwise.app.loaders import Workspace


def render(ws: Workspace, key: RunKey | None, catalog: Catalog) -> None:
    st.header("Results")
    if key is not None:
        _run_tables(ws, key)
    _paper(catalog)


def _table(title: str, rows: list | None, made_by: str) -> None:
    st.subheader(title)
    if rows is None:
        st.info(f"Not there yet: made by the {made_by} stage (`make reproduce`).")
    else:
        st.dataframe([{k: _cell(v) for k, v in row.items()} for row in rows], hide_index=True)


def _cell(value: object) -> object:
    """Numbers (CSV cells are text) rounded to 4 digits; anything else as it is."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else round(number, 4)


def _run_tables(ws: Workspace, key: RunKey) -> None:
    st.markdown(f"### {key.label}")
    ft = R.finetune_metrics(ws, key)
    _table("Fine-tuning", [ft] if ft else None, key.stage("finetune"))
    sim = R.similarity_rows(ws, key)
    _table("PT-vs-FT similarity per layer", sim, key.stage("compare"))
    if sim:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in sim]
        W.line_chart(rows, "layer", ["cosine", "cka"], "Similarity per layer (0 = embeddings)")
    if key.runs("sae"):
        _table("SAE quality per unit", R.sae_rows(ws, key), key.stage("sae"))
        _table("Feature statistics per SAE layer", R.feature_rows(ws, key), key.stage("features"))
    else:
        st.caption(
            "A control run has no SAEs or feature statistics: the pipeline runs them per seed."
        )
    _table(
        "Crosscoder model diffing per layer",
        R.crosscoder_rows(ws, key),
        key.stage("crosscoder"),
    )
    maps = R.token_map_image(ws, key)
    if maps is not None:
        st.image(str(maps), caption="Token maps of the run's example texts (features stage)")
    claims = R.claims_rows(ws, key)
    _table("The paper's claims for this model and task", claims, "paper")
    _mlflow(ws, key)


def _mlflow(ws: Workspace, key: RunKey) -> None:
    st.subheader("MLflow runs")
    ids = R.run_ids(ws, key)
    if not ids:
        st.info("No MLflow tracking store here (`mlflow.db` or MLFLOW_TRACKING_URI).")
        return
    lines = []
    for stage, run_id in ids.items():
        link = R.run_link(run_id)
        lines.append(f"- {stage}: [`{run_id}`]({link})" if link else f"- {stage}: `{run_id}`")
    st.markdown("\n".join(lines))
    st.caption("Open them with `mlflow ui --backend-store-uri sqlite:///mlflow.db`.")


def _paper(catalog: Catalog) -> None:
    st.markdown("### The paper's figures")
    if not catalog.figures:
        st.info("The paper stage has not run yet: `make reproduce`.")
        return
    for path in catalog.figures:
        st.image(str(path), caption=path.stem)
