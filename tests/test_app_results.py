"""The results tables of a run, and MLflow run ids read without ever creating a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app import results as R
from layerwise.app.loaders import Workspace
from layerwise.schema import SAE_METRIC_KEYS, STAGES


def test_run_tables_and_claims(app_tree: AppTree, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(app_tree.root)
    assert [int(r["layer"]) for r in R.similarity_rows(ws, KEY)] == [0, 1, 2]
    assert [int(r["layer"]) for r in R.feature_rows(ws, KEY)] == [1, 2]
    sae = R.sae_rows(ws, KEY)
    assert [r["unit"] for r in sae] == ["ft_L1", "ft_L2", "pt_L1", "pt_L2"]
    assert set(SAE_METRIC_KEYS) <= set(sae[0]) and "ft_accuracy_spliced" in sae[0]
    assert "ft/accuracy" in R.finetune_metrics(ws, KEY)
    claims = R.claims_rows(ws, KEY)  # seed-level C1-C3, then the one-seed C1, C2
    assert [r["claim"] for r in claims] == ["C1", "C2", "C3", "C1", "C2"]
    assert claims[-1]["control"].startswith("shuffled-label fine-tune, one seed")
    stage = json.loads(ws.paths.features_json(KEY.model, KEY.task, KEY.seed).read_text())
    top = [f["feature"] for f in stage["units"]["ft_L2"]["top_features"]]
    assert R.top_variance_features(ws, KEY, "ft_L2") == top and len(top) == 3
    ids = R.run_ids(ws, KEY)
    assert list(ids) == list(STAGES) and all(len(i) == 32 for i in ids.values())


def test_no_tracking_store_is_never_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert R.run_ids(Workspace(tmp_path), KEY) == {}
    assert not (tmp_path / "mlflow.db").exists()
    assert R.similarity_rows(Workspace(tmp_path), KEY) is None


def test_run_links_only_for_a_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/")
    assert R.run_link("abc") == "http://mlflow.example:5000/#/runs/abc"
    assert R.run_link("n/a") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert R.run_link("abc") is None
