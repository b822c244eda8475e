"""Stages against a real tracking server (``make mlflow-server`` itself, on a free localhost
port): runs land on the server with their params, metrics, dataset and artifacts; the artifacts
live in the server's store, not beside the client, and a second client downloads them through
the server; the paper stage finds the runs' ids there."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import load_stage, write_keyword_csv
from reliability.reliability_support import tiny_params_dict
from team_support import HOST, files_of, free_port, make_mlflow_server, server_env, serving

from layerwise import tracking
from layerwise.paths import Paths
from layerwise.pipeline.paper import find_run_ids

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EXPERIMENT = "layerwise"


@dataclass(frozen=True)
class Server:
    uri: str
    artifacts: Path


@dataclass(frozen=True)
class StageRuns:
    """prepare + finetune of the tiny task, logged to the server from ``root``."""

    server: Server
    root: Path
    csv: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path):
    """``make mlflow-server``'s defaults under a temp store: a SQLite backend (a copy of the
    migrated template, to save the migration) and a local artifact root the server serves."""
    store = tmp_path_factory.mktemp("mlflow_server")
    shutil.copyfile(_mlflow_template_db, store / "mlflow.db")
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = make_mlflow_server(port, store)
    with serving(cmd, f"{url}/health", store / "server.log", env=server_env()):
        yield Server(uri=url, artifacts=store / "artifacts")


@pytest.fixture(scope="module")
def stage_runs(
    server: Server,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert_dir: Path,
) -> StageRuns:
    """The real prepare and finetune stages (one epoch) of the tiny task, logging to the server;
    the working directory is a scratch folder so nothing can land in the repo."""
    base = tmp_path_factory.mktemp("server_client")
    csv = write_keyword_csv(base / "keywords.csv")
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(csv, tiny_bert_dir), sort_keys=False))
    root = base / "root"
    keys = ["--params", str(params), "--root", str(root)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)
        mp.delenv("DVC_ROOT", raising=False)
        mp.chdir(base)
        load_stage("prepare").main(["--task", "kw", *keys])
        load_stage("finetune").main(["--model", "tiny", "--task", "kw", "--seed", "0", *keys])
    return StageRuns(server=server, root=root, csv=str(csv))


def _runs(uri: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_runs_carry_params_metrics_and_dataset(stage_runs: StageRuns) -> None:
    """Both runs FINISHED on the server with their params and metrics; each names the task's
    prepared split as its dataset (source from params, digest = DVC's md5 of the split)."""
    runs = _runs(stage_runs.server.uri)
    assert set(runs) == {"prepare@kw", "finetune@tiny-kw-0"}
    prepare, finetune = runs["prepare@kw"], runs["finetune@tiny-kw-0"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert prepare.data.params["task_defs.kw.max_train"] == "60"
    assert prepare.data.metrics["train/rows"] == 60.0
    assert float(finetune.data.params["finetune.epochs"]) == 1
    assert "ft/accuracy" in finetune.data.metrics
    digest = tracking.dir_md5(Paths(stage_runs.root).prepared("kw"))
    for run, context in ((prepare, "output"), (finetune, "input")):
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == "kw"
        assert used.dataset.digest == digest
        source = json.loads(used.dataset.source)
        assert source == {"source": stage_runs.csv, "path": "data/prepared/kw"}
        assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == context


def test_artifacts_live_on_the_server_and_download_through_it(
    stage_runs: StageRuns, tmp_path: Path
) -> None:
    """The experiment has no client-local artifact location: the curve artifact is in the
    server's artifact root, nothing is written beside the client, and a second client gets the
    same bytes through the server's HTTP API."""
    server = stage_runs.server
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert not (stage_runs.root / tracking.ARTIFACTS_DIR).exists()
    assert not (stage_runs.root / "mlruns").exists()

    run = _runs(server.uri)["finetune@tiny-kw-0"]
    stored = [p for p in server.artifacts.rglob("s0.csv") if run.info.run_id in p.parts]
    assert len(stored) == 1
    got = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="plots", dst_path=str(tmp_path),
        tracking_uri=server.uri,
    )  # fmt: skip
    curve = Paths(stage_runs.root).finetune_curve("tiny", "kw", 0)
    assert files_of(Path(got)) == {"s0.csv": curve.read_bytes()}
    assert stored[0].read_bytes() == curve.read_bytes()


def test_paper_finds_the_run_ids_on_the_server(
    stage_runs: StageRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``find_run_ids`` (the paper stage's provenance lookup) reads the server: it returns each
    stage run's id and ``n/a`` for a stage that never ran."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stage_runs.server.uri)
    runs = _runs(stage_runs.server.uri)
    names = ["prepare@kw", "finetune@tiny-kw-0", "sae@tiny-kw-0"]
    assert find_run_ids(stage_runs.root, EXPERIMENT, names) == {
        "prepare@kw": runs["prepare@kw"].info.run_id,
        "finetune@tiny-kw-0": runs["finetune@tiny-kw-0"].info.run_id,
        "sae@tiny-kw-0": "n/a",
    }
