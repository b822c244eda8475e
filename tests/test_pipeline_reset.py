"""The reset stage on the tiny pipeline: it writes reset.csv with exactly ``RESET_COLUMNS`` and a
row per direction and k = 0..L, reset.json with the exact metric keys (what ``main`` returns),
its k = 0 row is the fine-tuned classifier the finetune stage scored, and its MLflow run
finishes with the same numbers; without a fine-tuned model it fails before any run opens."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from conftest import write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    SEED,
    TASK,
    run_pipeline,
    run_stage,
    tiny_params_dict,
    torch_threads,
    write_params,
)

from layerwise.controls import DIRECTIONS
from layerwise.errors import MissingInputError
from layerwise.paths import Paths
from layerwise.schema import RESET_COLUMNS

KEY = (MODEL, TASK, SEED)
N_BLOCKS = 2


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare and finetune of tiny-kw-0, run once into a template repo (trained long enough
    that the fine-tune beats the majority class: there is a gain to lose)."""
    base = tmp_path_factory.mktemp("reset_upstream")
    raw = tiny_params_dict(write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    raw["finetune"].update(epochs=10, learning_rate=3e-3)
    params, root = write_params(base / "params.yaml", raw), base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        _, metrics = run_pipeline(params, root, stages=("prepare", "finetune"))
    return SimpleNamespace(root=root, params=params, finetune=metrics["finetune"])


def _expected_keys() -> set[str]:
    per_direction = {
        f"{d}/{name}"
        for d in DIRECTIONS
        for name in ("midpoint", "midpoint_depth", *(f"accuracy_k{k}" for k in range(3)))
    }
    return {"ft/accuracy", "data/majority_accuracy", "data/n_val", "n_blocks", *per_direction}


def test_stage_end_to_end(
    upstream: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(upstream.root, repo)
    monkeypatch.chdir(tmp_path)
    with torch_threads(1):
        metrics = run_stage("reset", upstream.params, repo)
    paths = Paths(repo)

    with paths.reset_csv(*KEY).open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == list(RESET_COLUMNS)
    assert len(rows) == 2 * (N_BLOCKS + 1)
    by = {(r["direction"], int(r["k"])): r for r in rows}
    assert set(by) == {(d, k) for d in DIRECTIONS for k in range(N_BLOCKS + 1)}
    for d in DIRECTIONS:  # k = 0 and k = L are the same model in both directions
        assert by[(d, 0)]["blocks"] == "" and float(by[(d, 0)]["lost_gain"]) == 0.0
        assert by[(d, 0)]["accuracy"] == by[(DIRECTIONS[0], 0)]["accuracy"]
        assert by[(d, N_BLOCKS)]["accuracy"] == by[(DIRECTIONS[0], N_BLOCKS)]["accuracy"]
        assert by[(d, N_BLOCKS)]["blocks"] == f"1-{N_BLOCKS}"
    assert (by[("bottom_up", 1)]["blocks"], by[("top_down", 1)]["blocks"]) == ("1-1", "2-2")
    for r in rows:
        assert float(r["accuracy_lo"]) <= float(r["accuracy"]) <= float(r["accuracy_hi"])

    written = json.loads(paths.reset_json(*KEY).read_text())
    assert written == metrics
    assert set(written) == _expected_keys()
    n_val = written["data/n_val"]
    ft = upstream.finetune
    assert written["data/majority_accuracy"] == ft["data/majority_accuracy"]
    assert written["ft/accuracy"] > written["data/majority_accuracy"]  # a gain to lose
    # The same classifier on the same texts; batching and padding may flip at most one text.
    assert abs(written["ft/accuracy"] - ft["ft/accuracy"]) <= 1 / n_val + 1e-9
    for d in DIRECTIONS:
        assert written[f"{d}/accuracy_k0"] == written["ft/accuracy"]
        mid = written[f"{d}/midpoint"]
        assert math.isnan(mid) or written[f"{d}/midpoint_depth"] == mid / N_BLOCKS

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'reset'")
    assert run.info.run_name == f"reset@{MODEL}-{TASK}-{SEED}"
    assert run.info.status == "FINISHED"
    finite = {k: v for k, v in written.items() if not math.isnan(v)}
    assert {k: run.data.metrics[k] for k in finite} == pytest.approx(finite)


def test_without_a_finetuned_model_it_fails_before_any_run(
    upstream: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(upstream.root, repo)
    shutil.rmtree(Paths(repo).finetuned(*KEY))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError, match=f"finetune@{MODEL}-{TASK}-{SEED}"):
        run_stage("reset", upstream.params, repo)
    assert not Paths(repo).reset_json(*KEY).exists()
    experiment = mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("layerwise")
    assert experiment is None or not mlflow.MlflowClient(mlflow_uri).search_runs(
        [experiment.experiment_id], "tags.stage = 'reset'"
    )
