"""The sae stage: on the tiny pipeline's stores it writes the exact metric keys, the curve, and
one loadable SAE folder per unit whose ``cfg.json`` carries no provenance; the spliced-accuracy
hook sits on the architecture's hidden-state module and hands the reconstruction back on the
hidden state's device and in its dtype."""

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
import torch
import yaml
from conftest import REPO_PARAMS, load_stage, make_keyword_texts, write_keyword_csv
from sae_helpers import identity_sae

from layerwise import io
from layerwise.architectures import hidden_state_module
from layerwise.config import ConfigError, load_params
from layerwise.models import load_classifier, load_tokenizer
from layerwise.paths import Paths
from layerwise.pipeline.sae import (
    CURVE_CSV_COLUMNS,
    check_sae_params,
    mean_pool_store,
    splice_hook,
    spliced_accuracy,
)
from layerwise.sae.model import SAEConfig, load_sae
from layerwise.schema import SAE_METRIC_KEYS

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
    seed = [] if stage == "prepare" else ["--seed", "0"]
    return [*keys, *seed, "--params", str(params), "--root", str(root)]


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare, finetune and compare of tiny-kw-0, run once into a template repo."""
    base = tmp_path_factory.mktemp("sae_upstream")
    params = write_params(base / "params.yaml", write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    root = base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        for stage in ("prepare", "finetune", "compare"):
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
    assert written == metrics
    assert set(written) == (
        {f"{u}/{k}" for u in UNITS for k in SAE_METRIC_KEYS}
        | {"ft/accuracy_clean"}
        | {f"ft_L{layer}/ft_accuracy_spliced" for layer in LAYERS}
    )
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
    assert {k: run.data.metrics[k] for k in written} == pytest.approx(written)


# --------------------------------------------------------------------------------------------
# Spliced accuracy
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_and_texts(tiny_bert_dir: Path) -> SimpleNamespace:
    """The tiny BERT with a fresh two-label head, its tokenizer and 24 keyword texts."""
    torch.manual_seed(0)
    classifier = load_classifier(str(tiny_bert_dir), ["negative", "positive"]).eval()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts, labels = make_keyword_texts(24, 1)
    return SimpleNamespace(
        classifier=classifier,
        tokenizer=tokenizer,
        texts=texts,
        labels=np.array([int(label == "positive") for label in labels]),
    )


def _logits(model, tokenizer, texts, device="cpu") -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    with torch.inference_mode():
        return model(**batch).logits.float().cpu()


@pytest.mark.parametrize(
    ("model_dtype", "sae_dtype"),
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32)],
)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_splice_changes_no_logit_in_any_precision(
    classifier_and_texts: SimpleNamespace, layer: int, model_dtype, sae_dtype
) -> None:
    """An exact (identity) SAE spliced at any layer leaves every logit as it was, whatever the
    SAE's dtype against the model's: the reconstruction comes back in the hidden state's dtype
    (a float64 state would stop a float32 model; a float32 one would change a bf16 model)."""
    c = classifier_and_texts
    model = c.classifier.to(model_dtype)
    try:
        clean = _logits(model, c.tokenizer, c.texts)
        sae = identity_sae(32).to(sae_dtype)
        handle = hidden_state_module(model, layer).register_forward_hook(splice_hook(sae))
        try:
            spliced = _logits(model, c.tokenizer, c.texts)
        finally:
            handle.remove()
    finally:
        c.classifier.to(torch.float32)
    assert torch.equal(spliced, clean)


def test_splice_hook_returns_the_hidden_states_dtype_for_tensor_and_tuple_outputs() -> None:
    hook = splice_hook(identity_sae(8).double())
    hidden = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    out = hook(None, (), hidden)
    assert out.dtype == torch.bfloat16 and out.device == hidden.device
    assert torch.equal(out, hidden)
    extra = torch.ones(1)
    recon, rest = hook(None, (), (hidden, extra))
    assert recon.dtype == torch.bfloat16 and torch.equal(recon, hidden) and rest is extra


def test_spliced_accuracy_with_an_exact_sae_is_the_clean_accuracy(
    classifier_and_texts: SimpleNamespace,
) -> None:
    """Splicing goes through the architecture's hidden-state module and removes its hook."""
    c = classifier_and_texts
    kwargs = dict(max_length=32, batch_size=8, device="cpu")
    clean = spliced_accuracy(c.classifier, c.tokenizer, c.texts, c.labels, 0, None, **kwargs)
    for layer in (0, 1, 2):
        acc = spliced_accuracy(
            c.classifier, c.tokenizer, c.texts, c.labels, layer, identity_sae(32), **kwargs
        )
        assert acc == clean
        assert not hidden_state_module(c.classifier, layer)._forward_hooks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_sae_splices_into_a_cuda_classifier(classifier_and_texts: SimpleNamespace) -> None:
    c = classifier_and_texts
    model = c.classifier.to("cuda")
    try:
        kwargs = dict(max_length=32, batch_size=8, device=torch.device("cuda"))
        clean = spliced_accuracy(model, c.tokenizer, c.texts, c.labels, 0, None, **kwargs)
        acc = spliced_accuracy(model, c.tokenizer, c.texts, c.labels, 1, identity_sae(32), **kwargs)
    finally:
        c.classifier.to("cpu")
    assert acc == clean


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
