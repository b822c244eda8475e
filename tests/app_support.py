"""The explorer tests' fixture tree: the real pipeline (prepare -> finetune -> compare -> sae
-> features -> paper) run once per session, in-process, on the tests' tiny setup (keyword task,
2-layer random BERT), into a root with its own ``params.yaml`` and ``mlflow.db``, as a checkout
after ``make reproduce`` has them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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
from streamlit.testing.v1 import AppTest

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
APP_TIMEOUT = 60
"""Seconds AppTest waits for one script run."""


@contextmanager
def running_app(root: Path) -> Iterator[AppTest]:
    """The explorer under Streamlit's AppTest on ``root``, run once (no MLflow server)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERWISE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield AppTest.from_file(str(APP_FILE), default_timeout=APP_TIMEOUT).run()


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


# --------------------------------------------------------------------------------------------
# A planted crosscoder: known decoder norms on the fixture tree's real paired store

PLANTED_LAYER = 1
PLANTED_NORMS = ((1, 0), (0, 1), (5, 6), (1, 2), (2, 1), (12, 1), (1, 12), (6, 1), (1, 6))
"""(|d_PT|, |d_FT|) per latent, so r = |d_FT| / (|d_PT| + |d_FT|) is known exactly (and, but
for 0 and 1, off the histogram's bin edges)."""
PLANTED_THRESHOLDS = {"pt_only_below": 0.2, "ft_only_above": 0.8, "scaling_max_ratio": 1e9}
"""Not the defaults (0.1, 0.9): latents 7 (r 0.14) and 8 (r 0.86) are "only" by these alone.
No latent is a Latent Scaling artefact under so loose a ratio (all of them fire)."""
PLANTED_CLASSES = (
    "PT-only", "FT-only", "shared", "shared", "shared", "PT-only", "FT-only", "PT-only", "FT-only",
)  # fmt: skip


def planted_relative_norms() -> list[float]:
    return [ft / (pt + ft) for pt, ft in PLANTED_NORMS]


def plant_crosscoder(directory: Path, d_in: int) -> None:
    """A ReLU (``l1``) crosscoder whose latent j has decoder rows of norms
    ``PLANTED_NORMS[j]`` in random directions and fires on every token (bias 5, small random
    encoder), saved as the crosscoder stage saves one, with :data:`PLANTED_THRESHOLDS`."""
    import torch

    from layerwise.sae.crosscoder import Crosscoder, CrosscoderConfig, save_crosscoder

    n = len(PLANTED_NORMS)
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(n, 2, d_in, generator=gen), dim=-1)
    norms = torch.tensor(PLANTED_NORMS, dtype=torch.float32)[:, :, None]
    cfg = CrosscoderConfig(d_in=d_in, d_latent=n, sparsity="l1")
    weights = {
        "W_enc": 0.01 * torch.randn(2 * d_in, n, generator=gen),
        "b_enc": torch.full((n,), 5.0),
        "W_dec": (directions * norms).reshape(n, 2 * d_in),
        "b_dec": torch.zeros(2 * d_in),
        "threshold": torch.tensor(float("nan")),
    }
    cc = Crosscoder.from_weights(cfg, weights)
    save_crosscoder(cc, directory, extra={"params": dict(PLANTED_THRESHOLDS)})


def planted_tree(tree: AppTree, base: Path) -> AppTree:
    """A root with the fixture tree's params, prepared task and run-0 activation stores, and
    nothing else but the planted crosscoder at :data:`PLANTED_LAYER` and a ``crosscoder.json``
    naming two top FT-only latents, with the default thresholds (the crosscoder's own win)."""
    from layerwise.activations import ActivationStore
    from layerwise.io import write_json
    from layerwise.paths import Paths

    src, dst = Paths(tree.root), Paths(base)
    stores = (
        src.activations(KEY.model, KEY.task, KEY.seed),
        src.pt_activations(KEY.model, KEY.task),
    )
    for path in (src.prepared(KEY.task), *stores):
        shutil.copytree(path, base / path.relative_to(tree.root))
    shutil.copyfile(tree.params, base / "params.yaml")
    store = ActivationStore.open(dst.activations(KEY.model, KEY.task, KEY.seed), "analysis")
    d_in = int(store.meta["dim"])
    plant_crosscoder(dst.crosscoders(KEY.model, KEY.task, KEY.seed) / f"L{PLANTED_LAYER}", d_in)
    result = {
        "thresholds": {"pt_only_below": 0.1, "ft_only_above": 0.9},
        "top_ft_only": {str(PLANTED_LAYER): [{"latent": 8}, {"latent": 1}]},
    }
    write_json(dst.crosscoder_json(KEY.model, KEY.task, KEY.seed), result)
    return AppTree(base, base / "params.yaml")


@pytest.fixture(scope="module")
def planted(app_tree: AppTree, tmp_path_factory: pytest.TempPathFactory) -> AppTree:
    return planted_tree(app_tree, tmp_path_factory.mktemp("planted"))
