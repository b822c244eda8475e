"""Determinism: the tiny pipeline run twice with the same seed on CPU gives byte-identical
metrics files and identical weights; another training seed gives other fine-tuning metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layerwise.paths import Paths

from .reliability_support import (
    MODEL,
    NON_REPRODUCIBLE_FILES,
    SEED,
    TASK,
    PipelineTree,
    Workspace,
    assert_output_equal,
    diff_snapshots,
    files_under,
    outputs,
    run_pipeline,
    run_stage,
    snapshot,
    strip_speed,
    torch_threads,
    write_params,
)

KEY = (MODEL, TASK, SEED)
METRICS_FILES = {
    "prepare": lambda p: p.prepare_metrics(TASK),
    "finetune": lambda p: p.finetune_metrics(*KEY),
    "compare": lambda p: p.similarity_json(*KEY),
    "sae": lambda p: p.sae_metrics(*KEY),
    "features": lambda p: p.features_metrics(*KEY),
}


@pytest.fixture(scope="module")
def second_run(
    tmp_path_factory: pytest.TempPathFactory,
    pipeline_tree: PipelineTree,
    _mlflow_template_db: Path,
) -> Path:
    """The same five stages again, same params and seed, into a fresh root (fresh MLflow store,
    fresh working directory); returns that root."""
    base = tmp_path_factory.mktemp("reliability_second_run")
    root, cwd = base / "root", base / "cwd"
    cwd.mkdir()
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    params = write_params(base / "params.yaml", pipeline_tree.raw)
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(cwd)
        run_pipeline(params, root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(METRICS_FILES))
def test_metrics_file_is_byte_identical(
    stage: str, pipeline_tree: PipelineTree, second_run: Path
) -> None:
    """Two same-seed runs write byte-identical metrics files (so `dvc metrics diff` and DVC's
    hashes see no change); no wall-clock `speed/*` keys leak into them."""
    first = METRICS_FILES[stage](Paths(pipeline_tree.root))
    second = METRICS_FILES[stage](Paths(second_run))
    assert first.read_bytes() == second.read_bytes()
    data = json.loads(first.read_text())  # compared as text: a metric may be NaN (NaN != NaN)
    assert json.dumps(data, sort_keys=True) == json.dumps(strip_speed(data), sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prepare", "finetune", "compare", "sae", "features"])
def test_outputs_are_equal_across_runs(
    stage: str, pipeline_tree: PipelineTree, second_run: Path
) -> None:
    """Every output of every stage is equal across two same-seed runs: the fine-tuned model's
    and each SAE's tensors, activation stores, datasets, CSV curves, JSON, token-map PNG."""
    for path, ref in zip(
        outputs(stage, second_run), outputs(stage, pipeline_tree.root), strict=True
    ):
        assert_output_equal(path, ref)
    assert files_under(second_run) == files_under(pipeline_tree.root)


def _byte_differences(first: Path, second: Path) -> list[str]:
    out = []
    for rel in files_under(first):
        if (first / rel).read_bytes() != (second / rel).read_bytes():
            out.append(rel)
    return out


@pytest.mark.slow
def test_non_reproducible_output_files_are_only_the_known_ones(
    pipeline_tree: PipelineTree, second_run: Path
) -> None:
    """Byte for byte, the only DVC output files that differ between two same-seed runs are
    the known ones (Trainer's pickled training_args.bin; see the xfail below)."""
    differing = _byte_differences(pipeline_tree.root, second_run)
    assert {Path(rel).name for rel in differing} <= set(NON_REPRODUCIBLE_FILES), differing


@pytest.mark.slow
def test_every_output_file_is_byte_identical(pipeline_tree: PipelineTree, second_run: Path) -> None:
    """Every DVC output file, not just the metrics, is byte-identical across same-seed runs."""
    assert _byte_differences(pipeline_tree.root, second_run) == []


@pytest.mark.slow
def test_other_seed_gives_other_finetune_metrics(workspace: Workspace) -> None:
    """With seeds [0, 1], finetune --seed 1 writes its own metrics file, whose values differ
    from seed 0's (head init and data order follow the training seed); seed 0's outputs stay."""
    ws = workspace
    ws.raw["seeds"] = [0, 1]
    ws.write_params()
    seed0 = snapshot(ws.root, dirs=False, artifacts=False)
    run_stage("finetune", ws.params, ws.root, seed=1)
    paths = Paths(ws.root)
    m0 = strip_speed(json.loads(paths.finetune_metrics(MODEL, TASK, 0).read_text()))
    m1 = strip_speed(json.loads(paths.finetune_metrics(MODEL, TASK, 1).read_text()))
    assert set(m0) == set(m1)
    assert m0 != m1
    assert m0["train/final_loss"] != m1["train/final_loss"]
    diff = diff_snapshots(seed0, snapshot(ws.root, dirs=False, artifacts=False))
    assert diff["changed"] == diff["removed"] == []
    seed1 = [p.relative_to(ws.root).as_posix() for p in outputs("finetune", ws.root, seed=1)]
    assert diff["created"]
    assert all(any(c == o or c.startswith(f"{o}/") for o in seed1) for c in diff["created"])
