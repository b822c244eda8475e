"""The sae stage: on the tiny pipeline's stores it writes the exact metric keys (SAE metrics
and, per FT unit, spliced/ablated accuracy and loss with the shares recovered), the curve, and
one loadable SAE folder per unit whose ``cfg.json`` carries no provenance. The splicing itself
is tested in ``test_splice.py``."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import ModuleType, SimpleNamespace

import mlflow
import numpy as np
import pytest
import yaml
from conftest import REPO_PARAMS, load_stage, write_keyword_csv

from layerwise import io
from layerwise.config import ConfigError, load_params
from layerwise.paths import Paths
from layerwise.pipeline.sae import (
    CURVE_CSV_COLUMNS,
    check_sae_params,
    mean_pool_store,
    model_sae_params,
    train_config,
)
from layerwise.sae.model import SAEConfig, load_sae
from layerwise.schema import SAE_METRIC_KEYS, SAE_SPLICE_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = ("tiny", "kw", 0)
LAYERS = [1, 2]
UNITS = ["pt_L1", "pt_L2", "ft_L1", "ft_L2"]


def write_params(path: Path, csv_path: Path, model_dir: Path) -> Path:
    """The repo's params with the keyword task ``kw``, the tiny model (layers 1, 2), one seed
    and every stage up to sae shrunk to seconds."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["seeds"], raw["tasks"] = [0], ["kw"]
    raw["task_defs"] = {
        "kw": {
            "source": str(csv_path),
            "format": "csv",
            "labels": {"kind": "column"},
            "max_train": 60,
            "max_val": 20,
            "max_analysis": 30,
        }
    }
    raw["models"] = {"tiny": {"source": str(model_dir), "layers": LAYERS}}
    if raw.get("data", {}).get("stats_model"):
        raw["data"]["stats_model"] = "tiny"
    raw["finetune"].update(epochs=1, batch_size=8, learning_rate=1e-3, max_length=32)
    raw["compare"].update(batch_size=16, token_budget=2000, n_boot=50, n_blocks=4, probe_folds=3)
    raw["sae"].update(batch_size=64, epochs=2, train_tokens=None, warmup_steps=5, expansion=2)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)  # fails here, naming the key, if the overrides went stale
    return path


def argv(stage: str, params: Path, root: Path) -> list[str]:
    keys = ["--task", "kw"] if stage == "prepare" else ["--model", "tiny", "--task", "kw"]
    seed = [] if stage in ("prepare", "pt_store") else ["--seed", "0"]
    return [*keys, *seed, "--params", str(params), "--root", str(root)]


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare, finetune, pt_store and compare of tiny-kw-0, run once into a template repo."""
    base = tmp_path_factory.mktemp("sae_upstream")
    params = write_params(base / "params.yaml", write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    root = base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        for stage in ("prepare", "finetune", "pt_store", "compare"):
            load_stage(stage).main(argv(stage, params, root))
    return SimpleNamespace(root=root, params=params)


@pytest.fixture(scope="module")
def sae_stage() -> ModuleType:
    return load_stage("sae")


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def test_stage_end_to_end(
    sae_stage: ModuleType,
    upstream: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_uri: str,
) -> None:
    """sae@tiny-kw-0 writes a metrics file with the exact key set (what main returns), the
    curve with CURVE_CSV_COLUMNS, one SAE folder per unit that loads, and a FINISHED MLflow run
    that holds the git commit: ``cfg.json`` keeps params, scale, format and eval metrics only,
    with no commit, date or host, so the folders hash the same at every commit."""
    repo = tmp_path / "repo"
    shutil.copytree(upstream.root, repo)
    monkeypatch.chdir(tmp_path)
    metrics = sae_stage.main(argv("sae", upstream.params, repo))
    paths = Paths(repo)

    written = json.loads(paths.sae_metrics(*KEY).read_text())
    assert written == pytest.approx(metrics, nan_ok=True)  # a recovered share may be NaN
    assert set(written) == (
        {f"{u}/{k}" for u in UNITS for k in SAE_METRIC_KEYS}
        | {"ft/accuracy_clean"}
        | {f"ft_L{layer}/{k}" for layer in LAYERS for k in SAE_SPLICE_KEYS}
        | {f"{u}/l1_coefficient" for u in UNITS}  # L1 SAEs: the coefficient each ended at
    )
    check_splice_metrics(written)
    with paths.sae_curve(*KEY).open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == CURVE_CSV_COLUMNS
    assert {r["store"] for r in rows} == set(UNITS)

    params = load_params(upstream.params)
    for unit in UNITS:
        folder = paths.saes(*KEY) / unit
        assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
        sae = load_sae(folder)
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (32, 64)
        cfg = json.loads((folder / "cfg.json").read_text())
        assert set(cfg) == {
            *SAEConfig.__dataclass_fields__,
            *("format", "layerwise_version", "dtype", "activation_scaling", "params", "eval"),
        }
        assert cfg["metadata"] == {
            "model": "tiny",
            "task": "kw",
            "seed": 0,
            "store": unit,
            "pooling": "token",
        }
        assert cfg["eval"] == {k: written[f"{unit}/{k}"] for k in SAE_METRIC_KEYS}
        assert cfg["params"]["learning_rate"] == params.sae.learning_rate
        assert cfg["l1_coefficient"] == written[f"{unit}/l1_coefficient"]
        text = (folder / "cfg.json").read_text()
        for provenance in ("commit", "git", "date", "host", "time"):
            assert provenance not in text.lower(), provenance
    assert sorted(repo.rglob(f"{io.TMP_PREFIX}*")) == []

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'sae'")
    assert run.info.run_name == "sae@tiny-kw-0"
    assert run.info.status == "FINISHED"
    assert "git_commit" in run.data.tags
    assert {k: run.data.metrics[k] for k in written} == pytest.approx(written, nan_ok=True)


def check_splice_metrics(metrics: dict[str, float]) -> None:
    """Accuracies are shares, the clean loss is the same for every unit (one clean pass), and
    each finite recovered share has an ordered interval (the tiny classifier's accuracy may not
    move under ablation, which leaves the accuracy share NaN)."""
    clean_losses = {metrics[f"ft_L{layer}/ft_loss_clean"] for layer in LAYERS}
    assert len(clean_losses) == 1 and np.isfinite(next(iter(clean_losses)))
    for layer in LAYERS:
        m = {k: metrics[f"ft_L{layer}/{k}"] for k in SAE_SPLICE_KEYS}
        for key in ("ft_accuracy_spliced", "ft_accuracy_ablated"):
            assert 0.0 <= m[key] <= 1.0
        for key in ("ft_loss_spliced", "ft_loss_ablated"):
            assert m[key] > 0.0
        assert np.isfinite(m["ft_recovered_loss"])  # losses never tie; accuracies may
        for stat in ("accuracy", "loss"):
            lo, hi = m[f"ft_recovered_{stat}_lo"], m[f"ft_recovered_{stat}_hi"]
            if np.isfinite(m[f"ft_recovered_{stat}"]):
                assert lo <= hi


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_mean_pool_store_averages_each_texts_rows_in_store_order() -> None:
    acts = np.arange(12, dtype=np.float16).reshape(6, 2)
    text_id = np.array([3, 3, 0, 0, 0, 7])
    pooled = mean_pool_store(acts, text_id)
    assert pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled, [[1, 2], [6, 7], [10, 11]])


def test_topk_above_the_dictionary_width_names_the_params() -> None:
    params = dataclasses.replace(load_params(REPO_PARAMS).sae, sparsity="topk", k=64, expansion=2)
    assert check_sae_params(params, 32) == 64
    with pytest.raises(ConfigError, match=r"sae.k=65 is above the number of features 64"):
        check_sae_params(dataclasses.replace(params, k=65), 32)


def test_a_models_sae_train_tokens_replace_the_sections() -> None:
    """size_models.mpnet-base.sae_train_tokens sets the tokens per SAE for that model only;
    other models keep the section's, and a section that trains by epochs applies to all."""
    p = load_params(REPO_PARAMS)
    size = p.model(next(iter(p.size_models)))
    full = p.model(next(iter(p.models)))
    assert model_sae_params(p.sae, full) is p.sae
    own = model_sae_params(p.sae, size)
    assert (own.train_tokens, own.epochs) == (size.sae_train_tokens, None) != p.sae.train_tokens
    assert train_config(own, 0, "cpu").max_tokens == size.sae_train_tokens
    by_epochs = dataclasses.replace(p.sae, train_tokens=None, epochs=2.0)
    assert model_sae_params(by_epochs, size) is by_epochs
