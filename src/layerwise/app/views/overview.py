"""The first page: what the pipeline has produced, run by run, and what is still missing."""

from __future__ import annotations

import streamlit as st

from layerwise.app.catalog import REPRODUCE_HINT, Catalog, RunKey

STAGE_COLUMNS = ("prepare", "finetune", "compare", "sae", "crosscoder", "features")


def _stages(key: RunKey) -> list[str]:
    """The stages the pipeline runs for ``key``: a control run has no SAEs or features."""
    return [s for s in STAGE_COLUMNS if key.runs(s)]


def _mark(stage: str, key: RunKey, missing: set[str]) -> str:
    if not key.runs(stage):
        return "—"
    return "✗" if stage in missing else "✓"


def render(catalog: Catalog) -> None:
    st.header("What the pipeline has produced")
    if catalog.empty:
        st.info(REPRODUCE_HINT.format(root=catalog.root))
        return
    rows = []
    for run in catalog.runs:
        row = {"model": run.key.model, "task": run.key.task, "seed": str(run.key.seed)}
        missing = set(run.missing(*_stages(run.key)))
        row.update({stage: _mark(stage, run.key, missing) for stage in STAGE_COLUMNS})
        row["SAE units"] = ", ".join(run.sae_units) or "—"
        row["crosscoder layers"] = ", ".join(map(str, run.crosscoder_layers)) or "—"
        rows.append(row)
    if rows:
        st.dataframe(rows, hide_index=True)
    else:
        st.info("No (model, task, seed) run has outputs yet: run `make reproduce`.")
    incomplete = [run for run in catalog.runs if run.missing(*_stages(run.key))]
    if incomplete:
        st.caption(
            "✗: that stage's output is not here (a fresh clone keeps only the small results "
            "files in git). The sentence and feature views need finetune, compare, sae and "
            "prepare; `make reproduce` (`dvc repro`) makes every missing output. —: the "
            "pipeline does not run that stage for a control run (seed `shuffled`)."
        )
    st.write(
        f"Paper: {len(catalog.figures)} figures, {len(catalog.tables)} tables"
        + ("" if catalog.figures or catalog.tables else " (the `paper` stage has not run)")
    )
    st.markdown(
        "**Pages:** *Sentence*: type any text and see each token coloured by an SAE feature "
        "(the paper's app). *PT vs FT*: the same sentence through both models at every SAE "
        "layer, and its own PT-vs-FT cosine per layer. *Feature cards*: any latent's top "
        "texts, activation histogram, label selectivity against chance, nearest latent of the "
        "other model, and search by token. *Crosscoders*: model diffing, a layer's latents by "
        "relative decoder norm (PT-only, shared, FT-only) and any latent's card. *Results*: "
        "the run's tables, the paper's figures and claims, and its MLflow run ids."
    )
