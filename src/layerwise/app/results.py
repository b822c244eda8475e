"""A run's results as tables: per-layer similarity, SAE quality, feature statistics,
fine-tuning metrics, the paper's claims with verdicts, and the MLflow run ids of its stages.

Each reader returns None when its file is not there (the page then says which stage makes
it); none of them computes anything the stages did not write.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from layerwise.app.catalog import RunKey
from layerwise.app.loaders import Workspace
from layerwise.schema import FINETUNE_KEYS, SAE_METRIC_KEYS, STAGES, stage_run_name

logger = logging.getLogger(__name__)


def read_rows(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def similarity_rows(ws: Workspace, key: RunKey) -> list[dict[str, str]] | None:
    """``similarity.csv``: one row per layer 0..L (compare stage)."""
    return read_rows(ws.paths.similarity_csv(key.model, key.task, key.seed))


def feature_rows(ws: Workspace, key: RunKey) -> list[dict[str, str]] | None:
    """``features.csv``: one row per SAE layer (features stage)."""
    return read_rows(ws.paths.features_csv(key.model, key.task, key.seed))


def sae_rows(ws: Workspace, key: RunKey) -> list[dict[str, Any]] | None:
    """One row per SAE unit from the sae stage's metrics file."""
    metrics = _json(ws.paths.sae_metrics(key.model, key.task, key.seed))
    if metrics is None:
        return None
    units = sorted({k.split("/")[0] for k in metrics if "_L" in k.split("/")[0]})
    rows = []
    for unit in units:
        row: dict[str, Any] = {"unit": unit}
        row.update({k: metrics.get(f"{unit}/{k}") for k in SAE_METRIC_KEYS})
        if f"{unit}/ft_accuracy_spliced" in metrics:
            row["ft_accuracy_spliced"] = metrics[f"{unit}/ft_accuracy_spliced"]
        rows.append(row)
    return rows


def crosscoder_rows(ws: Workspace, key: RunKey) -> list[dict[str, str]] | None:
    """``crosscoder.csv``: one row per crosscoder layer (crosscoder stage)."""
    return read_rows(ws.paths.crosscoder_csv(key.model, key.task, key.seed))


def crosscoder_result(ws: Workspace, key: RunKey) -> dict[str, Any]:
    """``crosscoder.json`` (empty when the stage has not run): the thresholds behind the
    latent classes and the top FT-only latents per layer."""
    return ws.cached(
        ("crosscoder_json", key),
        lambda: _json(ws.paths.crosscoder_json(key.model, key.task, key.seed)) or {},
    )


def top_ft_only_latents(ws: Workspace, key: RunKey, layer: int) -> list[int]:
    """The FT-only latents the crosscoder stage reported for ``layer`` (most selective
    first)."""
    top = crosscoder_result(ws, key).get("top_ft_only", {}).get(str(layer), [])
    return [int(entry["latent"]) for entry in top]


def finetune_metrics(ws: Workspace, key: RunKey) -> dict[str, Any] | None:
    """The fine-tuning metrics the paper reads (``schema.FINETUNE_KEYS``)."""
    metrics = _json(ws.paths.finetune_metrics(key.model, key.task, key.seed))
    return None if metrics is None else {k: metrics[k] for k in FINETUNE_KEYS if k in metrics}


def claims_rows(ws: Workspace, key: RunKey) -> list[dict[str, str]] | None:
    """The paper's claims for the run's (model, task), with verdicts and evidence: the
    seed-level ones (claims.csv, full-protocol models) and the one-seed checks against the
    shuffled control (model_size_claims.csv, every model)."""
    tables = ws.paths.paper() / "tables"
    found = [read_rows(tables / name) for name in ("claims.csv", "model_size_claims.csv")]
    if all(rows is None for rows in found):
        return None
    return [
        r
        for rows in found
        for r in rows or []
        if (r.get("model"), r.get("task")) == (key.model, key.task)
    ]


def top_variance_features(ws: Workspace, key: RunKey, unit: str) -> list[int]:
    """The features the features stage reported for ``unit`` (most variable first)."""
    result = ws.cached(
        ("features_json", key),
        lambda: _json(ws.paths.features_json(key.model, key.task, key.seed)) or {},
    )
    return [
        int(f["feature"]) for f in result.get("units", {}).get(unit, {}).get("top_features", [])
    ]


def token_map_image(ws: Workspace, key: RunKey) -> Path | None:
    """The features stage's token maps of the run's example texts."""
    path = ws.paths.token_maps(key.model, key.task, key.seed) / "token_maps.png"
    return path if path.is_file() else None


def tracking_store_exists(root: Path) -> bool:
    """Whether there is an MLflow store to read: a server named by ``MLFLOW_TRACKING_URI`` or
    the default SQLite file. Opening a SQLite URI whose file is missing would create it."""
    from layerwise.tracking import tracking_uri

    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        return True
    return Path(uri.removeprefix("sqlite:///")).is_file()


def run_ids(ws: Workspace, key: RunKey) -> dict[str, str]:
    """Stage -> id of its latest finished MLflow run for this run (``n/a`` when none), as the
    paper stage finds them; empty when there is no tracking store."""
    if not tracking_store_exists(ws.root):
        return {}
    from layerwise.pipeline.paper import find_run_ids

    # MLflow names a control's runs <stage>@<model>-<task>-<control> (DVC: <stage>_<control>@...)
    names = {s: stage_run_name(s, key.model, key.task, key.seed) for s in STAGES if key.runs(s)}
    experiment = str(ws.param("mlflow", "experiment", "layerwise"))
    found = ws.cached(
        ("run_ids", key), lambda: find_run_ids(ws.root, experiment, list(names.values()))
    )
    return {stage: found[name] for stage, name in names.items()}


def run_link(run_id: str) -> str | None:
    """A link to the run in the MLflow UI when the tracking store is a server (``http(s)``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if run_id == "n/a" or not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/runs/{run_id}"
