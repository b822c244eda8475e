"""Smoke and failure tests of the prepare stage (stages/prepare.py -> layerwise.pipeline.prepare):
outputs, metrics, MLflow run, atomicity, and one-line user errors from the command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
import pytest
import yaml
from conftest import REPO_PARAMS, REPO_ROOT, load_stage, make_keyword_texts

from layerwise import data, io, tracking
from layerwise.config import ConfigError
from layerwise.data import DataError
from layerwise.errors import UserError
from layerwise.paths import Paths


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    """stages/prepare.py imported as a module (it is a script, not part of the package)."""
    return load_stage("prepare")


def expected_keys(labels: list[str]) -> set[str]:
    keys = {"texts", "classes"}
    for split in data.SPLITS:
        keys |= {f"{split}/rows", *(f"{split}/label/{name}" for name in labels)}
        keys |= {f"{split}/tokens/{s}" for s in ("mean", "median", "p95", "max")}
    return keys


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"{io.TMP_PREFIX}*"))


def run_prepare(prepare: ModuleType, task: str, params: Path, root: Path) -> dict:
    return prepare.main(["--task", task, "--params", str(params), "--root", str(root)])


def test_prepare_kw_end_to_end(
    prepare: ModuleType, tiny_params: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    """prepare@kw writes loadable splits of the requested sizes, a metrics JSON with the exact
    key set (the returned dict), and a FINISHED MLflow run holding the same metrics."""
    metrics = run_prepare(prepare, "kw", tiny_params, tmp_path)
    paths = Paths(tmp_path)

    splits = data.load_splits(paths.prepared("kw"))
    assert {s: len(splits[s]) for s in data.SPLITS} == {"train": 60, "val": 20, "analysis": 30}
    assert splits["train"].features["label"].names == ["negative", "positive"]

    written = json.loads(paths.prepare_metrics("kw").read_text())
    assert written == metrics
    assert set(written) == expected_keys(["negative", "positive"])
    assert written["texts"] == 120
    assert written["classes"] == 2
    for split, n in (("train", 60), ("val", 20), ("analysis", 30)):
        assert written[f"{split}/rows"] == n
        assert written[f"{split}/label/negative"] == written[f"{split}/label/positive"] == n // 2
        # 6-12 words + keyword, one WordPiece each, + [CLS] and [SEP].
        assert 9 <= written[f"{split}/tokens/mean"] <= 15
        assert written[f"{split}/tokens/max"] <= 15
    assert leftovers(tmp_path) == []

    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("layerwise").experiment_id])
    assert run.info.run_name == "prepare@kw"
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "prepare"
    assert run.data.tags["task"] == "kw"
    assert run.data.metrics == {k: float(v) for k, v in written.items()}
    assert run.data.params["task_defs.kw.max_val"] == "20"
    assert run.data.params["seed"] == "0"
    assert "data.min_chars" in run.data.params


def test_prepare_is_deterministic(
    prepare: ModuleType, tiny_params: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    """Running twice with the same params gives the same splits (the output is replaced)."""
    run_prepare(prepare, "kw", tiny_params, tmp_path)
    first = data.load_splits(Paths(tmp_path).prepared("kw"))
    first = {s: first[s]["text"] for s in data.SPLITS}
    run_prepare(prepare, "kw", tiny_params, tmp_path)
    second = data.load_splits(Paths(tmp_path).prepared("kw"))
    assert {s: second[s]["text"] for s in data.SPLITS} == first
    assert leftovers(tmp_path) == []


def test_unknown_task_fails_before_writing(
    prepare: ModuleType, tiny_params: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    """An unknown --task fails naming the known tasks; no data/ or metrics/ dir appears and
    no MLflow run is started."""
    with pytest.raises(ConfigError, match=r"unknown task 'nope'; known tasks: \['kw'\]"):
        run_prepare(prepare, "nope", tiny_params, tmp_path)
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "metrics").exists()
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("layerwise") is None


def run_script(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python stages/prepare.py <argv>`` as a user runs it (without LAYERWISE_DEBUG unless
    given)."""
    environ = {k: v for k, v in os.environ.items() if k != "LAYERWISE_DEBUG"} | env
    command = [sys.executable, str(REPO_ROOT / "stages" / "prepare.py"), *argv]
    return subprocess.run(
        command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


def test_user_error_is_one_line_and_exit_status_2(
    tiny_params: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    """From the command line an unknown task prints exactly one line, ``error: ...`` naming the
    task and the known ones, and exits with status 2, without a traceback; with
    LAYERWISE_DEBUG=1 the traceback is shown. Nothing is written either way."""
    root = tmp_path / "repo"
    argv = ["--task", "nosuch", "--params", str(tiny_params), "--root", str(root)]
    done = run_script(argv, tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: unknown task 'nosuch'; known tasks: ['kw']"]
    assert "Traceback" not in done.stdout + done.stderr

    debug = run_script(argv, tmp_path, LAYERWISE_DEBUG="1")
    assert debug.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError: unknown task 'nosuch'" in debug.stderr
    assert not root.exists()
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("layerwise") is None


def latin1_csv(path: Path) -> str:
    path.write_bytes("text,label\ncafé crème is great,positive\n".encode("latin-1"))
    return f"{path} cannot be decoded as utf-8"


def one_text_class_csv(path: Path) -> str:
    texts, labels = make_keyword_texts(120, 0)
    labels[0] = "neutral"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *zip(texts, labels, strict=True)])
    return "class(es) {'neutral': 1} have fewer than 3 texts"


@pytest.mark.parametrize("make_source", [latin1_csv, one_text_class_csv], ids=["encoding", "split"])
def test_bad_data_is_a_user_error_naming_it(
    prepare: ModuleType,
    tiny_params: Path,
    mlflow_uri: str,
    tmp_path: Path,
    make_source: Any,
) -> None:
    """A source that is not UTF-8, or a class too small to split, fails as a DataError (one
    line at the command line) naming the file or the class; nothing is written."""
    source = tmp_path / "source.csv"
    expected = make_source(source)
    raw = yaml.safe_load(tiny_params.read_text())
    raw["task_defs"]["kw"]["source"] = str(source)
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    root = tmp_path / "repo"
    with pytest.raises(DataError) as info:
        run_prepare(prepare, "kw", params, root)
    assert isinstance(info.value, UserError)
    assert expected in str(info.value)
    assert not root.exists()


def _fail(*args, **kwargs):
    raise RuntimeError("injected failure")


FAILURES = {
    # before anything is staged
    "split_stats": (data, "split_stats"),
    # after the splits were saved to the staging dir
    "write_json": (io, "write_json"),
    # after both outputs were staged, while logging to MLflow
    "log_metrics": (tracking.StageRun, "log_metrics"),
}


@pytest.mark.parametrize("where", list(FAILURES))
def test_failure_in_the_middle_leaves_nothing(
    prepare: ModuleType,
    tiny_params: Path,
    mlflow_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """A failure at any point leaves no output path, no temp leftovers, and a FAILED run."""
    monkeypatch.setattr(*FAILURES[where], _fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_prepare(prepare, "kw", tiny_params, tmp_path)
    paths = Paths(tmp_path)
    assert not paths.prepared("kw").exists()
    assert not paths.prepare_metrics("kw").exists()
    assert leftovers(tmp_path) == []
    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("layerwise").experiment_id])
    assert run.info.status == "FAILED"


def test_failure_keeps_previous_outputs(
    prepare: ModuleType,
    tiny_params: Path,
    mlflow_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed rerun leaves the previous complete outputs exactly as they were."""
    run_prepare(prepare, "kw", tiny_params, tmp_path)
    paths = Paths(tmp_path)
    before_metrics = paths.prepare_metrics("kw").read_bytes()
    before_files = {
        p.relative_to(paths.prepared("kw")): p.read_bytes()
        for p in paths.prepared("kw").rglob("*")
        if p.is_file()
    }
    monkeypatch.setattr(tracking.StageRun, "log_metrics", _fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_prepare(prepare, "kw", tiny_params, tmp_path)
    assert paths.prepare_metrics("kw").read_bytes() == before_metrics
    after_files = {
        p.relative_to(paths.prepared("kw")): p.read_bytes()
        for p in paths.prepared("kw").rglob("*")
        if p.is_file()
    }
    assert after_files == before_files
    assert leftovers(tmp_path) == []


def test_prepare_real_sentiment(prepare: ModuleType, mlflow_uri: str, tmp_path: Path) -> None:
    """prepare@sentiment with the repo's params: 10,070 texts, splits 2000/500/1000 with the
    measured class counts, token lengths from the MiniLM tokenizer."""
    metrics = run_prepare(prepare, "sentiment", REPO_PARAMS, tmp_path)
    assert set(metrics) == expected_keys(["negative", "positive"])
    assert metrics["texts"] == 10070
    assert metrics["classes"] == 2
    assert {k: v for k, v in metrics.items() if "/tokens/" not in k} == {
        "texts": 10070,
        "classes": 2,
        "train/rows": 2000,
        "train/label/negative": 1008,
        "train/label/positive": 992,
        "val/rows": 500,
        "val/label/negative": 252,
        "val/label/positive": 248,
        "analysis/rows": 1000,
        "analysis/label/negative": 504,
        "analysis/label/positive": 496,
    }
    assert 20 < metrics["train/tokens/mean"] < 35
    splits = data.load_splits(Paths(tmp_path).prepared("sentiment"))
    assert len(splits["analysis"]) == 1000
    assert json.loads(Paths(tmp_path).prepare_metrics("sentiment").read_text()) == metrics
