"""Loading the paper's inputs: every seed of every (model, task), formats checked file by file,
and a missing or stale file named with the stage that makes it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from paper_support import ONE_MODEL, TASKS, TWO_MODELS, write_params, write_results

from layerwise.config import Params, load_params
from layerwise.paper.inputs import CrosscoderRun, Stat, check_inputs, load_inputs
from layerwise.paths import Paths
from layerwise.schema import CROSSCODER_HIST_BINS


def synthetic(root: Path, models: dict[str, tuple[int, list[int]]], seeds: list[int]) -> Params:
    write_results(root, models, TASKS, seeds)
    return load_params(write_params(root, models, TASKS, seeds))


def test_stat_formatting_and_seed_interval() -> None:
    assert Stat.of([0.5]).text() == "0.500"
    assert Stat.of([0.5, 0.7]).text(2) == "0.60 ± 0.14"
    assert Stat.of([]).text() == "n/a"
    one, three = Stat.of([0.5]), Stat.of([0.5, 0.6, 0.7])
    assert one.ci_text() == "0.500" and not one.excludes_zero_above
    assert three.lo == pytest.approx(0.6 - 4.3027 * 0.1 / 3**0.5, abs=1e-4)
    assert three.ci_text(2) == "0.60 [0.35, 0.85]" and three.excludes_zero_above


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
    # The controls: seed floor, shuffled-label run and per-seed reset curves.
    assert rs.seed_floor["cosine_mean"].shape == (5,) and rs.seed_floor["n_pairs"][0] == 1
    assert rs.shuffled_finetune["ft/accuracy"] == pytest.approx(0.21)
    assert rs.shuffled_similarity["cosine"].shape == (5,)
    assert rs.reset_values("top_down", "lost_gain").shape == (2, 5)
    assert rs.reset_stat("ft/accuracy").n == 2


def test_missing_inputs_are_listed_with_the_stage_that_makes_them(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    paths = Paths(tmp_path)
    paths.features_json("tiny", "sentiment", 0).unlink()
    paths.sae_metrics("tiny", "rating", 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"2 input file\(s\) missing") as info:
        check_inputs(params, paths, max_listed=1)
    assert "dvc repro features@tiny-sentiment-0" in str(info.value)
    assert "... and 1 more" in str(info.value)


def test_missing_controls_name_their_stages(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    paths = Paths(tmp_path)
    paths.reset_csv("tiny", "sentiment", 0).unlink()
    paths.seed_floor_csv("tiny", "rating").unlink()
    paths.similarity_csv("tiny", "rating", "shuffled").unlink()
    paths.finetune_metrics("tiny", "sentiment", "shuffled").unlink()
    with pytest.raises(FileNotFoundError, match=r"4 input file\(s\) missing") as info:
        check_inputs(params, paths)
    for stage in (
        "reset@tiny-sentiment-0",
        "seed_floor@tiny-rating",
        "compare_shuffled@tiny-rating",
        "finetune_shuffled@tiny-sentiment",
    ):
        assert f"dvc repro {stage}" in str(info.value)


def test_stale_reset_csv_names_the_stage(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    path = Paths(tmp_path).reset_csv("tiny", "rating", 0)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(ln for ln in lines if not ln.startswith("top_down,3,")) + "\n")
    with pytest.raises(
        ValueError, match=r"top_down rows must run k = 0..L; rerun reset@tiny-rating-0"
    ):
        load_inputs(params, Paths(tmp_path))


def test_stale_format_names_the_file_and_the_stage_to_rerun(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0])
    path = Paths(tmp_path).sae_metrics("tiny", "rating", 0)
    data = json.loads(path.read_text())
    del data["ft_L4/fvu"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ft_L4/fvu.*dvc repro sae@tiny-rating-0") as info:
        load_inputs(params, Paths(tmp_path))
    assert str(path) in str(info.value)


def test_crosscoder_and_baseline_are_read_per_seed_and_checked(tmp_path: Path) -> None:
    params = synthetic(tmp_path, ONE_MODEL, [0, 1])
    paths = Paths(tmp_path)
    rs = load_inputs(params, paths).run("tiny", "sentiment")
    assert rs.crosscoder_values("ft_only_frac", 6).tolist() == pytest.approx([0.15, 0.154])
    assert rs.shuffled_crosscoder_value("ft_only_frac", 6) == pytest.approx(0.03)
    assert rs.baseline_values("overlap_rel", 6).tolist() == pytest.approx([0.5, 0.51])
    assert rs.crosscoder[0].hist[6].shape == (CROSSCODER_HIST_BINS,)
    assert rs.crosscoder[0].top_ft_only[2] == [] and len(rs.crosscoder[1].top_ft_only[6]) == 3
    # A histogram with the wrong number of bins, then a missing (layer, seed) row: stale.
    cc = paths.crosscoder_json("tiny", "rating", "shuffled")
    data = json.loads(cc.read_text())
    data["hist"]["4"] = data["hist"]["4"][:5]
    cc.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'hist' of layer\(s\) \[4\].*crosscoder_shuffled@tiny"):
        load_inputs(params, paths)
    data["hist"]["4"] = [1] * CROSSCODER_HIST_BINS
    cc.write_text(json.dumps(data))
    base = paths.sae_baseline_csv("tiny", "rating")
    lines = base.read_text().splitlines()
    base.write_text("\n".join(ln for ln in lines if not ln.startswith("6,1.0,1,")) + "\n")
    with pytest.raises(ValueError, match=r"\(6, 1\).*sae_baseline@tiny-rating"):
        load_inputs(params, paths)


def _hist_run(counts: list[int]) -> CrosscoderRun:
    return CrosscoderRun({}, {6: np.asarray(counts, dtype=float)}, {})


def test_norm_spread_is_the_std_of_relative_norms_from_the_histogram() -> None:
    """One bin: every latent used alike, spread 0; half in each end bin: about 0.475 (bin
    centres 0.025 and 0.975); no alive latent: NaN."""
    bins = CROSSCODER_HIST_BINS
    middle = [0] * bins
    middle[bins // 2] = 100
    ends = [0] * bins
    ends[0] = ends[-1] = 50
    assert _hist_run(middle).norm_spread(6) == pytest.approx(0.0)
    assert _hist_run(ends).norm_spread(6) == pytest.approx(0.5 - 0.5 / bins)
    assert math.isnan(_hist_run([0] * bins).norm_spread(6))
