"""Tests for layerwise.tracking: runs land in a real SQLite MLflow store, tagged and complete."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from layerwise import tracking
from layerwise.tracking import TrackingError, start_stage_run

EXPERIMENT = "layerwise-test"


def only_run(uri: str, experiment: str = EXPERIMENT):
    """The single run of ``experiment`` in the store at ``uri``."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture
def git_repo(tmp_path: Path) -> tuple[Path, str]:
    """A throwaway git repository (in tmp_path, not the project) with one commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("one\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=0"]
    for cmd in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "init"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    return repo, sha


def test_stage_run_lands_in_sqlite_with_tags_params_metrics(
    mlflow_uri: str, git_repo: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage run is stored under its run name with the four tags, its params and metrics
    (with steps), and ends FINISHED."""
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    repo, sha = git_repo
    with start_stage_run("prepare", "kw", EXPERIMENT, {"task": "kw"}, root=repo) as run:
        assert run.uri == mlflow_uri
        run.log_params({"seed": 0, "task_defs.kw.labels.names": ["neg", "pos"], "lr": 1e-3})
        run.log_metrics({"texts": 120, "train/rows": 60, "ok": True, "name": "x"})
        for step, loss in enumerate([0.9, 0.5, 0.2]):
            run.log_metrics({"loss": loss}, step=step)
        run_id = run.run_id
    stored = only_run(mlflow_uri)
    assert stored.info.run_id == run_id
    assert stored.info.run_name == "prepare@kw"
    assert stored.info.status == "FINISHED"
    tags = stored.data.tags
    assert tags["git_commit"] == sha
    assert tags["dvc_exp_name"] == "workspace"
    assert tags["stage"] == "prepare"
    assert tags["task"] == "kw"
    assert stored.data.params == {
        "seed": "0",
        "task_defs.kw.labels.names": "['neg', 'pos']",
        "lr": "0.001",
    }
    # Non-numeric values (bools, strings) are not metrics.
    assert stored.data.metrics == {"texts": 120.0, "train/rows": 60.0, "loss": 0.2}
    history = mlflow.MlflowClient(mlflow_uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.2)]
    assert mlflow.active_run() is None


def test_dvc_exp_name_tag_comes_from_env(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `dvc exp run` the run is tagged with DVC_EXP_NAME; outside git the commit is
    'unknown'."""
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr-small")
    with start_stage_run("sae", "tiny-kw-0", EXPERIMENT, {"task": "kw", "seed": 0}, tmp_path):
        pass
    stored = only_run(mlflow_uri)
    assert stored.info.run_name == "sae@tiny-kw-0"
    assert stored.data.tags["dvc_exp_name"] == "exp-lr-small"
    assert stored.data.tags["git_commit"] == "unknown"
    assert stored.data.tags["seed"] == "0"


def test_failed_block_marks_run_failed(mlflow_uri: str, tmp_path: Path) -> None:
    """An exception in the block propagates unchanged and the run ends FAILED."""
    with (
        pytest.raises(RuntimeError, match="boom"),
        start_stage_run("prepare", "kw", EXPERIMENT, {"task": "kw"}, root=tmp_path) as run,
    ):
        run.log_metrics({"texts": 1})
        raise RuntimeError("boom")
    stored = only_run(mlflow_uri)
    assert stored.info.status == "FAILED"
    assert stored.info.end_time is not None
    assert stored.data.metrics == {"texts": 1.0}
    assert mlflow.active_run() is None


def test_rejected_log_is_a_tracking_error(mlflow_uri: str, tmp_path: Path) -> None:
    """A write MLflow refuses (changing a logged param) raises TrackingError naming the URI,
    and the run is marked FAILED."""
    with (
        pytest.raises(
            TrackingError, match=re.escape(f"log_params failed for tracking URI {mlflow_uri!r}")
        ),
        start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path) as run,
    ):
        run.log_params({"seed": 0})
        run.log_params({"seed": 1})
    stored = only_run(mlflow_uri)
    assert stored.info.status == "FAILED"
    assert stored.data.params == {"seed": "0"}


def test_more_than_100_params_are_batched(mlflow_uri: str, tmp_path: Path) -> None:
    """MLflow caps one batch at 100 params: 250 params still all arrive."""
    params = {f"p{i:03d}": i for i in range(250)}
    with start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path) as run:
        run.log_params(params)
    assert only_run(mlflow_uri).data.params == {k: str(v) for k, v in params.items()}


def test_unreachable_uri_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An HTTP store nobody listens on fails in seconds with TrackingError naming the URI;
    nothing is written to the default SQLite store instead."""
    uri = "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(var, "unset-below")  # so monkeypatch restores the variable...
        monkeypatch.delenv(var)  # ...that the library's own default must now provide
    start = time.monotonic()
    with (
        pytest.raises(TrackingError) as info,
        start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path),
    ):
        pytest.fail("the block must not run when the store is unreachable")
    assert time.monotonic() - start < 30
    assert repr(uri) in str(info.value)
    assert "MLFLOW_TRACKING_URI" in str(info.value)
    assert not (tmp_path / tracking.DEFAULT_DB).exists()
    assert mlflow.active_run() is None


def test_tracking_uri_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLFLOW_TRACKING_URI the store is sqlite:///<root>/mlflow.db; with it, the env."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking.tracking_uri(tmp_path) == "sqlite:////elsewhere/x.db"


def test_git_commit_marks_dirty_tree(git_repo: tuple[Path, str], tmp_path: Path) -> None:
    """git_commit is HEAD, with -dirty once a tracked file changes; 'unknown' outside git."""
    repo, sha = git_repo
    assert tracking.git_commit(repo) == sha
    (repo / "untracked.txt").write_text("ignored by the dirty check\n")
    assert tracking.git_commit(repo) == sha
    (repo / "f.txt").write_text("two\n")
    assert tracking.git_commit(repo) == f"{sha}-dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert tracking.git_commit(outside) == "unknown"


def test_failed_tagging_does_not_leave_an_active_run(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If tagging the new run fails, the run is ended FAILED and no run stays active."""

    def refuse(*args, **kwargs):
        raise RuntimeError("tags refused")

    monkeypatch.setattr(mlflow, "set_tags", refuse)
    try:
        with (
            pytest.raises(TrackingError, match="set_tags failed"),
            start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path),
        ):
            pytest.fail("the block must not run when tagging failed")
        assert mlflow.active_run() is None
        assert only_run(mlflow_uri).info.status == "FAILED"
    finally:
        if mlflow.active_run() is not None:  # keep later tests isolated while the bug lasts
            mlflow.end_run("FAILED")


def test_dvc_root_holds_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _mlflow_template_db: Path
) -> None:
    """Under DVC (``DVC_ROOT`` set, also for a queued experiment running in a temp copy of the
    repo) the default store and the local artifacts belong to the DVC repo, not to the copy."""
    repo, copy = tmp_path / "repo", tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    shutil.copyfile(_mlflow_template_db, repo / tracking.DEFAULT_DB)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking.tracking_uri(copy) == f"sqlite:///{repo.resolve()}/mlflow.db"
    with start_stage_run("prepare", "kw", EXPERIMENT, root=copy):
        pass
    client = mlflow.MlflowClient(tracking.tracking_uri(copy))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (repo.resolve() / "mlartifacts").as_uri()
    assert sorted(p.name for p in copy.iterdir()) == []


def test_exp_baseline_is_tagged_under_dvc_exp_run(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dvc exp run`` also sets the baseline commit: runs carry it, so experiments of the same
    name on different baselines stay apart."""
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    with start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path):
        pass
    tags = only_run(mlflow_uri).data.tags
    assert (tags["dvc_exp_name"], tags["dvc_exp_baseline_rev"]) == ("exp-a", "abc123")


class Locked(Exception):
    """What SQLite raises through SQLAlchemy when it refuses a write."""

    def __init__(self) -> None:
        super().__init__("(sqlite3.OperationalError) database is locked")


def fail_first(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, times: int) -> list:
    """``owner.name`` raises :class:`Locked` on its first ``times`` calls, then works."""
    original = getattr(owner, name)
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise Locked()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return calls


def test_locked_writes_are_retried(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write refused with "database is locked" (metrics, and the final status, which
    ``mlflow.end_run`` forgets before writing) is done again, and the run ends complete."""
    metric_calls = fail_first(monkeypatch, mlflow, "log_metrics", times=2)
    end_calls = fail_first(monkeypatch, mlflow.MlflowClient, "set_terminated", times=1)
    with start_stage_run("prepare", "kw", EXPERIMENT, root=tmp_path) as run:
        run.log_metrics({"texts": 3})
    stored = only_run(mlflow_uri)
    assert stored.data.metrics == {"texts": 3.0}
    assert stored.info.status == "FINISHED"
    assert (len(metric_calls), len(end_calls)) == (3, 2)
    assert mlflow.active_run() is None


def test_logged_dataset_names_source_and_digest(mlflow_uri: str, tmp_path: Path) -> None:
    """``log_dataset`` records name, digest, source and context as the run's dataset input;
    ``dir_md5`` depends on every file's path and bytes only."""
    split = tmp_path / "split"
    (split / "train").mkdir(parents=True)
    (split / "train" / "data.arrow").write_bytes(b"rows")
    (split / "dataset_dict.json").write_text('{"splits": ["train"]}')
    digest = tracking.dir_md5(split)
    same = tmp_path / "copy"
    shutil.copytree(split, same)
    assert tracking.dir_md5(same) == digest
    (same / "train" / "data.arrow").write_bytes(b"other rows")
    assert tracking.dir_md5(same) != digest
    with start_stage_run("sae", "tiny-kw-0", EXPERIMENT, root=tmp_path) as run:
        run.log_dataset("kw", {"source": "kw.csv", "path": "split"}, digest, "input")
    (used,) = only_run(mlflow_uri).inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest) == ("kw", digest)
    assert json.loads(used.dataset.source) == {"source": "kw.csv", "path": "split"}
    assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "input")]


WRITER = """
import sys
from layerwise.tracking import start_stage_run

with start_stage_run("sae", sys.argv[2], "layerwise", {"task": "kw"}, root=sys.argv[1]) as run:
    run.log_params({f"p{i}": i for i in range(150)})
    for step in range(int(sys.argv[3])):
        run.log_metrics({"loss": 1 / (step + 1), "fvu": step / 100}, step=step)
"""


@pytest.mark.slow
def test_two_stages_logging_at_once_to_a_new_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stage processes start together on a default store that does not exist yet (both
    would create and migrate it, both create the experiment: ``dvc queue start -j 2`` on a
    fresh clone) and log metric steps concurrently: both runs finish with every step."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    steps = 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), item, str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for item in ("a", "b")
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    uri = tracking.tracking_uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("layerwise").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sae@a", "sae@b"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(run.data.params) == 150
        assert len(client.get_metric_history(run.info.run_id, "loss")) == steps
