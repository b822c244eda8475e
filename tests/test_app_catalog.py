"""What exists: the explorer's catalog of runs and stage outputs, on a complete tree, an empty
root and a fresh clone's partial tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app.catalog import (
    REPRODUCE_HINT,
    ExplorerError,
    RunKey,
    other_unit,
    parse_run,
    scan,
    unit_sort_key,
)
from layerwise.paths import Paths

CONTROL = RunKey(KEY.model, KEY.task, "shuffled")


def test_catalog_lists_the_run_and_every_output(app_tree: AppTree) -> None:  # noqa: F811
    catalog = scan(app_tree.root)
    assert not catalog.empty and catalog.keys == [KEY, CONTROL]
    run = catalog.run(KEY)
    assert run.missing("prepare", "finetune", "compare", "sae", "features") == []
    assert run.sae_units == ("pt_L1", "ft_L1", "pt_L2", "ft_L2")
    assert run.sae_layers == [1, 2]
    assert run.crosscoder_layers == (1, 2) and run.missing("crosscoder") == []
    assert catalog.models() == [KEY.model]
    assert catalog.tasks(KEY.model) == [KEY.task]
    assert catalog.seeds(KEY.model, KEY.task) == [0, "shuffled"]
    assert {p.name for p in catalog.tables} >= {"claims.csv", "layer_similarity.csv"}
    assert any(p.name.startswith("layerwise_similarity") for p in catalog.figures)


def test_the_control_run_is_listed_with_its_crosscoders_and_no_saes(
    app_tree: AppTree,  # noqa: F811
) -> None:
    """The shuffled-label fine-tune has a model, a store and crosscoders but (by design) no
    SAEs: asking for them says so instead of naming a stage that does not exist."""
    run = scan(app_tree.root).run(CONTROL)
    assert run.finetuned and run.store and run.similarity
    assert run.crosscoder_layers == (1, 2) and run.missing("crosscoder") == []
    assert run.sae_units == () and run.missing("sae", "features") == ["sae", "features"]
    hint = run.hint(["sae"])
    assert "shuffled-label control" in hint and "seeds only" in hint and "sae@" not in hint
    assert "compare_shuffled@m-t" in RunKey("m", "t", "shuffled").stage("compare")


def test_empty_root_says_nothing_was_produced_and_names_make_reproduce(tmp_path: Path) -> None:
    # A fresh clone keeps run folders with nothing but a .gitignore: not a run.
    (tmp_path / "models" / "m" / "t" / "s0").mkdir(parents=True)
    (tmp_path / "models" / "m" / "t" / "s0" / ".gitignore").write_text("/ft\n")
    catalog = scan(tmp_path)
    assert catalog.empty and catalog.runs == ()
    assert "make reproduce" in REPRODUCE_HINT.format(root=tmp_path)


def test_partial_tree_lists_the_run_and_names_the_missing_stages(
    app_tree: AppTree,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A clone with only the git-tracked results (similarity.csv, features.csv, metrics)."""
    src, dst = Paths(app_tree.root), Paths(tmp_path)
    for path in (src.similarity_csv(*_key()), src.features_csv(*_key()), src.sae_metrics(*_key())):
        target = tmp_path / path.relative_to(app_tree.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    run = scan(tmp_path).run(KEY)
    assert run.similarity and not run.finetuned and run.sae_units == ()
    assert run.crosscoder_layers == ()
    missing = run.missing("finetune", "sae", "crosscoder")
    assert missing == ["finetune", "sae", "crosscoder"]
    hint = run.hint(missing)
    assert f"finetune@{KEY.item}" in hint and f"sae@{KEY.item}" in hint and "make reproduce" in hint
    assert f"crosscoder@{KEY.item}" in hint
    assert dst.similarity_csv(*_key()).is_file()
    with pytest.raises(ExplorerError, match="no run other/kw/0"):
        scan(tmp_path).run(RunKey("other", "kw", 0))


def test_run_keys_and_units_round_trip() -> None:
    key = RunKey("minilm-l6", "sentiment", 2)
    assert key.param == "minilm-l6/sentiment/2" and key.item == "minilm-l6-sentiment-2"
    assert key.stage("sae") == "sae@minilm-l6-sentiment-2" and key.control is None
    control = RunKey("minilm-l6", "sentiment", parse_run("shuffled"))
    assert control.control == "shuffled" and control.item == "minilm-l6-sentiment"
    assert control.stage("crosscoder") == "crosscoder_shuffled@minilm-l6-sentiment"
    assert control.stage("prepare") == "prepare@sentiment"
    assert "shuffled-label control" in control.label and parse_run("10") == 10
    keys = [control, RunKey("minilm-l6", "sentiment", 10), key]
    assert sorted(keys, key=lambda k: k.order) == [key, keys[1], control]
    assert other_unit("pt_L4") == "ft_L4" and other_unit("ft_L4") == "pt_L4"
    units = sorted(["ft_L6", "pt_L6", "ft_L2", "pt_L2"], key=unit_sort_key)
    assert units == ["pt_L2", "ft_L2", "pt_L6", "ft_L6"]


def _key() -> tuple[str, str, int]:
    return KEY.model, KEY.task, KEY.seed


def test_a_size_models_runs_name_its_size_stages(app_tree: AppTree) -> None:  # noqa: F811
    """A model of size_models has its own ``*_size`` DVC stages: the hints name them, and a key
    built from the sidebar (which knows nothing of protocols) still finds the run."""
    catalog = scan(app_tree.root, size_models=[KEY.model])
    run = catalog.run(RunKey(KEY.model, KEY.task, 0))
    assert run.key.size and f"finetune_size@{KEY.item}" in run.hint(["finetune"])
    control = catalog.run(CONTROL)
    assert control.key.stage("compare") == f"compare_shuffled_size@{KEY.model}-{KEY.task}"
    assert not scan(app_tree.root).run(KEY).key.size
    # Size models have no crosscoders: asking says why instead of naming a stage that is not.
    assert not run.key.runs("crosscoder") and run.key.runs("sae")
    hint = run.hint(["crosscoder"])
    assert "size model" in hint and "crosscoder_size@" not in hint


def test_a_store_without_its_pt_half_names_the_pt_store_stage(
    app_tree: AppTree,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run's store links to the shared PT store: without it the catalog says the run lacks
    ``pt_store`` (not ``compare``, whose rerun would not make it), and the hint names the
    per-(model, task) stage (``_size`` for a size model)."""
    src = Paths(app_tree.root)
    store = src.activations(*_key())
    shutil.copytree(store, tmp_path / store.relative_to(app_tree.root))
    run = scan(tmp_path).run(KEY)
    assert run.store and not run.pt_store
    assert run.missing("compare") == ["pt_store"]
    assert f"pt_store@{KEY.model}-{KEY.task}" in run.hint(run.missing("compare"))
    size = scan(tmp_path, size_models=[KEY.model]).run(KEY)
    assert f"pt_store_size@{KEY.model}-{KEY.task}" in size.hint(["pt_store"])
    pt = src.pt_activations(KEY.model, KEY.task)
    shutil.copytree(pt, tmp_path / pt.relative_to(app_tree.root))
    assert scan(tmp_path).run(KEY).missing("compare") == []
