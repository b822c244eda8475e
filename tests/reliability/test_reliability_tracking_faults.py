"""Tracking faults: an MLflow store that stops accepting writes mid-stage fails the stage with a
TrackingError naming the URI and leaves the DVC outputs exactly as they were; params with an
unknown key are rejected, naming the key, before anything runs."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from layerwise.config import ConfigError
from layerwise.tracking import TrackingError

from .reliability_support import (
    STAGES,
    Workspace,
    diff_snapshots,
    run_stage,
    snapshot,
    tmp_leftovers,
)

READONLY = "(sqlite3.OperationalError) attempt to write a readonly database"


def store_goes_read_only(monkeypatch: pytest.MonkeyPatch, function: str) -> list[int]:
    """From now on ``mlflow.<function>`` fails as a read-only SQLite store does; returns a list
    counting the calls (each one happens after the stage's run started)."""
    calls: list[int] = []

    def fail(*args, **kwargs):
        calls.append(1)
        assert mlflow.active_run() is not None, "the run should have started"
        raise MlflowException(READONLY)

    monkeypatch.setattr(mlflow, function, fail)
    return calls


FAULTS = [
    # (stage, failing MLflow call): log_metrics fails at the first step log of finetune and
    # sae (mid-training, outputs staged in temp paths) and at the end of prepare, compare and
    # features (all outputs staged, not yet committed); the artifact calls fail last of all.
    *[(stage, "log_metrics") for stage in STAGES],
    ("finetune", "log_artifact"),
    ("compare", "log_artifact"),
    ("sae", "log_artifact"),
    ("features", "log_artifacts"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "function"), FAULTS, ids=[f"{s}-{f}" for s, f in FAULTS])
def test_store_unwritable_mid_stage_keeps_outputs(
    stage: str, function: str, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage fails with TrackingError naming the tracking URI and the failed call; every
    pre-existing output is byte-for-byte unchanged (same mtime too), nothing new is written,
    no temp path is left, and the MLflow run is marked FAILED."""
    ws = workspace
    before = snapshot(ws.root, dirs=False, artifacts=False)
    calls = store_goes_read_only(monkeypatch, function)

    with pytest.raises(TrackingError) as info:
        run_stage(stage, ws.params, ws.root)

    message = str(info.value)
    assert type(info.value) is TrackingError
    assert repr(ws.mlflow_uri) in message
    assert function in message
    assert "readonly database" in message
    assert len(calls) == 1
    assert diff_snapshots(before, snapshot(ws.root, dirs=False, artifacts=False)) == {
        "created": [],
        "removed": [],
        "changed": [],
    }
    assert tmp_leftovers(ws.root) == []
    client = mlflow.MlflowClient(ws.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("layerwise").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["stage"] == stage


UNKNOWN_KEYS = [
    ("sae", ["sae", "expanson"], "sae.expanson"),
    ("finetune", ["finetune", "epoch"], "finetune.epoch"),
    ("prepare", ["task_defs", "kw", "max_trian"], "task_defs.kw.max_trian"),
    ("prepare", ["task_defs", "kw", "labels", "nmes"], "task_defs.kw.labels.nmes"),
    ("compare", ["models", "tiny", "layer"], "models.tiny.layer"),
    ("features", ["feature"], "feature"),
]


@pytest.mark.parametrize(
    ("stage", "path", "named"), UNKNOWN_KEYS, ids=[named for _, _, named in UNKNOWN_KEYS]
)
def test_unknown_params_key_is_rejected(
    stage: str, path: list[str], named: str, workspace: Workspace
) -> None:
    """A typo'd params key fails the stage with a ConfigError naming the dotted key, before an
    MLflow run starts, and the output tree is untouched."""
    ws = workspace
    node = ws.raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = 8
    ws.write_params()
    before = snapshot(ws.root)

    with pytest.raises(ConfigError, match="unknown key") as info:
        run_stage(stage, ws.params, ws.root)

    assert named in str(info.value)
    assert diff_snapshots(before, snapshot(ws.root)) == {
        "created": [],
        "removed": [],
        "changed": [],
    }
    assert mlflow.MlflowClient(ws.mlflow_uri).get_experiment_by_name("layerwise") is None
