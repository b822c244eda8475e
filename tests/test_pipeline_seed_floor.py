"""The seed_floor stage: FT-vs-FT similarity over every seed pair, on the tiny pipeline with two
seeds; a model against an identical copy of itself sits at 1; one seed gives NaN rows, not an
error."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from conftest import write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    TASK,
    run_stage,
    stage_module,
    tiny_params_dict,
    tmp_leftovers,
    write_params,
)

from layerwise.config import ConfigError
from layerwise.paths import Paths
from layerwise.schema import SEED_FLOOR_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_LAYERS = 3  # the tiny BERT: embeddings + 2 blocks


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare and finetune of seeds 0 and 1 on the reliability suite's tiny params, run once
    into a template repo; also a params file that lists seed 0 only."""
    base = tmp_path_factory.mktemp("seed_floor_upstream")
    raw = tiny_params_dict(write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    params = write_params(base / "params.yaml", {**raw, "seeds": [0, 1]})
    one_seed = write_params(base / "one_seed.yaml", {**raw, "seeds": [0]})
    root = base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        run_stage("prepare", params, root)
        for seed in (0, 1):
            run_stage("finetune", params, root, seed=seed)
    return SimpleNamespace(root=root, params=params, one_seed=one_seed)


@pytest.fixture
def repo(upstream: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the upstream repo, the working directory in tmp (MLflow artifacts)."""
    root = tmp_path / "repo"
    shutil.copytree(upstream.root, root)
    monkeypatch.chdir(tmp_path)
    return root


def run_seed_floor(params: Path, root: Path) -> dict:
    argv = ["--model", MODEL, "--task", TASK, "--params", str(params), "--root", str(root)]
    return stage_module("seed_floor").main(argv)


def read_rows(root: Path) -> tuple[list[str], list[dict[str, float]]]:
    with Paths(root).seed_floor_csv(MODEL, TASK).open() as fh:
        reader = csv.DictReader(fh)
        rows = [{k: float(v) for k, v in row.items()} for row in reader]
    return list(reader.fieldnames or []), rows


def test_two_seeds(upstream: SimpleNamespace, repo: Path, mlflow_uri: str) -> None:
    """One pair: a SEED_FLOOR_COLUMNS row per layer 0..L with cosine in [-1, 1], CKA in [0, 1]
    and mean = min = max; the JSON holds the pair's per-layer values inside their CIs and the
    summary that main returns; a FINISHED MLflow run logs it; no temp paths are left."""
    summary = run_seed_floor(upstream.params, repo)
    columns, rows = read_rows(repo)
    assert columns == list(SEED_FLOOR_COLUMNS)
    assert [r["layer"] for r in rows] == list(range(N_LAYERS))
    assert [r["depth"] for r in rows] == [0.0, 0.5, 1.0]
    for row in rows:
        assert row["n_pairs"] == 1
        assert -1.0 <= row["cosine_mean"] <= 1.0
        assert 0.0 <= row["cka_mean"] <= 1.0
        for metric in ("cosine", "cka"):
            assert row[f"{metric}_min"] == row[f"{metric}_mean"] == row[f"{metric}_max"]

    written = json.loads(Paths(repo).seed_floor_json(MODEL, TASK).read_text())
    assert {k: written[k] for k in summary} == summary
    assert summary["n_pairs"] == 1 and summary["n_texts"] == 30 and summary["n_tokens"] > 0
    (pair,) = written["pairs"]
    assert pair["seeds"] == [0, 1]
    for row, layer in zip(rows, pair["layers"], strict=True):
        assert layer["cosine"] == pytest.approx(row["cosine_mean"])
        assert layer["cosine_lo"] <= layer["cosine"] <= layer["cosine_hi"]
        assert summary[f"cka/L{layer['layer']}/mean"] == pytest.approx(layer["cka"])
    # Fine-tuning with another seed moves the last layer away from the first seed's.
    assert rows[-1]["cosine_mean"] < 0.999
    assert tmp_leftovers(repo) == []

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'seed_floor'")
    assert run.info.run_name == f"seed_floor@{MODEL}-{TASK}"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["cosine/L2/mean"] == pytest.approx(summary["cosine/L2/mean"])
    assert run.data.params["seeds"] == "[0, 1]"


def test_identical_copies_give_one(upstream: SimpleNamespace, repo: Path, mlflow_uri: str) -> None:
    """Seed 1's folder replaced by a copy of seed 0's: cosine 1 and CKA 1 at every layer."""
    paths = Paths(repo)
    shutil.rmtree(paths.finetuned(MODEL, TASK, 1))
    shutil.copytree(paths.finetuned(MODEL, TASK, 0), paths.finetuned(MODEL, TASK, 1))
    run_seed_floor(upstream.params, repo)
    _, rows = read_rows(repo)
    assert len(rows) == N_LAYERS
    for row in rows:
        assert row["cosine_mean"] == pytest.approx(1.0, abs=1e-5)
        assert row["cka_mean"] == pytest.approx(1.0, abs=1e-5)


def test_one_seed_writes_nan_rows(
    upstream: SimpleNamespace, repo: Path, mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With seeds [0] there is no pair: every layer still has a row, its values NaN and
    n_pairs 0, and a warning says why (the pipeline runs with one seed)."""
    shutil.rmtree(Paths(repo).finetuned(MODEL, TASK, 1))
    with caplog.at_level(logging.WARNING, logger="seed_floor"):
        summary = run_seed_floor(upstream.one_seed, repo)
    assert "no pair to compare" in caplog.text
    _, rows = read_rows(repo)
    assert [r["layer"] for r in rows] == list(range(N_LAYERS))
    for row in rows:
        assert row["n_pairs"] == 0
        assert all(math.isnan(row[c]) for c in SEED_FLOOR_COLUMNS[2:-1])
    assert summary["n_pairs"] == 0
    assert json.loads(Paths(repo).seed_floor_json(MODEL, TASK).read_text())["pairs"] == []


def test_missing_seed_names_its_finetune(upstream: SimpleNamespace, repo: Path) -> None:
    """A seed's fine-tune missing fails naming the stage that makes it, writing nothing."""
    shutil.rmtree(Paths(repo).finetuned(MODEL, TASK, 1))
    with pytest.raises(FileNotFoundError, match=f"finetune@{MODEL}-{TASK}-1"):
        run_seed_floor(upstream.params, repo)
    assert not Paths(repo).seed_floor_csv(MODEL, TASK).exists()


def test_models_of_another_depth_are_refused(upstream: SimpleNamespace, repo: Path) -> None:
    """A seed folder holding a model of another depth (a stale fine-tune of another source)
    fails naming the difference, before any output is written."""
    from transformers import BertModel

    paths = Paths(repo)
    shallow = paths.finetuned(MODEL, TASK, 1)
    model = BertModel.from_pretrained(str(shallow), num_hidden_layers=1)
    shutil.rmtree(shallow)
    model.save_pretrained(str(shallow))
    shutil.copy(paths.finetuned(MODEL, TASK, 0) / "tokenizer.json", shallow)
    shutil.copy(paths.finetuned(MODEL, TASK, 0) / "tokenizer_config.json", shallow)
    with pytest.raises(ConfigError, match="differ in num_hidden_layers: 2 vs 1"):
        run_seed_floor(upstream.params, repo)
    assert not paths.seed_floor_csv(MODEL, TASK).exists()
