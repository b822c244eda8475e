"""Session fixtures of the reliability suite: the tiny pipeline (prepare -> finetune -> compare
-> sae -> features) runs once, in-process, into a session temp dir; each test gets its own copy
of that tree (``shutil.copytree``), a params file outside it and an isolated MLflow store."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_keyword_csv

from .reliability_support import (
    PipelineTree,
    Workspace,
    run_pipeline,
    tiny_params_dict,
    torch_threads,
    write_params,
)


@pytest.fixture(scope="session")
def rel_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> dict[str, Any]:
    """The keyword CSV (120 rows) and the tiny BERT, shared read-only by every test."""
    inputs = tmp_path_factory.mktemp("reliability_inputs")
    csv = write_keyword_csv(inputs / "keywords.csv")
    return {"csv": csv, "model_dir": tiny_bert_dir, "raw": tiny_params_dict(csv, tiny_bert_dir)}


@pytest.fixture(scope="session")
def pipeline_tree(
    tmp_path_factory: pytest.TempPathFactory,
    rel_inputs: dict[str, Any],
    _mlflow_template_db: Path,
) -> PipelineTree:
    """All five stages once, in-process, on the tiny params (one torch thread)."""
    base = tmp_path_factory.mktemp("reliability_pipeline")
    root, cwd = base / "root", base / "cwd"
    cwd.mkdir()
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    params = write_params(base / "params.yaml", rel_inputs["raw"])
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(cwd)
        durations, metrics = run_pipeline(params, root)
    return PipelineTree(
        root=root,
        raw=copy.deepcopy(rel_inputs["raw"]),
        csv=rel_inputs["csv"],
        model_dir=rel_inputs["model_dir"],
        durations=durations,
        metrics=metrics,
    )


@pytest.fixture
def workspace(
    tmp_path: Path,
    pipeline_tree: PipelineTree,
    monkeypatch: pytest.MonkeyPatch,
    _mlflow_template_db: Path,
) -> Workspace:
    """A private copy of the pipeline tree at ``<tmp>/root``, tiny params at
    ``<tmp>/params.yaml``, MLFLOW_TRACKING_URI at ``<tmp>/mlruns.db`` and the working
    directory moved to an empty ``<tmp>/cwd`` (so a stray relative write cannot hit the repo)."""
    root = tmp_path / "root"
    shutil.copytree(pipeline_tree.root, root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    db = tmp_path / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ws = Workspace(
        base=tmp_path, root=root, cwd=cwd, raw=copy.deepcopy(pipeline_tree.raw), mlflow_uri=uri
    )
    ws.write_params()
    return ws


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """In-process stage runs use one intra-op thread (fastest for tiny models on 2 cores)."""
    with torch_threads(1):
        yield
