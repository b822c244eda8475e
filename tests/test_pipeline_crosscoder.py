"""The crosscoder stage: on the tiny pipeline's stores it writes the exact metric keys, rows whose
class fractions sum to 1, histograms that count the alive latents, and crosscoder folders that
reload to the evaluated weights; the shuffled control writes under ``shuffled/``; a k above the
latent count fails in one line before training; and on synthetic paired stores with planted
FT-only directions that carry the label, FT-only latents appear and are more label-selective
over their null than the shared ones."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from conftest import write_keyword_csv
from reliability.reliability_support import (
    MODEL,
    SEED,
    TASK,
    run_pipeline,
    run_stage,
    stage_module,
    tiny_params_dict,
    write_params,
)

from layerwise import io, splice
from layerwise.activations import ActivationStore, StoreWriter
from layerwise.config import ConfigError, CrosscoderParams
from layerwise.models import load_encoder
from layerwise.paths import Paths
from layerwise.pipeline.crosscoder import PairedStores, crosscoder_replace, run_layer
from layerwise.pipeline.crosscoder_readout import SplitText
from layerwise.sae.crosscoder import Crosscoder, CrosscoderConfig, load_crosscoder
from layerwise.sae.crosscoder_analysis import evaluate_crosscoder
from layerwise.schema import (
    CROSSCODER_CURVE_COLUMNS,
    CROSSCODER_HIST_BINS,
    CROSSCODER_LAYER_COLUMNS,
    SAE_SPLICE_KEYS,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = (MODEL, TASK, SEED)
LAYERS = [1, 2]
CROSSCODER_OVERRIDES = {
    "batch_size": 64,
    "train_tokens": 3200,
    "warmup_steps": 5,
    "expansion": 2.0,
    "k": 4,
    "eval_batch_size": 512,
    "n_permutations": 4,
    "top_latents": 3,
}
"""The crosscoder section shrunk to seconds: 64 latents on the tiny model's width 32."""


@pytest.fixture(scope="module")
def upstream(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path
) -> SimpleNamespace:
    """prepare, finetune and compare of tiny-kw-0, run once into a template repo."""
    base = tmp_path_factory.mktemp("crosscoder_upstream")
    raw = tiny_params_dict(write_keyword_csv(base / "kw.csv"), tiny_bert_dir)
    raw["crosscoder"].update(CROSSCODER_OVERRIDES)
    assert raw["models"][MODEL]["layers"] == LAYERS
    params = write_params(base / "params.yaml", raw)
    root = base / "repo"
    db = base / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(base)
        run_pipeline(params, root, ("prepare", "finetune", "pt_store", "compare"))
    return SimpleNamespace(root=root, raw=raw, params=params, base=base)


@pytest.fixture
def repo(upstream: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the upstream repo, the working directory in tmp (MLflow artifacts)."""
    root = tmp_path / "repo"
    shutil.copytree(upstream.root, root)
    monkeypatch.chdir(tmp_path)
    return root


def read_csv(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    with path.open() as fh:
        reader = csv.DictReader(fh)
        rows = [{k: float(v) for k, v in row.items()} for row in reader]
    return list(reader.fieldnames or []), rows


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def test_stage_end_to_end(upstream: SimpleNamespace, repo: Path, mlflow_uri: str) -> None:
    """crosscoder@tiny-kw-0 writes the metrics file main returns (``L<layer>/<column>``), one
    CROSSCODER_LAYER_COLUMNS row per layer whose class fractions sum to 1, histograms that
    count the alive (and all) latents, top FT-only entries that are FT-only by norm, the
    curve, and one folder per layer that reloads to the weights the row was measured on."""
    metrics = run_stage("crosscoder", upstream.params, repo)
    paths = Paths(repo)

    written = json.loads(paths.crosscoder_metrics(*KEY).read_text())
    assert written.keys() == metrics.keys()
    assert set(written) == {f"L{lay}/{c}" for lay in LAYERS for c in CROSSCODER_LAYER_COLUMNS[2:]}

    columns, rows = read_csv(paths.crosscoder_csv(*KEY))
    assert columns == list(CROSSCODER_LAYER_COLUMNS)
    assert [r["layer"] for r in rows] == LAYERS
    assert [r["depth"] for r in rows] == [0.5, 1.0]
    result = json.loads(paths.crosscoder_json(*KEY).read_text())
    assert set(result) == {"layers", "hist", "hist_all", "top_ft_only", "thresholds", "splice"}
    assert 0 <= result["splice"]["ft_accuracy_clean"] <= 1
    assert result["thresholds"]["hist_bins"] == CROSSCODER_HIST_BINS
    for row, layer_row in zip(rows, result["layers"], strict=True):
        assert row == pytest.approx(layer_row, nan_ok=True)

    store = ActivationStore.open(paths.activations(*KEY), "analysis")
    for row in rows:
        layer, n = int(row["layer"]), int(row["n_latents"])
        assert n == 64
        fractions = row["pt_only_frac"] + row["shared_frac"] + row["ft_only_frac"]
        assert fractions == pytest.approx(1.0)
        assert 0 <= row["ft_only_artefact_frac"] <= 1 - row["ft_only_frac"]
        hist, hist_all = result["hist"][str(layer)], result["hist_all"][str(layer)]
        assert len(hist) == len(hist_all) == CROSSCODER_HIST_BINS
        assert sum(hist) == round(row["alive_frac"] * n) > 0
        assert sum(hist_all) == n
        assert row["alive_frac"] == pytest.approx(1 - row["dead_frac"])
        spliced = result["splice"]["layers"][str(layer)]
        assert set(spliced) == set(SAE_SPLICE_KEYS)
        assert spliced["ft_recovered_accuracy"] == pytest.approx(
            row["ft_recovered_accuracy"], nan_ok=True
        )
        assert np.isfinite(spliced["ft_recovered_loss"])  # losses never tie; accuracies may
        for entry in result["top_ft_only"][str(layer)]:
            assert entry["relative_norm"] > upstream.raw["crosscoder"]["ft_only_above"]
            assert len(entry["top_texts"]) == 3

        cc = load_crosscoder(paths.crosscoders(*KEY) / f"L{layer}")
        assert cc.cfg.metadata == {"model": MODEL, "task": TASK, "run": SEED, "layer": layer}
        acts = (store.acts(f"pt_L{layer}"), store.acts(f"ft_L{layer}"))
        ev = evaluate_crosscoder(cc, *acts)
        assert ev.metrics["pt"]["fvu"] == pytest.approx(row["fvu_pt"], rel=1e-5)
        assert ev.metrics["ft"]["fvu"] == pytest.approx(row["fvu_ft"], rel=1e-5)
        assert ev.metrics["pt"]["l0"] == pytest.approx(row["l0"], rel=1e-5)
        cfg = json.loads((paths.crosscoders(*KEY) / f"L{layer}" / "cfg.json").read_text())
        assert cfg["params"]["k"] == 4
        assert cfg["readout"]["ft_only_frac"] == pytest.approx(row["ft_only_frac"])

    curve_columns, curve = read_csv(paths.crosscoder_curve(*KEY))
    assert curve_columns == list(CROSSCODER_CURVE_COLUMNS)
    assert sorted({r["layer"] for r in curve}) == LAYERS
    assert sorted(repo.rglob(f"{io.TMP_PREFIX}*")) == []

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'crosscoder'")
    assert run.info.run_name == "crosscoder@tiny-kw-0"
    assert run.info.status == "FINISHED"
    logged = {k: run.data.metrics[k] for k in written}
    assert logged == pytest.approx(written, nan_ok=True)


def test_control_writes_under_shuffled(upstream: SimpleNamespace, repo: Path, mlflow_uri: str):
    """``--control shuffled`` reads the shuffled run's store and model and writes every output
    under ``shuffled/``, trained with the first seed (stores copied from s0 stand in for the
    shuffled fine-tune's, which this test does not need to be different)."""
    paths = Paths(repo)
    shuffled = (MODEL, TASK, "shuffled")
    shutil.copytree(paths.activations(*KEY), paths.activations(*shuffled))
    shutil.copytree(paths.finetuned(*KEY), paths.finetuned(*shuffled))
    argv = ["--model", MODEL, "--task", TASK, "--control", "shuffled"]
    metrics = stage_module("crosscoder").main(
        [*argv, "--params", str(upstream.params), "--root", str(repo)]
    )
    assert json.loads(paths.crosscoder_metrics(*shuffled).read_text()).keys() == metrics.keys()
    for path in (paths.crosscoder_json, paths.crosscoder_csv, paths.crosscoder_curve):
        assert path(*shuffled).is_file() and not path(*KEY).exists()
        assert "shuffled" in path(*shuffled).relative_to(repo).as_posix()
    cc = load_crosscoder(paths.crosscoders(*shuffled) / "L2")
    assert cc.cfg.metadata["run"] == "shuffled"


def test_k_above_the_latents_fails_in_one_line_before_training(
    upstream: SimpleNamespace, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """crosscoder.k above expansion x width is a ConfigError naming both, raised before the
    trainer is built; nothing is written."""
    raw = {**upstream.raw, "crosscoder": {**upstream.raw["crosscoder"], "k": 65}}
    params = write_params(tmp_path / "bad.yaml", raw)

    def no_training(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("layerwise.pipeline.crosscoder.CrosscoderTrainer", no_training)
    with pytest.raises(ConfigError) as err:
        run_stage("crosscoder", params, repo)
    message = str(err.value)
    assert "\n" not in message
    assert "crosscoder.k=65" in message and "64" in message
    assert not Paths(repo).crosscoder_metrics(*KEY).exists()


def test_splice_feeds_the_crosscoder_the_pt_state_of_the_same_tokens(
    upstream: SimpleNamespace, tiny_bert_dir: Path
) -> None:
    """The splice's replacement of one text's FT hidden state at layer 2 equals the crosscoder's
    FT reconstruction of that text's stored (PT, FT) rows: the PT states recorded for the splice
    are the same tokens at the same layer as the compare stage stored (up to the stores'
    float16)."""
    paths = Paths(upstream.root)
    store = ActivationStore.open(paths.activations(*KEY), "analysis")
    rows = np.flatnonzero(store.column("text_id") == 0)
    rows = rows[np.argsort(store.column("position")[rows])]
    stored = [
        torch.from_numpy(np.asarray(store.acts(f"{w}_L2")[rows], np.float32)) for w in ("pt", "ft")
    ]
    torch.manual_seed(0)
    cc = Crosscoder(CrosscoderConfig(d_in=32, d_latent=64, k=4), seed=0).eval()
    with torch.no_grad():
        cc.threshold.fill_(0.0)
        cc.W_enc[32:] = 0.0  # latents read the PT half only: a PT state off by a layer shows
    ids = torch.as_tensor(store.column("token_id")[rows], dtype=torch.long)[None]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pt, ft = load_encoder(str(tiny_bert_dir)), load_encoder(str(paths.finetuned(*KEY)))
    with torch.inference_mode():
        ft_hidden = ft(**batch, output_hidden_states=True).hidden_states[2]
    val = splice.ValTexts([ids[0].tolist()], np.zeros(1), 0, 1, "cpu")
    pt_states = splice.record_states(pt, val, [2])
    with torch.inference_mode():
        replaced = crosscoder_replace(cc, pt_states, 2)(0, batch)(ft_hidden)[0]
        expected = cc.decode(cc.encode(*stored))[1]
    assert replaced.shape == expected.shape == (len(rows), 32)
    torch.testing.assert_close(replaced, expected, atol=5e-3, rtol=5e-3)


# --------------------------------------------------------------------------------------------
# Planted FT-only directions
# --------------------------------------------------------------------------------------------

D, N_TEXTS, TOKENS_PER_TEXT = 24, 160, 12
N_SHARED = 10


def planted_store(root: Path, split: str, labels: np.ndarray, seed: int) -> None:
    """Paired stores of layer 3: every token holds ~2 of 10 shared directions (in both models,
    unrelated to the label), and a third of a text's tokens hold the FT-only direction of the
    text's class (FT rows only)."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(0).standard_normal((N_SHARED + 2, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    shared, ft_only = dirs[:N_SHARED], dirs[N_SHARED:]
    n = len(labels) * TOKENS_PER_TEXT
    text_id = np.repeat(np.arange(len(labels)), TOKENS_PER_TEXT)
    coef = rng.uniform(1, 2, (n, N_SHARED)) * (rng.random((n, N_SHARED)) < 0.2)
    x_pt = coef @ shared + rng.normal(0, 0.05, (n, D))
    carries = (rng.random(n) < 1 / 3)[:, None] * rng.uniform(1.5, 2.5, (n, 1))
    x_ft = x_pt + carries * ft_only[labels[text_id]]
    index = np.stack([text_id, np.tile(np.arange(TOKENS_PER_TEXT), len(labels)), text_id % 7], 1)
    writer = StoreWriter(root / split, ["pt_L3", "ft_L3"], n, D)
    writer.write(0, {"pt_L3": x_pt, "ft_L3": x_ft}, index.astype(np.int32))
    writer.close({"n_texts": len(labels), "dim": D, "layers": [3]})


class _Tokens:
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"tok{i}" for i in ids]


def test_planted_label_carrying_ft_only_directions(tmp_path: Path) -> None:
    """Directions that only the FT rows hold, each on the tokens of one class's texts, give
    FT-only latents (confirmed by Latent Scaling) whose selectivity over the permutation null
    is far above the shared latents'; the top list names them with their class."""
    torch.manual_seed(0)
    labels = np.random.default_rng(1).permutation(np.arange(N_TEXTS) % 2)
    planted_store(tmp_path, "train", np.random.default_rng(2).permutation(np.arange(400) % 2), 3)
    planted_store(tmp_path, "analysis", labels, 4)
    params = CrosscoderParams(
        expansion=2.0, k=3, batch_size=256, train_tokens=256 * 400, warmup_steps=20,
        learning_rate=3e-3, eval_batch_size=1024, n_permutations=5, top_latents=2,
    )  # fmt: skip
    split = SplitText([f"text {i}" for i in range(N_TEXTS)], labels, ["neg", "pos"], _Tokens())
    stores = PairedStores.open(tmp_path, [3])
    result = run_layer(stores, 3, 6, split, params, 0, "cpu", {"run": 0})
    row = result.row
    assert row["ft_only_frac"] > 0
    assert row["pt_only_frac"] == 0
    assert row["fvu_ft"] < 0.2
    assert row["selectivity_ft_only"] > 0.9
    assert row["selectivity_excess_ft_only"] > row["selectivity_excess_shared"] + 0.2
    assert sorted(e["best_class"] for e in result.top) == ["neg", "pos"]
    assert sum(result.hist) == round(row["alive_frac"] * row["n_latents"])
