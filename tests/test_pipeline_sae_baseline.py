"""The sae_baseline stage: two SAEs trained with different seeds on the same data share more of
their dictionary than chance and less than all of it; end to end on SAE folders as the sae
stage writes them it fills exactly SAE_BASELINE_COLUMNS, one row per (layer, seed), and the
seed-mean summary; one seed leaves the baseline NaN; a missing SAE names the stage to run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import load_stage

from layerwise.errors import MissingInputError, StaleInputError
from layerwise.paths import Paths
from layerwise.pipeline.sae_baseline import (
    SUMMARY_COLUMNS,
    load_dictionary,
    random_floor,
    relative_overlap,
    symmetric_mmcs,
)
from layerwise.sae.model import SAEConfig, SparseAutoencoder, save_sae
from layerwise.sae.train import SAETrainer, TrainConfig, estimate_scale_factor
from layerwise.schema import SAE_BASELINE_COLUMNS, unit_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL, TASK, LAYERS, WIDTH = "tiny", "kw", [1, 2], 32
N_MODEL_LAYERS = 2
"""The tiny BERT's blocks (conftest ``tiny_bert_dir``)."""


# --------------------------------------------------------------------------------------------
# The seed baseline on really trained SAEs
# --------------------------------------------------------------------------------------------


def sparse_data(n: int = 4096, d: int = 32, n_true: int = 16, seed: int = 0) -> np.ndarray:
    """Tokens made of 2-3 of ``n_true`` fixed unit directions with positive weights."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal((n_true, d))
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    codes = np.zeros((n, n_true))
    for row in codes:
        active = rng.choice(n_true, size=rng.integers(2, 4), replace=False)
        row[active] = rng.uniform(0.5, 2.0, size=active.size)
    return (codes @ true).astype(np.float32)


def train_sae(x: np.ndarray, seed: int) -> SparseAutoencoder:
    cfg = SAEConfig(
        d_in=x.shape[1],
        d_sae=32,
        l1_coefficient=3.0,
        scale_factor=estimate_scale_factor(x, seed=seed),
    )
    config = TrainConfig(lr=3e-3, batch_size=128, epochs=4, warmup_steps=10, seed=seed)
    (sae,), _ = SAETrainer([cfg], [x], config).fit()
    return sae


def test_two_seeds_on_the_same_data_overlap_more_than_chance_but_not_fully() -> None:
    x = sparse_data()
    a, b = (train_sae(x, seed).W_dec.detach().numpy() for seed in (0, 1))
    floor = random_floor(len(a), len(b), a.shape[1], seed=0)
    same = symmetric_mmcs(a, b)
    assert floor + 0.3 < same < 0.999
    assert symmetric_mmcs(a, a) == pytest.approx(1.0)
    assert symmetric_mmcs(a, b) == pytest.approx(symmetric_mmcs(b, a))


def test_the_floor_is_seeded_and_relative_overlap_guards_its_denominator() -> None:
    assert random_floor(40, 50, 16, seed=3) == random_floor(40, 50, 16, seed=3)
    assert 0.0 < random_floor(40, 50, 16, seed=3) < 1.0
    assert relative_overlap(0.6, 0.8, 0.4) == pytest.approx(0.5)
    assert math.isnan(relative_overlap(0.6, float("nan"), 0.4))
    assert math.isnan(relative_overlap(0.6, 0.4, 0.4))


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def related_sae(base: torch.Tensor, noise: float, seed: int) -> SparseAutoencoder:
    """An SAE whose decoder rows are ``base``'s perturbed by ``noise`` (then unit-normed)."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = base + noise * torch.randn(base.shape, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=base.shape[1], d_sae=base.shape[0])
    return SparseAutoencoder.from_weights(
        cfg, w_dec.T.contiguous(), torch.zeros(base.shape[0]), w_dec, torch.zeros(base.shape[1])
    )


def l0_of(seed: int, which: str, layer: int) -> float:
    return 10.0 * seed + (1.0 if which == "pt" else 2.0) + layer / 10


def write_saes(root: Path, seeds: list[int]) -> None:
    """Per seed and layer, a PT and an FT SAE as the sae stage lays them out: both seeds' PT
    SAEs near one PT dictionary, FT SAEs further from it (so PT-PT > PT-FT > chance)."""
    base = torch.randn(64, WIDTH, generator=torch.Generator().manual_seed(0))
    for seed in seeds:
        for layer in LAYERS:
            for which, noise in (("pt", 0.2), ("ft", 0.6)):
                sae = related_sae(base, noise, 100 * seed + 10 * layer + (which == "ft"))
                folder = Paths(root).saes(MODEL, TASK, seed) / unit_name(which, layer)
                save_sae(sae, folder, extra={"eval": {"l0": l0_of(seed, which, layer)}})


def params_with_seeds(tiny_params: Path, seeds: list[int]) -> Path:
    raw = yaml.safe_load(tiny_params.read_text())
    raw["seeds"] = seeds
    assert raw["models"][MODEL]["layers"] == LAYERS
    tiny_params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return tiny_params


def argv(params: Path, root: Path) -> list[str]:
    return ["--model", MODEL, "--task", TASK, "--params", str(params), "--root", str(root)]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_stage_end_to_end(tiny_params: Path, tmp_path: Path, mlflow_uri: str) -> None:
    seeds = [0, 1]
    params = params_with_seeds(tiny_params, seeds)
    root = tmp_path / "repo"
    write_saes(root, seeds)
    result = load_stage("sae_baseline").main(argv(params, root))
    paths = Paths(root)

    written = json.loads(paths.sae_baseline_json(MODEL, TASK).read_text())
    assert written == result and set(written) == {"rows", "summary"}
    columns, rows = read_csv(paths.sae_baseline_csv(MODEL, TASK))
    assert columns == list(SAE_BASELINE_COLUMNS)
    assert [(int(r["layer"]), int(r["seed"]), int(r["other_seed"])) for r in rows] == [
        (1, 0, 1),
        (1, 1, 0),
        (2, 0, 1),
        (2, 1, 0),
    ]
    for row, json_row in zip(rows, written["rows"], strict=True):
        assert set(json_row) == set(SAE_BASELINE_COLUMNS)
        assert {k: float(v) for k, v in row.items()} == pytest.approx(json_row)
        r = json_row
        assert r["depth"] == r["layer"] / N_MODEL_LAYERS
        assert r["mmcs_pt_pt"] > r["mmcs_pt_ft"] > r["mmcs_floor"] > 0
        assert r["mmcs_pt_pt"] > r["mmcs_ft_ft"]
        assert 0 < r["overlap_rel"] < 1
        assert r["overlap_rel"] == pytest.approx(
            (r["mmcs_pt_ft"] - r["mmcs_floor"]) / (r["mmcs_pt_pt"] - r["mmcs_floor"])
        )
        assert (r["l0_pt"], r["l0_ft"]) == (
            l0_of(r["seed"], "pt", r["layer"]),
            l0_of(r["seed"], "ft", r["layer"]),
        )
    by_layer = {layer: [r for r in written["rows"] if r["layer"] == layer] for layer in LAYERS}
    assert by_layer[1][0]["mmcs_pt_pt"] == pytest.approx(by_layer[1][1]["mmcs_pt_pt"])
    assert written["summary"] == pytest.approx(
        {
            f"L{layer}/{col}": np.mean([r[col] for r in by_layer[layer]])
            for layer in LAYERS
            for col in SUMMARY_COLUMNS
        }
    )

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'sae_baseline'")
    assert run.info.run_name == f"sae_baseline@{MODEL}-{TASK}"
    assert run.info.status == "FINISHED"
    assert {k: run.data.metrics[k] for k in written["summary"]} == pytest.approx(written["summary"])


def test_one_seed_has_no_baseline(tiny_params: Path, tmp_path: Path, mlflow_uri: str) -> None:
    params = params_with_seeds(tiny_params, [0])
    root = tmp_path / "repo"
    write_saes(root, [0])
    result = load_stage("sae_baseline").main(argv(params, root))
    assert len(result["rows"]) == len(LAYERS)
    for row in result["rows"]:
        assert row["other_seed"] is None
        for col in ("mmcs_pt_pt", "mmcs_ft_ft", "overlap_rel"):
            assert math.isnan(row[col])
        assert row["mmcs_pt_ft"] > row["mmcs_floor"]
    _, rows = read_csv(Paths(root).sae_baseline_csv(MODEL, TASK))
    assert {r["other_seed"] for r in rows} == {""}
    assert math.isnan(result["summary"]["L2/overlap_rel"])


def test_a_missing_sae_names_the_stage_that_makes_it(
    tiny_params: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    params = params_with_seeds(tiny_params, [0, 1])
    root = tmp_path / "repo"
    write_saes(root, [0])
    missing = Paths(root).saes(MODEL, TASK, 1) / "pt_L1"
    with pytest.raises(MissingInputError, match=r"sae@tiny-kw-1") as err:
        load_stage("sae_baseline").main(argv(params, root))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not Paths(root).sae_baseline_json(MODEL, TASK).exists()
    assert not Paths(root).sae_baseline_csv(MODEL, TASK).exists()


def test_an_sae_without_eval_l0_is_stale(tmp_path: Path) -> None:
    folder = tmp_path / "pt_L1"
    save_sae(related_sae(torch.randn(8, 4), 0.1, 0), folder)
    with pytest.raises(StaleInputError, match=r"cfg.json: the SAE has no eval.l0"):
        load_dictionary(folder)
