"""Parallel experiments: two ``dvc exp run --queue -S ...`` run at once under ``dvc queue start
-j 2`` (each in its own temp copy of the repo), both show in ``dvc exp show``, in ``make
compare``'s table and in the repo's MLflow store under their names. (Two stages writing one
SQLite store at once: ``test_tracking``.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from conftest import write_keyword_csv
from reliability.reliability_support import tiny_params_dict
from team_support import BIN, dvc, make_project, project_env, run

from layerwise import tracking

pytestmark = pytest.mark.slow

EXPERIMENTS = {"rows-40": 40, "rows-50": 50}
QUEUE_TIMEOUT_S = 600
POLL_S = 4  # each status call starts DVC: the two experiments need the two cores more


def _queue_status(project: Path, env: dict[str, str], done: Callable[[str], bool]) -> str:
    """Poll ``dvc queue status`` until ``done(status)``; return that status."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = dvc("queue", "status", cwd=project, env=env)
        if done(status):
            return status
        assert time.monotonic() < deadline, f"queue still busy:\n{status}"
        time.sleep(POLL_S)


def _run_queue(project: Path, env: dict[str, str], log: Path) -> str:
    """``dvc queue start -j 2``, wait for both experiments, then stop the workers and wait until
    they are gone (they would idle on). The workers' output goes to ``log``: on a pipe, the
    start command would not return before they exit."""
    with log.open("wb") as out:
        started = subprocess.run(
            [str(BIN / "dvc"), "queue", "start", "-j", "2"],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    assert started.returncode == 0, log.read_text()
    try:
        return _queue_status(project, env, lambda s: not re.search(r"\b(Queued|Running)\b", s))
    finally:
        dvc("queue", "stop", cwd=project, env=env)
        _queue_status(project, env, lambda s: "Worker status: 0 active, 0 idle" in s)


def _exp_show(project: Path, env: dict[str, str]) -> dict[str, dict]:
    """Experiment name -> its metrics files, from ``dvc exp show --json``."""
    rows = json.loads(dvc("exp", "show", "--json", cwd=project, env=env))
    found = {}
    for baseline in rows:
        for exp in baseline.get("experiments") or []:
            (rev,) = exp["revs"]
            found[exp["name"]] = rev["data"]["metrics"]
    return found


def test_queued_experiments_run_two_at_a_time(
    tmp_path: Path, tiny_bert_dir: Path, _mlflow_template_db: Path
) -> None:
    """Both experiments succeed with their own params; ``dvc exp show`` and the compare table
    list both; the repo's default MLflow store (not the temp copies the runs ran in) holds one
    FINISHED run per experiment, found by its ``dvc_exp_name`` tag."""
    env = project_env(None)
    csv = write_keyword_csv(tmp_path / "keywords.csv")
    project = make_project(tmp_path / "repo", tiny_params_dict(csv, tiny_bert_dir), env)
    # An existing (migrated) default store: creating one is test_tracking's concern.
    shutil.copyfile(_mlflow_template_db, project / tracking.DEFAULT_DB)
    for name, rows in EXPERIMENTS.items():
        dvc("exp", "run", "--queue", "-n", name, "-S", f"task_defs.kw.max_train={rows}",
            cwd=project, env=env)  # fmt: skip
    status = _run_queue(project, env, tmp_path / "queue.log")
    assert status.count("Success") == len(EXPERIMENTS), status

    shown = _exp_show(project, env)
    for name, rows in EXPERIMENTS.items():
        metrics = shown[name]["metrics/prepare/kw.json"]["data"]
        assert metrics["train/rows"] == rows
    compared = run([sys.executable, "-m", "layerwise.experiments"], project, env)
    for name, rows in EXPERIMENTS.items():
        assert f"{name}  [task_defs.kw.max_train={rows}]" in compared

    client = mlflow.MlflowClient(f"sqlite:///{project / tracking.DEFAULT_DB}")
    experiment = client.get_experiment_by_name("layerwise")
    for name, rows in EXPERIMENTS.items():
        (found,) = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.dvc_exp_name = '{name}'"
        )
        assert found.info.run_name == "prepare@kw"
        assert found.info.status == "FINISHED"
        assert found.data.metrics["train/rows"] == rows
    assert experiment.artifact_location == (project / tracking.ARTIFACTS_DIR).as_uri()
