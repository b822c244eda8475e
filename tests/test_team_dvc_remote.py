"""A shared DVC remote saves a collaborator the recomputation: ``dvc repro`` -> ``dvc push``;
a fresh clone -> ``dvc pull`` -> ``dvc repro`` runs no stage and has the same outputs. Tested
with a shared-directory remote and an S3-compatible one (``moto`` in server mode on localhost,
reached through ``dvc-s3``), on a tiny project holding the repo's real ``prepare`` stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml
from conftest import write_keyword_csv
from reliability.reliability_support import tiny_params_dict
from team_support import (
    BIN,
    HOST,
    clone,
    commit_all,
    dvc,
    files_of,
    free_port,
    make_project,
    project_env,
    serving,
)

pytestmark = pytest.mark.slow

BUCKET = "team-dvc"
# moto accepts any credentials; dvc-s3 and boto3 read them from the environment.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PREPARED = "data/prepared/kw"


def _project(tmp_path: Path, tiny_bert_dir: Path, db: Path) -> tuple[Path, dict[str, str]]:
    env = project_env(f"sqlite:///{db}") | S3_ENV
    csv = write_keyword_csv(tmp_path / "keywords.csv")
    return make_project(tmp_path / "origin", tiny_params_dict(csv, tiny_bert_dir), env), env


def _add_remotes(project: Path, env: dict[str, str], shared: Path, endpoint: str) -> None:
    """The two setups the README documents: a shared path, and S3 with a custom endpoint."""
    dvc("remote", "add", "shared", str(shared), cwd=project, env=env)
    dvc("remote", "add", "s3", f"s3://{BUCKET}/layerwise", cwd=project, env=env)
    dvc("remote", "modify", "s3", "endpointurl", endpoint, cwd=project, env=env)


def test_push_then_pull_in_a_fresh_clone_runs_no_stage(
    tmp_path: Path, tiny_bert_dir: Path, _mlflow_template_db: Path
) -> None:
    """After push, each remote alone restores the outputs in a fresh clone (byte for byte) and
    ``dvc repro`` there finds nothing to run. The prepare run's MLflow dataset digest is the
    md5 ``dvc.lock`` records for the split."""
    db = tmp_path / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    project, env = _project(tmp_path, tiny_bert_dir, db)
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    moto = [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)]
    with serving(moto, f"{endpoint}/moto-api/", tmp_path / "moto.log", env=env):
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
        )
        s3.create_bucket(Bucket=BUCKET)
        _add_remotes(project, env, tmp_path / "shared-remote", endpoint)
        assert "Running stage 'prepare@kw'" in dvc("repro", cwd=project, env=env)
        commit_all(project, env, "prepare results")
        for remote in ("shared", "s3"):
            dvc("push", "-r", remote, cwd=project, env=env)

        for remote in ("shared", "s3"):
            fresh = clone(project, tmp_path / f"clone-{remote}", env)
            assert not (fresh / PREPARED).exists()
            dvc("pull", "-r", remote, cwd=fresh, env=env)
            out = dvc("repro", cwd=fresh, env=env)
            assert "Running stage" not in out, out
            assert files_of(fresh / PREPARED) == files_of(project / PREPARED)

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (split,) = [o for o in lock["stages"]["prepare@kw"]["outs"] if o["path"] == PREPARED]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("layerwise").experiment_id])
    (dataset,) = run.inputs.dataset_inputs
    assert f"{dataset.dataset.digest}.dir" == split["md5"]
