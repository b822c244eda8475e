"""Loading the paper's inputs: every seed of every (model, task), formats checked file by file,
and a missing or stale file named with the stage that makes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paper_support import ONE_MODEL, TASKS, TWO_MODELS, write_params, write_results

from layerwise.config import Params, load_params
from layerwise.paper.inputs import Stat, check_inputs, load_inputs
from layerwise.paths import Paths


def synthetic(root: Path, models: dict[str, tuple[int, list[int]]], seeds: list[int]) -> Params:
    write_results(root, models, TASKS, seeds)
    return load_params(write_params(root, models, TASKS, seeds))


def test_stat_formatting() -> None:
    assert Stat.of([0.5]).text() == "0.500"
    assert Stat.of([0.5, 0.7]).text(2) == "0.60 ± 0.14"
    assert Stat.of([]).text() == "n/a"


def test_load_inputs_holds_every_seed_of_every_run(tmp_path: Path) -> None:
    params = synthetic(tmp_path, TWO_MODELS, [0, 1])
    inputs = load_inputs(params, Paths(tmp_path))
    assert sorted(inputs.runs) == sorted((m, t) for m in TWO_MODELS for t in TASKS)
    rs = inputs.run("small", "rating")
    assert rs.seeds == [0, 1] and rs.sae_layers == [1, 2, 4] and rs.n_layers == 4
    assert rs.sim("cosine").shape == (2, 5)
    acc = rs.finetune_stat("ft/accuracy")
    assert acc.n == 2 and acc.mean == pytest.approx(0.855)
    assert rs.feature_stat("mmcs", 4).mean == pytest.approx(0.8)  # flat: unchanged dictionary
    assert inputs.run("small", "sentiment").feature_stat("mmcs", 4).mean == pytest.approx(0.4)
    assert inputs.majority_analysis("sentiment") == pytest.approx(0.5)


def test_missing_inputs_are_listed_with_the_stage_that_makes_them(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    paths = Paths(tmp_path)
    paths.features_json("tiny", "sentiment", 0).unlink()
    paths.sae_metrics("tiny", "rating", 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"2 input file\(s\) missing") as info:
        check_inputs(params, paths, max_listed=1)
    assert "dvc repro features@tiny-sentiment-0" in str(info.value)
    assert "... and 1 more" in str(info.value)


def test_stale_format_names_the_file_and_the_stage_to_rerun(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    path = Paths(tmp_path).sae_metrics("tiny", "rating", 0)
    data = json.loads(path.read_text())
    del data["ft_L4/fvu"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ft_L4/fvu.*dvc repro sae@tiny-rating-0") as info:
        load_inputs(params, Paths(tmp_path))
    assert str(path) in str(info.value)
