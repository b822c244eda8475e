"""The explorer tests' fixture tree: the real pipeline (prepare -> finetune -> compare -> sae
-> features -> paper) run once per session, in-process, on the tests' tiny setup (keyword task,
2-layer random BERT), into a root with its own ``params.yaml`` and ``mlflow.db``, as a checkout
after ``make reproduce`` has them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    TASK,
    run_controls,
    run_pipeline,
    stage_module,
    tiny_params_dict,
    torch_threads,
    write_params,
)

from layerwise.app.catalog import RunKey

APP_FILE = Path(__file__).resolve().parents[1] / "src" / "layerwise" / "app" / "main.py"
KEY = RunKey(MODEL, TASK, 0)
SENTENCE = "the book was great and the music awful"


@dataclass(frozen=True)
class AppTree:
    root: Path
    """A complete pipeline run (read-only for the tests)."""
    params: Path
    """``<root>/params.yaml``."""


_BUILT: dict[str, AppTree] = {}


def build_tree(base: Path, tiny_bert_dir: Path, mlflow_template: Path) -> AppTree:
    root = base / "root"
    root.mkdir()
    csv = write_keyword_csv(base / "keywords.csv")
    params = write_params(root / "params.yaml", tiny_params_dict(csv, tiny_bert_dir))
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(base)
        run_pipeline(params, root)
        run_controls(params, root)
        stage_module("paper").main(["--params", str(params), "--root", str(root)])
    return AppTree(root, params)


@pytest.fixture(scope="session")
def app_tree(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, _mlflow_template_db: Path
) -> AppTree:
    """The fixture tree, built once per session whichever test module asks first."""

    if "tree" not in _BUILT:
        base = tmp_path_factory.mktemp("app_tree")
        _BUILT["tree"] = build_tree(base, tiny_bert_dir, _mlflow_template_db)
    return _BUILT["tree"]
