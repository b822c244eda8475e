"""The paper stage: claim rules, table writers, and ``stages/paper.py`` end to end on small
synthetic results written in exactly the formats the earlier stages write.

Two synthetic tasks: ``sentiment`` has a planted monotone fall of cosine with depth, separated
CIs and features that specialise late (every claim should hold); ``rating`` is flat (no claim
should hold). One variant has 1 model x 1 seed, the other 2 models x 2 seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from conftest import REPO_PARAMS, REPO_ROOT

from layerwise import claims as C
from layerwise import figures, plots, tables
from layerwise.config import load_params
from layerwise.paths import Paths

EXPERIMENT = "layerwise-paper-test"
DPI = 160
LABELS = {"sentiment": ["negative", "positive"], "rating": ["1", "2", "3", "4", "5"]}
SHAPES = {"sentiment": "planted", "rating": "flat"}
ONE_MODEL = {"tiny": (6, [2, 4, 6])}
TWO_MODELS = {"tiny": (6, [2, 4, 6]), "small": (4, [1, 2, 4])}
FIGURES = [
    "layerwise_similarity",
    "finetune_curves",
    "probe_accuracy",
    "sae_quality",
    "feature_evolution",
]
TABLES = ["finetune_accuracy", "layer_similarity", "sae_metrics", "feature_table", "claims"]


def _load_stage():
    spec = importlib.util.spec_from_file_location("paper_stage", REPO_ROOT / "stages/paper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_stage"] = module
    spec.loader.exec_module(module)
    return module


paper_stage = _load_stage()


# --------------------------------------------------------------------------------------------
# Synthetic results in the earlier stages' formats
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def similarity_rows(n_layers: int, shape: str, seed: int) -> list[dict[str, Any]]:
    """``planted``: cosine falls steadily with depth, tight CIs; ``flat``: constant, wide CIs."""
    rows = []
    for layer in range(n_layers + 1):
        d = layer / n_layers
        jitter = 0.002 * seed
        if shape == "planted":
            cos, half, cka = 0.999 - 0.5 * d**1.5 - jitter, 0.004, 0.999 - 0.8 * d**2
        else:
            cos, half, cka = 0.9, 0.02, 0.9
        pt, ft = 0.6 + 0.05 * d, 0.6 + (0.3 * d if shape == "planted" else 0.05 * d)
        rows.append(
            {
                "layer": layer,
                "depth": d,
                "cosine": cos,
                "cosine_lo": cos - half,
                "cosine_hi": cos + half,
                "cka": cka,
                "cka_lo": cka - 0.01,
                "cka_hi": cka + 0.01,
                "probe_pt": pt,
                "probe_pt_lo": pt - 0.03,
                "probe_pt_hi": pt + 0.03,
                "probe_ft": ft,
                "probe_ft_lo": ft - 0.03,
                "probe_ft_hi": ft + 0.03,
                "n_tokens": 500,
            }
        )
    return rows


def features_result(
    n_layers: int, sae_layers: list[int], labels: list[str], shape: str
) -> dict[str, Any]:
    """A features.json: late FT features more selective and a changed late dictionary when
    ``planted``; nothing changes with depth when ``flat``."""
    units: dict[str, Any] = {}
    layer_rows = []
    tokens = ["[CLS]", "a", "truly", "great", "film", "$", "100", "%", "_x", "[SEP]"]
    for i, layer in enumerate(sae_layers):
        frac = i / max(len(sae_layers) - 1, 1)
        planted = shape == "planted"
        sel = {"pt": 0.6, "ft": 0.6 + (0.3 * frac if planted else 0.0)}
        for which in ("pt", "ft"):
            feats = [
                {
                    "feature": 10 * i + f,
                    "variance": 1.0 / (f + 1),
                    "fire_rate": 0.1,
                    "selectivity": sel[which],
                    "best_class": labels[f % len(labels)],
                    "dominant_label": labels[f % len(labels)],
                    "label_distribution": {name: 1 / len(labels) for name in labels},
                    "top_tokens": [
                        {"token": tok, "mean_activation": 1.0, "count": 5}
                        for tok in ("great", "100%", "R&D", "a_b", "#1")
                    ],
                    "top_texts": [
                        {"text_index": 0, "activation": 2.0, "label": labels[0], "text": "great"}
                    ],
                }
                for f in range(3)
            ]
            units[f"{which}_L{layer}"] = {
                "which": which,
                "layer": layer,
                "n_features": 64,
                "alive_frac": 0.9,
                "selectivity_top": sel[which],
                "selective_frac": sel[which] - 0.5,
                "selectivity_alive_mean": 0.55,
                "top_features": feats,
            }
        layer_rows.append(
            {
                "layer": layer,
                "depth": layer / n_layers,
                "mmcs": 0.9 - 0.5 * frac if shape == "planted" else 0.8,
                "kept_frac": 0.8 - 0.4 * frac,
                "selectivity_top_pt": sel["pt"],
                "selectivity_top_ft": sel["ft"],
                "selective_frac_pt": sel["pt"] - 0.5,
                "selective_frac_ft": sel["ft"] - 0.5,
                "alive_pt": 0.9,
                "alive_ft": 0.9,
            }
        )
    examples = []
    for j, label in enumerate(labels[:2]):
        maps = {
            unit: {
                "features": [int(u["top_features"][k]["feature"]) for k in range(3)],
                "activations": [[float(t + j), 0.5, 0.0] for t in range(len(tokens))],
            }
            for unit, u in units.items()
        }
        examples.append(
            {
                "text_index": j,
                "label": label,
                "text": "a truly great film $100 % _x",
                "tokens": tokens,
                "maps": maps,
            }
        )
    table = [
        {
            "layer": u["layer"],
            "model": u["which"].upper(),
            "feature": f["feature"],
            "top_tokens": " ".join(t["token"] for t in f["top_tokens"]),
            "dominant_label": f["dominant_label"],
            "selectivity": f["selectivity"],
            "unit": name,
        }
        for name, u in units.items()
        for f in u["top_features"]
    ]
    return {"units": units, "layers": layer_rows, "examples": examples, "table": table}


def write_results(
    root: Path, models: dict[str, tuple[int, list[int]]], tasks: list[str], seeds: list[int]
) -> None:
    """Every input of the paper stage, under ``root``, in the earlier stages' formats."""
    paths = Paths(root)
    for t in tasks:
        labels = LABELS[t]
        prep: dict[str, Any] = {"texts": 1000, "classes": len(labels)}
        for split, rows in (("train", 600), ("val", 200), ("analysis", 200)):
            prep[f"{split}/rows"] = rows
            for k, name in enumerate(labels):
                prep[f"{split}/label/{name}"] = rows // len(labels) + (k == 0) * (
                    rows % len(labels)
                )
            prep.update({f"{split}/tokens/{s}": 20.0 for s in ("mean", "median", "p95", "max")})
        _write_json(paths.prepare_metrics(t), prep)
    for m, (n_layers, sae_layers) in models.items():
        for t in tasks:
            labels, shape = LABELS[t], SHAPES[t]
            for s in seeds:
                ft: dict[str, Any] = {
                    "ft/accuracy": 0.85 + 0.01 * s,
                    "ft/macro_f1": 0.84,
                    "pt_head/accuracy": 0.5,
                    "pt_head/macro_f1": 0.4,
                    "pt_probe/accuracy": 0.7,
                    "pt_probe/macro_f1": 0.69,
                    "data/n_train": 600,
                    "data/n_val": 200,
                    "data/majority_accuracy": 1 / len(labels),
                    "speed/train_s": 10.0,
                    **{f"ft/f1/{name}": 0.8 for name in labels},
                }
                if t == "rating":
                    ft["ft/within_one_accuracy"] = 0.95
                _write_json(paths.finetune_metrics(m, t, s), ft)
                curve = []
                for step in range(1, 21):
                    curve.append(
                        {"step": step, "epoch": step / 10, "train_loss": 1.0 / step + 0.01 * s}
                    )
                    if step % 10 == 0:
                        curve.append(
                            {
                                "step": step,
                                "epoch": step / 10,
                                "val_loss": 0.3,
                                "val_accuracy": 0.8 + 0.01 * step / 10,
                            }
                        )
                _write_csv(paths.finetune_curve(m, t, s), list(tables.CURVE_COLUMNS), curve)
                sim = similarity_rows(n_layers, shape, s)
                _write_csv(paths.similarity_csv(m, t, s), list(tables.SIMILARITY_COLUMNS), sim)
                _write_json(
                    paths.similarity_json(m, t, s),
                    {
                        "cosine/first": sim[0]["cosine"],
                        "cosine/last": sim[-1]["cosine"],
                        "cka/last": sim[-1]["cka"],
                        "ci_methods": {"cosine": "bootstrap", "cka": "jackknife"},
                        "confidence": 0.95,
                    },
                )
                sae: dict[str, float] = {"ft/accuracy_clean": 0.85}
                for k in sae_layers:
                    for which in ("pt", "ft"):
                        unit = f"{which}_L{k}"
                        sae.update(
                            {
                                f"{unit}/mse": 0.01 * k,
                                f"{unit}/explained_variance": 0.9 - 0.02 * k,
                                f"{unit}/fvu": 0.1 + 0.02 * k + 0.01 * s,
                                f"{unit}/l0": 20.0 + k,
                                f"{unit}/dead_frac": 0.05,
                                f"{unit}/dense_frac": 0.01,
                                f"{unit}/cos_sim": 0.95,
                            }
                        )
                    sae[f"ft_L{k}/ft_accuracy_spliced"] = 0.8
                _write_json(paths.sae_metrics(m, t, s), sae)
                feats = features_result(n_layers, sae_layers, labels, shape)
                _write_json(paths.features_json(m, t, s), feats)
                _write_csv(
                    paths.features_csv(m, t, s), list(tables.FEATURE_LAYER_COLUMNS), feats["layers"]
                )


def write_params(
    root: Path, models: dict[str, tuple[int, list[int]]], tasks: list[str], seeds: list[int]
) -> Path:
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["tasks"] = tasks
    raw["seeds"] = seeds
    raw["task_defs"] = {t: raw["task_defs"][t] for t in tasks}
    raw["models"] = {
        m: {"source": f"hub:example/{m}", "layers": layers, "description": f"synthetic {m}"}
        for m, (_, layers) in models.items()
    }
    raw.setdefault("data", {}).pop("stats_model", None)
    raw.setdefault("paper", {})["dpi"] = DPI
    raw.setdefault("mlflow", {})["experiment"] = EXPERIMENT
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)
    return path


@pytest.fixture
def one_model(tmp_path: Path, mlflow_uri: str) -> tuple[Path, Path]:
    """(root, params) for 1 model x 2 tasks x 1 seed, with one finished compare run in MLflow."""
    root = tmp_path / "repo"
    tasks = ["sentiment", "rating"]
    write_results(root, ONE_MODEL, tasks, [0])
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.create_experiment(EXPERIMENT)
    run = client.create_run(exp, run_name="compare@tiny-sentiment-0")
    client.set_terminated(run.info.run_id, "FINISHED")
    (root / "planted_run_id").write_text(run.info.run_id)
    return root, write_params(root, ONE_MODEL, tasks, [0])


@pytest.fixture
def two_models(tmp_path: Path, mlflow_uri: str) -> tuple[Path, Path]:
    """(root, params) for 2 models x 2 tasks x 2 seeds."""
    root = tmp_path / "repo"
    tasks = ["sentiment", "rating"]
    write_results(root, TWO_MODELS, tasks, [0, 1])
    return root, write_params(root, TWO_MODELS, tasks, [0, 1])


def run_stage(root: Path, params: Path) -> dict[str, float]:
    return paper_stage.main(["--params", str(params), "--root", str(root)])


# --------------------------------------------------------------------------------------------
# Checks on the written files
# --------------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the decoded image."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.size


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
# Claim rules
# --------------------------------------------------------------------------------------------


def claim_inputs(cosine: np.ndarray, half: float, mmcs: tuple[float, float] = (0.9, 0.4)):
    layers = np.arange(len(cosine))
    return C.ClaimInputs(
        model="m",
        task="t",
        layers=layers,
        cosine=cosine,
        cosine_lo=cosine - half,
        cosine_hi=cosine + half,
        cka=cosine,
        sae_layers=[2, 4, 6],
        selectivity_top_pt={2: 0.6, 4: 0.6, 6: 0.6},
        selectivity_top_ft={2: 0.6, 4: 0.7, 6: 0.9},
        mmcs={2: mmcs[0], 4: 0.7, 6: mmcs[1]},
    )


def test_rules_hold_on_planted_monotone_curve_with_separated_cis() -> None:
    inp = claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01)
    results = C.evaluate(inp, rho_threshold=-0.8)
    assert [r.verdict for r in results] == [C.HOLDS] * 3
    assert results[0].numbers["rho_cosine"] == pytest.approx(-1.0)


def test_rules_do_not_hold_on_flat_curve() -> None:
    flat = claim_inputs(np.full(7, 0.9), half=0.02, mmcs=(0.8, 0.8))
    flat = dataclasses.replace(flat, selectivity_top_ft=flat.selectivity_top_pt)
    results = C.evaluate(flat, rho_threshold=-0.8)
    assert [r.verdict for r in results] == [C.FAILS] * 3
    assert np.isnan(results[0].numbers["rho_cosine"])


def test_rules_partly_and_threshold_is_a_parameter() -> None:
    """A falling curve with overlapping CIs is 'partly' for C1 and C2; with separated CIs the
    same curve holds or is only 'partly' depending on rho_threshold alone."""
    noisy = claim_inputs(np.array([0.95, 0.96, 0.94, 0.93, 0.90, 0.91, 0.89]), half=0.05)
    c1 = C.check_c1(noisy, rho_threshold=-0.8)
    assert c1.verdict == C.PARTLY and c1.checks["rho_below_threshold"]
    assert C.check_c2(noisy).verdict == C.PARTLY
    assert C.check_c1(noisy, rho_threshold=-0.99).verdict == C.PARTLY  # rho < 0 only
    separated = claim_inputs(np.array([0.95, 0.96, 0.94, 0.93, 0.90, 0.91, 0.89]), half=0.001)
    assert C.check_c1(separated, rho_threshold=-0.8).verdict == C.HOLDS
    assert C.check_c1(separated, rho_threshold=-0.99).verdict == C.PARTLY  # threshold decides
    assert "-0.8" in C.rules(-0.8)["C1"] and "-0.5" in C.rules(-0.5)["C1"]


def test_c2_needs_three_sae_layers_and_c3_counts_checks() -> None:
    inp = claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01)
    two = dataclasses.replace(inp, sae_layers=[2, 6])
    assert C.check_c2(two).verdict == C.FAILS
    one_check = dataclasses.replace(
        inp, selectivity_top_ft={2: 0.9, 4: 0.6, 6: 0.5}, mmcs={2: 0.4, 6: 0.3}
    )
    result = C.check_c3(one_check)
    assert sum(result.checks.values()) == 1 and result.verdict == C.PARTLY


def test_claims_metrics_are_numbers_with_stable_keys() -> None:
    results = C.evaluate(claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01), -0.8)
    metrics = C.claims_metrics(results)
    assert metrics["claims/m/t/C1"] == 1.0 and metrics["claims/holds"] == 3.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert list(metrics) == sorted(metrics)


# --------------------------------------------------------------------------------------------
# Table writers
# --------------------------------------------------------------------------------------------


def test_latex_escape_and_stat_formatting() -> None:
    assert tables.latex_escape("a_b 5% R&D #1 $x {y}") == (r"a\_b 5\% R\&D \#1 \$x \{y\}")
    assert tables.Stat.of([0.5]).text() == "0.500"
    assert tables.Stat.of([0.5, 0.7]).text(2) == "0.60 ± 0.14"
    assert tables.Stat.of([]).text() == "n/a"


def test_paper_reference_is_interpolated_at_relative_depth() -> None:
    ref = tables.PAPER_REPORTED_COSINE_BERT_BASE_IMDB
    assert tables.paper_reference_cosine(0.0) == pytest.approx(ref[0])
    assert tables.paper_reference_cosine(0.5) == pytest.approx(ref[6])  # layer 3 of 6 ~ 6 of 12
    assert tables.paper_reference_cosine(1 / 8) == pytest.approx((ref[1] + ref[2]) / 2)


def test_plot_token_maps_writes_a_png_of_the_expected_size(tmp_path: Path) -> None:
    feats = features_result(6, [2, 4, 6], LABELS["sentiment"], "planted")
    units = figures.token_map_units([2, 4, 6])
    assert units == ["pt_L2", "ft_L2", "pt_L4", "ft_L4", "pt_L6", "ft_L6"]
    out = tmp_path / "maps" / "sentiment.png"
    plots.plot_token_maps(feats["examples"], units, out, "token maps", dpi=100)
    w, h = plots.token_map_figsize(len(feats["examples"]), len(units))
    assert png_size(out) == (round(w * 100), round(h * 100))


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def test_stage_one_model(one_model: tuple[Path, Path], mlflow_uri: str) -> None:
    """Every figure, table and the summary appear; the planted task's claims hold, the flat
    task's do not; similarity_across_models is not drawn and summary.md says how to get it."""
    root, params = one_model
    metrics = run_stage(root, params)
    check_common_outputs(root, ["sentiment", "rating"], ["tiny"])
    fig_dir = root / "paper" / "figures"
    assert png_size(fig_dir / "layerwise_similarity.png") == (1760, 608)  # 11 x 3.8 in at 160
    assert not list(fig_dir.glob("similarity_across_models*"))
    summary = (root / "paper" / "summary.md").read_text()
    assert "similarity_across_models` (not drawn)" in summary
    assert "add a model under `models:`" in summary.lower()
    assert (root / "planted_run_id").read_text() in summary
    assert "n/a" in summary  # runs that do not exist
    for rule in C.rules(-0.8).values():
        assert rule in summary

    on_disk = json.loads((root / "metrics" / "paper.json").read_text())
    assert on_disk == pytest.approx(metrics, nan_ok=True)
    for claim in ("C1", "C2", "C3"):
        assert on_disk[f"claims/tiny/sentiment/{claim}"] == 1.0
        assert on_disk[f"claims/tiny/rating/{claim}"] == 0.0
    assert on_disk["claims/tiny/sentiment/rho_cosine"] == pytest.approx(-1.0)
    assert on_disk["claims/holds"] == 3.0 and on_disk["claims/does_not_hold"] == 3.0

    claims_csv = list(csv.DictReader((root / "paper/tables/claims.csv").open()))
    assert {(r["task"], r["verdict"]) for r in claims_csv} == {
        ("sentiment", "holds"),
        ("rating", "does not hold"),
    }
    acc = (root / "paper/tables/finetune_accuracy.md").read_text()
    assert "IMDB" in acc and "Spotify" in acc and "| 54 | 93 |" in acc

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs(
        [exp.experiment_id], filter_string="attributes.run_name = 'paper@all'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.metrics["claims/holds"] == 3.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"figures", "tables", "summary.md"} <= artifacts


def test_stage_two_models_two_seeds(two_models: tuple[Path, Path]) -> None:
    """With 2 models the across-models figure is drawn; numbers are mean ± std over seeds."""
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
    assert metrics["claims/small/sentiment/C1"] == 1.0
    assert metrics["claims/n"] == 12.0


def test_missing_input_names_its_stage_and_writes_nothing(one_model: tuple[Path, Path]) -> None:
    root, params = one_model
    Paths(root).similarity_csv("tiny", "rating", 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"compare@tiny-rating-0") as info:
        run_stage(root, params)
    assert "similarity.csv" in str(info.value)
    assert not (root / "paper").exists()
    assert not (root / "metrics" / "paper.json").exists()


def test_token_maps_tolerate_missing_units_and_empty_examples(tmp_path: Path) -> None:
    """A unit absent from an example is a blank row; an example without tokens still draws."""
    feats = features_result(6, [2, 4, 6], LABELS["sentiment"], "planted")
    ex = feats["examples"][0]
    del ex["maps"]["ft_L4"]
    empty = {"text_index": 9, "label": "positive", "text": "", "tokens": [], "maps": {}}
    out = tmp_path / "maps.png"
    plots.plot_token_maps([ex, empty], figures.token_map_units([2, 4, 6]), out, "t", dpi=50)
    assert png_size(out)[0] == round(figures.TOKEN_MAP_WIDTH * 50)
    plots.plot_token_maps([], ["pt_L2"], tmp_path / "none.png", "t", dpi=50)
    assert (tmp_path / "none.png").stat().st_size > 0
