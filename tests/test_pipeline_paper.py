"""The paper stage end to end (``stages/paper.py``) on small synthetic results written in
exactly the formats the earlier stages write (see ``paper_support``).

One variant has 1 model x 1 seed (no seed interval, no seed floor and no SAE seed baseline: the
control-based claims cannot hold), the other 2 models x 2 seeds (the planted task's claims
hold).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import mlflow
import pytest
from conftest import load_stage
from paper_support import (
    DPI,
    EXPERIMENT,
    ONE_MODEL,
    TASKS,
    TWO_MODELS,
    png_size,
    write_params,
    write_results,
)

from layerwise.config import PaperParams
from layerwise.paper import claims as C
from layerwise.paper import figures
from layerwise.paths import Paths

FIGURES = [
    "layerwise_similarity",
    "similarity_across_models",
    "crosscoder_norms",
    "crosscoder_fractions",
    "finetune_curves",
    "probe_accuracy",
    "layer_reset",
    "sae_quality",
    "feature_evolution",
]
TABLES = [
    "finetune_accuracy",
    "layer_similarity",
    "layer_reset",
    "sae_metrics",
    "dictionary_overlap",
    "feature_table",
    "crosscoder_summary",
    "crosscoder_latents",
    "claims",
    "model_size_claims",
]

paper_stage = load_stage("paper")


@pytest.fixture
def one_model(tmp_path: Path, mlflow_uri: str) -> tuple[Path, Path]:
    """(root, params) for 1 model x 2 tasks x 1 seed, with one finished compare run in MLflow."""
    root = tmp_path / "repo"
    write_results(root, ONE_MODEL, TASKS, [0])
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.create_experiment(EXPERIMENT)
    run = client.create_run(exp, run_name="compare@tiny-sentiment-0")
    client.set_terminated(run.info.run_id, "FINISHED")
    (root / "planted_run_id").write_text(run.info.run_id)
    return root, write_params(root, ONE_MODEL, TASKS, [0])


@pytest.fixture
def two_models(tmp_path: Path, mlflow_uri: str) -> tuple[Path, Path]:
    """(root, params) for 2 models x 2 tasks x 2 seeds."""
    root = tmp_path / "repo"
    write_results(root, TWO_MODELS, TASKS, [0, 1])
    return root, write_params(root, TWO_MODELS, TASKS, [0, 1])


def run_stage(root: Path, params: Path) -> dict[str, float]:
    return paper_stage.main(["--params", str(params), "--root", str(root)])


# --------------------------------------------------------------------------------------------
# Checks on the written files
# --------------------------------------------------------------------------------------------


def expected_px(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * DPI), round(size[1] * DPI)


def split_cells(line: str) -> list[str]:
    """Cells of a LaTeX table row: split on ``&`` not escaped as ``\\&``."""
    return re.split(r"(?<!\\)&", line.removesuffix(r"\\").strip())


def check_latex(text: str) -> None:
    begins = re.findall(r"\\begin\{(\w+)\}", text)
    ends = re.findall(r"\\end\{(\w+)\}", text)
    assert sorted(begins) == sorted(ends), (begins, ends)
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", text).group(1)
    n_cols = len(re.findall(r"[lrc]|p\{[^}]*\}", spec))
    body = text.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.strip().endswith(r"\\")]
    assert len(rows) >= 2
    for row in rows:
        assert len(split_cells(row)) == n_cols, row
    # Special characters are escaped: no bare _ % & # $ outside commands / math.
    plain = re.sub(r"\$\\pm\$", "", body)
    for ch in "_%#":
        assert not re.search(rf"(?<!\\){re.escape(ch)}", plain), ch


def check_common_outputs(root: Path, tasks: list[str], models: list[str]) -> None:
    fig_dir, tab_dir = root / "paper" / "figures", root / "paper" / "tables"
    names = FIGURES + [figures.token_map_name(m, t) for m in models for t in tasks]
    for name in names:
        for suffix in ("png", "pdf"):
            path = fig_dir / f"{name}.{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
    for name in FIGURES:
        assert png_size(fig_dir / f"{name}.png") == expected_px(
            figures.figure_size(name, len(models), len(tasks))
        ), name
    for name in TABLES:
        for suffix in ("csv", "md", "tex"):
            path = tab_dir / f"{name}.{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
        check_latex((tab_dir / f"{name}.tex").read_text())
    assert (root / "paper" / "summary.md").stat().st_size > 0
    assert not list((root / "paper").glob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def test_stage_one_model(one_model: tuple[Path, Path], mlflow_uri: str) -> None:
    """Every figure, table and the summary appear; with one seed no claim holds (C1, C2 and C3
    need seed intervals, the seed floor and the SAE seed baseline); similarity_across_models is
    drawn against the paper's curves and summary.md says how to add a model of ours."""
    root, params = one_model
    metrics = run_stage(root, params)
    check_common_outputs(root, ["sentiment", "rating"], ["tiny"])
    fig_dir = root / "paper" / "figures"
    assert png_size(fig_dir / "layerwise_similarity.png") == (1344, 1088)  # 8.4 x 6.8 in
    summary = (root / "paper" / "summary.md").read_text()
    assert "not drawn" not in summary
    assert "add a model under `size_models:`" in summary.lower()
    assert (root / "planted_run_id").read_text() in summary
    assert "n/a" in summary  # runs that do not exist
    for rule in C.rules(PaperParams()).values():
        assert rule in summary
    assert "What the data do not support:" in summary

    on_disk = json.loads((root / "metrics" / "paper.json").read_text())
    assert on_disk == pytest.approx(metrics, nan_ok=True)
    expected = {"C1": 0.0, "C2": 0.5, "C3": 0.0}
    for claim in ("C1", "C2", "C3"):
        assert on_disk[f"claims/tiny/sentiment/{claim}"] == expected[claim]
        assert on_disk[f"claims/tiny/rating/{claim}"] == 0.0
    assert on_disk["claims/tiny/sentiment/late_below_shuffled"] > 0.3  # measured, no interval
    assert on_disk["claims/tiny/sentiment/ft_only_late_minus_shuffled"] > 0.1  # no interval
    assert on_disk["claims/holds"] == 0.0 and on_disk["claims/does_not_hold"] == 5.0

    claims_csv = list(csv.DictReader((root / "paper/tables/claims.csv").open()))
    assert {(r["task"], r["claim"], r["verdict"]) for r in claims_csv} == {
        ("sentiment", "C1", "does not hold"),
        ("sentiment", "C2", "partly"),
        ("sentiment", "C3", "does not hold"),
        *(("rating", c, "does not hold") for c in ("C1", "C2", "C3")),
    }
    assert {r["control"] for r in claims_csv} == set(C.CONTROLS.values())
    acc = (root / "paper/tables/finetune_accuracy.md").read_text()
    assert "shuffled-label FT acc (%)" in acc
    assert "IMDB" in acc and "Spotify" in acc and "| 54 | 93 |" in acc

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs(
        [exp.experiment_id], filter_string="attributes.run_name = 'paper@all'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.metrics["claims/holds"] == 0.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"figures", "tables", "summary.md"} <= artifacts


def test_stage_two_models_two_seeds(two_models: tuple[Path, Path]) -> None:
    """Two models and seeds: numbers are mean ± std over seeds, every claim holds on the planted
    task, and the new tables carry seed intervals and the model."""
    root, params = two_models
    run_stage(root, params)
    check_common_outputs(root, ["sentiment", "rating"], ["tiny", "small"])
    fig = root / "paper" / "figures" / "similarity_across_models.png"
    assert png_size(fig) == expected_px(figures.figure_size("similarity_across_models", 2, 2))
    assert (root / "paper" / "figures" / "similarity_across_models.pdf").stat().st_size > 0
    summary = (root / "paper" / "summary.md").read_text()
    assert "not drawn" not in summary
    assert "mean across seeds" in summary
    header = next(csv.reader((root / "paper/tables/finetune_accuracy.csv").open()))
    assert "ft_acc_std" in header
    assert "±" in (root / "paper/tables/sae_metrics.md").read_text()
    metrics = json.loads((root / "metrics" / "paper.json").read_text())
    for claim in ("C1", "C2", "C3"):
        assert metrics[f"claims/small/sentiment/{claim}"] == 1.0
        assert metrics[f"claims/tiny/rating/{claim}"] == 0.0
    assert metrics["claims/small/sentiment/late_below_shuffled_lo"] > 0
    assert metrics["claims/n"] == 12.0
    sim = next(csv.reader((root / "paper/tables/layer_similarity.csv").open()))
    assert {"cosine_seed_lo", "floor_cosine_lo", "shuffled_cosine", "probe_diff_lo"} <= set(sim)
    assert metrics["claims/small/sentiment/ft_only_late_minus_shuffled_lo"] > 0
    assert metrics["claims/small/sentiment/overlap_rel_late_hi"] < 1
    for name in TABLES:
        header = next(csv.reader((root / f"paper/tables/{name}.csv").open()))
        assert header[0] == "model", name
    cc = list(csv.DictReader((root / "paper/tables/crosscoder_summary.csv").open()))
    late = next(r for r in cc if (r["model"], r["task"], r["layer"]) == ("tiny", "sentiment", "6"))
    assert float(late["ft_only_frac"]) == pytest.approx(0.152)  # seeds 0 and 1: 0.15, 0.154
    assert float(late["ft_only_minus_shuffled_seed_lo"]) > 0
    overlap = list(csv.DictReader((root / "paper/tables/dictionary_overlap.csv").open()))
    assert {"overlap_rel_seed_lo", "overlap_rel_seed_hi", "mmcs_floor"} <= set(overlap[0])
    sae = next(csv.reader((root / "paper/tables/sae_metrics.csv").open()))
    assert {"recovered_acc", "recovered_acc_seed_lo", "recovered_acc_lo"} <= set(sae)
    latents = (root / "paper/tables/crosscoder_latents.md").read_text()
    assert "(none)" in latents and "great, 100%, R&D, a_b" in latents
    assert "..." in latents  # long top texts are cut to a snippet
    feats = next(csv.reader((root / "paper/tables/feature_table.csv").open()))
    assert {"selectivity_null", "selectivity_excess"} <= set(feats)
    assert "### C3 (late layers specialise) in detail" in summary


SIZE_MODEL = {"big": (12, [3, 6, 12])}


@pytest.fixture
def with_size_model(tmp_path: Path, mlflow_uri: str) -> tuple[Path, Path]:
    """(root, params): one full-protocol model with 2 seeds, and a 12-layer size model that ran
    seed 0 and the shuffled control only (no reset, seed floor, crosscoder or baseline)."""
    root = tmp_path / "repo"
    write_results(root, ONE_MODEL, TASKS, [0, 1], size_models=SIZE_MODEL)
    return root, write_params(root, ONE_MODEL, TASKS, [0, 1], size_models=SIZE_MODEL)


def test_stage_with_a_size_model(with_size_model: tuple[Path, Path]) -> None:
    """A size model joins the model-size figure, the tables and the one-seed claim checks, and
    stays out of the seed-level claims; the one-seed rules hold on the planted task (the late
    layer moved beyond the shuffled control, the transition in the middle) and not on the flat
    one, for both model sizes alike."""
    root, params = with_size_model
    metrics = run_stage(root, params)
    check_common_outputs(root, TASKS, ["tiny"])
    summary = (root / "paper" / "summary.md").read_text()
    assert "not drawn" not in summary and "add a model under" not in summary
    assert "size_models: seed(s) [0], shuffled-label control only" in summary
    assert "## Model-size check: C1 and C2 on one seed" in summary
    assert metrics["claims/n"] == 6.0  # the full-protocol model only
    # The planted fall has begun by tiny's early layer (depth 1/3: cosine 0.940) beyond the
    # shuffled control's mild fall (0.949), so only its late part holds; big's early layer
    # (depth 1/4) is still above the control.
    assert metrics["size_claims/big/sentiment/C1"] == 1.0
    assert metrics["size_claims/tiny/sentiment/C1"] == 0.5
    assert metrics["size_claims/tiny/sentiment/gap_early_lo"] > 0
    for m in ("tiny", "big"):
        assert metrics[f"size_claims/{m}/sentiment/C2"] == 1.0
        assert metrics[f"size_claims/{m}/rating/C1"] == 0.5  # early yes, late no
        assert metrics[f"size_claims/{m}/rating/C2"] == 0.0
    assert metrics["size_claims/big/sentiment/gap_late_lo"] > 0
    rows = list(csv.DictReader((root / "paper/tables/finetune_accuracy.csv").open()))
    big = [r for r in rows if r["model"] == "big"]
    assert len(big) == 2 and "sample: 100 train / 50 val / 50 analysis texts" in big[0]["data"]
    sim = list(csv.DictReader((root / "paper/tables/layer_similarity.csv").open()))
    big_sim = [r for r in sim if r["model"] == "big"]
    assert len(big_sim) == 2 * 13 and big_sim[0]["floor_cosine"] in ("", "nan")
    sae = {r["model"] for r in csv.DictReader((root / "paper/tables/sae_metrics.csv").open())}
    assert sae == {"tiny", "big"}
    size_claims = list(csv.DictReader((root / "paper/tables/model_size_claims.csv").open()))
    assert {(r["model"], r["claim"]) for r in size_claims} >= {("big", "C1"), ("tiny", "C2")}
    cc = {r["model"] for r in csv.DictReader((root / "paper/tables/crosscoder_summary.csv").open())}
    assert cc == {"tiny"}


def test_missing_size_input_names_its_size_stage(with_size_model: tuple[Path, Path]) -> None:
    root, params = with_size_model
    Paths(root).finetune_metrics("big", "rating", "shuffled").unlink()
    Paths(root).sae_metrics("big", "sentiment", 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"2 input file\(s\) missing") as info:
        run_stage(root, params)
    assert "dvc repro finetune_shuffled_size@big-rating" in str(info.value)
    assert "dvc repro sae_size@big-sentiment-0" in str(info.value)
    assert not (root / "paper").exists()


def test_missing_crosscoder_or_baseline_names_its_stage(one_model: tuple[Path, Path]) -> None:
    root, params = one_model
    Paths(root).crosscoder_json("tiny", "sentiment", "shuffled").unlink()
    Paths(root).sae_baseline_csv("tiny", "rating").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 input file\(s\) missing") as info:
        run_stage(root, params)
    assert "dvc repro crosscoder_shuffled@tiny-sentiment" in str(info.value)
    assert "dvc repro sae_baseline@tiny-rating" in str(info.value)
    assert not (root / "paper").exists()


def test_missing_input_names_its_stage_and_writes_nothing(one_model: tuple[Path, Path]) -> None:
    root, params = one_model
    Paths(root).similarity_csv("tiny", "rating", 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"compare@tiny-rating-0") as info:
        run_stage(root, params)
    assert "similarity.csv" in str(info.value)
    assert not (root / "paper").exists()
    assert not (root / "metrics" / "paper.json").exists()
