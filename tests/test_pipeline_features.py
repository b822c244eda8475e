"""The features stage: on the tiny pipeline's stores and SAEs it writes the exact metric keys,
the per-layer CSV, the result JSON and the token maps; inputs that do not match fail naming the
stage to rerun; a [CLS]-only feature is reported apart and kept out of the top features when
``features.exclude_special`` says so; the table and metrics steps on hand-made units."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pytest
from conftest import write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    SEED,
    TASK,
    run_pipeline,
    run_stage,
    tiny_params_dict,
    write_params,
)

from layerwise import features as F
from layerwise import io
from layerwise.config import FeaturesParams, load_params
from layerwise.data import DataError, load_splits
from layerwise.models import load_tokenizer
from layerwise.paths import Paths
from layerwise.pipeline.features import (
    AnalysisSplit,
    Calibration,
    _special_ids,
    _StoreIndex,
    _unit_result,
    _UnitCodes,
    analyse,
    feature_table,
    summary_metrics,
)
from layerwise.schema import FEATURE_LAYER_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = (MODEL, TASK, SEED)
NEW_FEATURE_KEYS = {"selectivity_null", "selectivity_excess", "selectivity_all", "special_share"}
LAYERS = [1, 2]
UNITS = ["pt_L1", "pt_L2", "ft_L1", "ft_L2"]


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare, finetune, compare and sae of tiny-kw-0 on the reliability suite's tiny params,
    run once into a template repo."""
    base = tmp_path_factory.mktemp("features_upstream")
    raw = tiny_params_dict(write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    assert raw["models"][MODEL]["layers"] == LAYERS
    params = write_params(base / "params.yaml", raw)
    root = base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        run_pipeline(params, root, ("prepare", "finetune", "pt_store", "compare", "sae"))
    features = load_params(params).features
    return SimpleNamespace(root=root, params=params, model_dir=tiny_bert_dir, features=features)


@pytest.fixture
def repo(upstream: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the upstream repo; the working directory moved to tmp (MLflow puts a
    new experiment's artifacts under the working directory)."""
    root = tmp_path / "repo"
    shutil.copytree(upstream.root, root)
    monkeypatch.chdir(tmp_path)
    return root


def analysis_split(root: Path, model_dir: Path) -> AnalysisSplit:
    analysis = load_splits(Paths(root).prepared("kw"))["analysis"]
    return AnalysisSplit(
        texts=list(analysis["text"]),
        labels=np.asarray(analysis["label"]),
        label_names=list(analysis.features["label"].names),
        tokenizer=load_tokenizer(str(model_dir)),
    )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def test_stage_end_to_end(upstream: SimpleNamespace, repo: Path, mlflow_uri: str) -> None:
    """features@tiny-kw-0 writes a metrics file with the exact key set (what main returns), a
    CSV with one FEATURE_LAYER_COLUMNS row per SAE layer, a result JSON with top_n features per
    unit and top_k texts per feature, token maps of one example per label over every unit, and
    a FINISHED MLflow run with the same metrics."""
    metrics = run_stage("features", upstream.params, repo)
    paths = Paths(repo)

    written = json.loads(paths.features_metrics(*KEY).read_text())
    assert written == metrics
    assert set(written) == {f"L{lay}/{c}" for lay in LAYERS for c in FEATURE_LAYER_COLUMNS[2:]}

    with paths.features_csv(*KEY).open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == list(FEATURE_LAYER_COLUMNS)
    assert all(math.isfinite(float(r[c])) for r in rows for c in FEATURE_LAYER_COLUMNS)
    assert [int(r["layer"]) for r in rows] == LAYERS
    assert [float(r["depth"]) for r in rows] == [0.5, 1.0]

    result = json.loads(paths.features_json(*KEY).read_text())
    assert sorted(result["units"]) == sorted(UNITS)
    for name, unit in result["units"].items():
        assert unit["which"] == name[:2]
        assert len(unit["top_features"]) == upstream.features.top_n
        assert all(len(f["top_texts"]) == upstream.features.top_k for f in unit["top_features"])
        assert 0.0 <= unit["alive_frac"] <= 1.0
        assert 0.0 <= unit["special_frac"] <= 1.0
        feats = unit["top_features"]
        assert all(NEW_FEATURE_KEYS | {"is_special"} <= set(f) for f in feats)
        assert not any(f["is_special"] for f in feats)  # exclude_special is on
        assert all(f["is_special"] for f in unit["special_features"])
        assert unit["selectivity_top"] == pytest.approx(np.mean([f["selectivity"] for f in feats]))
        assert unit["selectivity_excess"] == pytest.approx(
            unit["selectivity_top"] - unit["selectivity_null"]
        )
        assert unit["selectivity_null"] > 0.5
    halves = result["split_half"]
    assert halves["n_select"] + halves["n_score"] == 30
    assert halves["n_permutations"] == upstream.features.n_permutations
    assert len(result["table"]) == upstream.features.top_n * len(UNITS)
    assert all({"selectivity_null", "selectivity_excess"} <= set(r) for r in result["table"])
    for row, layer in zip(rows, result["layers"], strict=True):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(layer)

    maps = json.loads((paths.token_maps(*KEY) / "token_maps.json").read_text())
    assert sorted(e["label"] for e in maps) == ["negative", "positive"]
    for example in maps:
        assert sorted(example["maps"]) == sorted(UNITS)
        for unit_map in example["maps"].values():
            assert len(unit_map["activations"]) == len(example["tokens"])
    assert (paths.token_maps(*KEY) / "token_maps.png").stat().st_size > 0
    assert sorted(repo.rglob(f"{io.TMP_PREFIX}*")) == []

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'features'")
    assert run.info.run_name == "features@tiny-kw-0"
    assert run.info.status == "FINISHED"
    assert run.data.metrics == pytest.approx(written)


def test_split_not_matching_the_store_names_compare(upstream: SimpleNamespace, repo: Path) -> None:
    """An analysis split whose size differs from the activation store's (a stale store) fails
    with a DataError that says to rerun compare."""
    split = analysis_split(repo, upstream.model_dir)
    short = AnalysisSplit(split.texts[:-1], split.labels[:-1], split.label_names, split.tokenizer)
    paths = Paths(repo)
    with pytest.raises(DataError, match=r"29 texts but the activation store .* holds 30: rerun"):
        analyse(paths.activations(*KEY), paths.saes(*KEY), LAYERS, 2, short, upstream.features, 0)


def test_missing_sae_names_the_sae_stage(
    upstream: SimpleNamespace, repo: Path, mlflow_uri: str
) -> None:
    """Without the SAE folder, or without one unit's SAE, the stage fails naming the sae stage
    and writes no features output."""
    paths = Paths(repo)
    shutil.rmtree(paths.saes(*KEY) / "ft_L2")
    with pytest.raises(FileNotFoundError, match=r"no SAE at .*ft_L2.*dvc repro sae@"):
        run_stage("features", upstream.params, repo)
    shutil.rmtree(paths.saes(*KEY))
    with pytest.raises(FileNotFoundError, match=r"made by the sae@tiny-kw-0 stage"):
        run_stage("features", upstream.params, repo)
    assert not paths.features_metrics(*KEY).exists()
    assert not paths.features_json(*KEY).exists()


def test_missing_pt_store_names_the_pt_store_stage(
    upstream: SimpleNamespace, repo: Path, mlflow_uri: str
) -> None:
    """Without the shared PT store the run's store links to, the stage fails before any work,
    naming the pt_store stage of the model and task, and writes no features output."""
    paths = Paths(repo)
    shutil.rmtree(paths.pt_activations(*KEY[:2]))
    with pytest.raises(FileNotFoundError, match=r"made by the pt_store@tiny-kw stage"):
        run_stage("features", upstream.params, repo)
    assert not paths.features_metrics(*KEY).exists()
    assert not paths.features_json(*KEY).exists()


# --------------------------------------------------------------------------------------------
# Special-token features
# --------------------------------------------------------------------------------------------


def cls_unit(tokenizer: Any) -> tuple[_UnitCodes, _StoreIndex, AnalysisSplit, F.Halves]:
    """40 texts of [CLS] w w w w [SEP] and an encoder whose feature 0 fires only on [CLS]
    (strongly, varying across texts: the top feature by variance), feature 1 on the words of
    positive texts, features 2 and (weaker) 3 on words."""
    rng = np.random.default_rng(0)
    n_texts, length = 40, 6
    labels = np.repeat([0, 1], n_texts // 2)
    text_id = np.repeat(np.arange(n_texts), length)
    position = np.tile(np.arange(length), n_texts)
    words = rng.choice(tokenizer.convert_tokens_to_ids(["the", "a", "film", "good"]), text_id.size)
    token_id = np.where(
        position == 0,
        tokenizer.cls_token_id,
        np.where(position == length - 1, tokenizer.sep_token_id, words),
    )
    acts = rng.random((text_id.size, 4)).astype(np.float32)
    word = (position > 0) & (position < length - 1)
    acts[:, 0] = np.where(position == 0, 10 * rng.random(text_id.size), 0.0)
    acts[:, 1] = np.where(word, labels[text_id], 0.0)
    acts[:, 2:] *= np.where(word, 0.1, 0.0)[:, None] * [1.0, 0.2]

    def encode(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)

    special = F.special_rows(token_id, _special_ids(tokenizer))
    tf = F.text_feature_matrix(encode, acts, text_id, n_texts, special=special)
    codes = _UnitCodes(encode, acts, 4, tf, np.eye(4, dtype=np.float32))
    split = AnalysisSplit([f"text {i}" for i in range(n_texts)], labels, ["neg", "pos"], tokenizer)
    return codes, _StoreIndex(text_id, position, token_id), split, F.split_halves(labels, 0, 2)


@pytest.mark.parametrize("exclude", [True, False])
def test_a_cls_feature_is_reported_apart(tiny_bert_dir: Path, exclude: bool) -> None:
    """Feature 0 lives on [CLS] only: special share 1, listed under special_features either
    way, and among the top features only when exclude_special is off."""
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    codes, index, split, halves = cls_unit(tokenizer)
    special = F.special_rows(index.token_id, _special_ids(tokenizer))
    params = dataclasses.replace(
        FeaturesParams(), top_n=2, top_k=3, token_min_count=1, exclude_special=exclude
    )
    calibration = Calibration(halves, n_permutations=20, seed=0, special=special)
    unit, top = _unit_result("ft", 2, codes, index, split, params, calibration)

    assert tokenizer.cls_token_id in _special_ids(tokenizer)
    assert tokenizer.unk_token_id not in _special_ids(tokenizer)  # [UNK] stands for a word
    assert codes.text_features.special_share[0] == 1.0
    assert np.all(codes.text_features.special_share[1:] == 0.0)
    assert unit["special_frac"] == 0.25
    (cls_feature,) = unit["special_features"]
    assert cls_feature["feature"] == 0 and cls_feature["special_share"] == 1.0
    assert cls_feature["is_special"] and cls_feature["top_tokens"][0]["token"] == "[CLS]"
    assert [f["feature"] for f in unit["top_features"]] == list(top)
    if exclude:
        assert list(top) == [1, 2]
        assert not any(f["is_special"] for f in unit["top_features"])
    else:
        assert list(top) == [0, 1]
    label_feature = next(f for f in unit["top_features"] if f["feature"] == 1)
    assert label_feature["selectivity"] == 1.0 and label_feature["selectivity_excess"] > 0.4
    assert label_feature["best_class"] == "pos"


# --------------------------------------------------------------------------------------------
# The assembly steps
# --------------------------------------------------------------------------------------------


def make_unit(which: str, layer: int, features: list[tuple[int, str, float]]) -> dict[str, Any]:
    top = [
        {
            "feature": f,
            "dominant_label": label,
            "selectivity": sel,
            "selectivity_null": 0.52,
            "selectivity_excess": sel - 0.52,
            "top_tokens": [{"token": f"t{i}"} for i in range(7)],
        }
        for f, label, sel in features
    ]
    return {"which": which, "layer": layer, "top_features": top}


def test_feature_table_orders_by_layer_then_unit_and_cuts() -> None:
    """The qualitative table lists units by layer, then FT before PT, at most n_top features
    each (in their variance order), with their first five tokens, label and selectivity."""
    units = {
        "ft_L2": make_unit("ft", 2, [(5, "b", 0.91234), (6, "a", 0.5)]),
        "pt_L2": make_unit("pt", 2, [(1, "a", 0.6)]),
        "ft_L1": make_unit("ft", 1, [(9, "a", 0.7), (8, "b", 0.8), (7, "a", 0.9)]),
    }
    rows = feature_table(units, n_top=2)
    assert [(r["layer"], r["model"], r["feature"]) for r in rows] == [
        (1, "FT", 9),
        (1, "FT", 8),
        (2, "FT", 5),
        (2, "FT", 6),
        (2, "PT", 1),
    ]
    assert rows[2]["selectivity"] == 0.912
    assert rows[2]["selectivity_null"] == 0.52 and rows[2]["selectivity_excess"] == 0.392
    assert rows[2]["top_tokens"] == "t0 t1 t2 t3 t4"
    assert rows[2]["unit"] == "ft_L2"
    assert rows[2]["dominant_label"] == "b"


def test_summary_metrics_has_one_key_per_layer_and_column() -> None:
    """Metrics are ``L<layer>/<column>`` floats for every column after layer and depth."""
    row = {c: i for i, c in enumerate(FEATURE_LAYER_COLUMNS)}
    result = {"layers": [{**row, "layer": 3}, {**row, "layer": 6}]}
    metrics = summary_metrics(result)
    assert set(metrics) == {f"L{lay}/{c}" for lay in (3, 6) for c in FEATURE_LAYER_COLUMNS[2:]}
    assert metrics["L6/mmcs"] == float(FEATURE_LAYER_COLUMNS.index("mmcs"))
    assert all(type(v) is float for v in metrics.values())
