"""Every supported architecture family runs the whole pipeline, prepare -> paper, on a tiny
random model saved with ``save_pretrained`` (no network), and each stage writes its metrics.

This is what a researcher pointing ``models.<key>.source`` at their own checkpoint relies on:
hidden states, padding, the classifier's pooling, special tokens and every intervention (spliced
accuracy, layer reset) must work for encoders and decoder-only models alike; the controls
(shuffled labels, layer reset, seed floor) run too.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import FILLER_WORDS, KEYWORDS, write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    TASK,
    run_controls,
    run_pipeline,
    run_stage,
    stage_module,
    tiny_params_dict,
    torch_threads,
    write_params,
)
from tiny_models import DECODERS, FAMILIES, save_tiny

from layerwise.architectures import ArchitectureError
from layerwise.paths import Paths
from layerwise.schema import SAE_METRIC_KEYS, SIMILARITY_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("families")
    return write_keyword_csv(base / "keywords.csv", n=80)


def _params(tmp: Path, csv: Path, model_dir: Path) -> Path:
    raw = tiny_params_dict(csv, model_dir)
    raw["task_defs"][TASK].update(max_train=40, max_val=16, max_analysis=24)
    raw["finetune"].update(epochs=1, max_length=24)
    raw["compare"].update(n_boot=20, probe_folds=2, token_budget=600)
    raw["sae"].update(epochs=1)
    return write_params(tmp / "params.yaml", raw)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_runs_end_to_end(
    family: str,
    family_inputs: Path,
    packaged_model_dir: Path,
    tmp_path: Path,
    mlflow_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    words = [*FILLER_WORDS, *KEYWORDS.values()]
    model_dir = save_tiny(family, tmp_path / "model", packaged_model_dir, words)
    params, root = _params(tmp_path, family_inputs, model_dir), tmp_path / "root"
    monkeypatch.chdir(tmp_path)
    with torch_threads(1):
        _, metrics = run_pipeline(params, root)
        controls = run_controls(params, root)
        paper = stage_module("paper").main(["--params", str(params), "--root", str(root)])
    paths, key = Paths(root), (MODEL, TASK, 0)

    ft = _read(paths.finetune_metrics(*key))
    assert 0.0 <= ft["ft/accuracy"] <= 1.0 and ft == metrics["finetune"]
    rows = (paths.similarity_csv(*key)).read_text().splitlines()
    assert rows[0].split(",") == list(SIMILARITY_COLUMNS)
    assert len(rows) == 1 + 3  # layers 0..2 of the 2-block model
    sim = _read(paths.similarity_json(*key))
    assert all(math.isfinite(v) for k, v in sim.items() if k.startswith("cosine/"))
    sae = _read(paths.sae_metrics(*key))
    for unit in ("pt_L1", "ft_L2"):
        assert {f"{unit}/{k}" for k in SAE_METRIC_KEYS} <= set(sae)
    assert 0.0 <= sae["ft_L2/ft_accuracy_spliced"] <= 1.0
    assert _read(paths.features_metrics(*key)) == metrics["features"]
    for name, path in (
        ("reset", paths.reset_json(*key)),
        ("finetune_shuffled", paths.finetune_metrics(MODEL, TASK, "shuffled")),
    ):  # NaN-aware: an untrained tiny model may lose no gain to reset
        assert json.dumps(_read(path), sort_keys=True) == json.dumps(controls[name], sort_keys=True)
    assert paper and (root / "paper" / "summary.md").is_file()
    if family in DECODERS:  # what the classifier reads: the last real token
        assert sim["probe_pooling"] == "last"
    else:
        assert sim["probe_pooling"] == "mean"


def test_unsupported_architecture_fails_at_stage_start(
    family_inputs: Path, packaged_model_dir: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    """ALBERT shares one block's weights across depth: refused before any training, naming
    the model class and the supported families."""
    import transformers as T

    model_dir = tmp_path / "albert"
    config = T.AlbertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        embedding_size=16, vocab_size=len(T.AutoTokenizer.from_pretrained(packaged_model_dir)),
    )  # fmt: skip
    T.AutoModel.from_config(config).save_pretrained(model_dir)
    shutil.copy(packaged_model_dir / "tokenizer.json", model_dir)
    T.AutoTokenizer.from_pretrained(packaged_model_dir).save_pretrained(model_dir)
    params, root = _params(tmp_path, family_inputs, model_dir), tmp_path / "root"
    run_stage("prepare", params, root)
    with pytest.raises(ArchitectureError, match=r"AlbertModel .*not supported.*bert"):
        run_stage("finetune", params, root)
    assert not Paths(root).finetuned(MODEL, TASK, 0).exists()
