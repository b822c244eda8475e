"""The compare stage: similarity invariants (self-comparison, padding), the layer index
convention, activation stores that map back to their tokens and reproduce the reported numbers,
the stage's exact outputs, and bad input refused before any work."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_PARAMS, keyword_splits, write_keyword_csv

from layerwise import data, io
from layerwise.activations import (
    PT_LINK,
    ActivationStore,
    PairedEncoders,
    length_sorted_batches,
    pad_batch,
    tokenize_texts,
)
from layerwise.config import CompareParams, ConfigError
from layerwise.models import load_config, load_encoder, load_tokenizer
from layerwise.paths import Paths
from layerwise.pipeline.compare import check_pair, run_compare
from layerwise.schema import SIMILARITY_CI_METHODS, SIMILARITY_COLUMNS
from layerwise.similarity.accumulator import LayerSimilarityAccumulator
from layerwise.similarity.metrics import linear_cka

MAX_LENGTH = 32
TOKEN_BUDGET = 300  # below the ~700 train tokens, so the budget binds
SMALL = CompareParams(batch_size=16, token_budget=200, n_boot=50, n_blocks=4, probe_folds=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Keyword splits 60 / 20 / 30, as prepare@kw makes them from the conftest CSV."""
    return keyword_splits(tmp_path_factory.mktemp("kw"), 120, 60, 20, 30)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path) -> SimpleNamespace:
    """The tiny BERT encoder (eval mode), its tokenizer and a seeded perturbed copy (a stand-in
    fine-tuned model whose hidden states differ from the original's)."""
    pt = load_encoder(str(tiny_bert_dir))
    ft = copy.deepcopy(pt)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return SimpleNamespace(pt=pt, ft=ft, tokenizer=load_tokenizer(str(tiny_bert_dir)))


def hidden_states(model: Any, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """All hidden states of one unpadded text, ``[T, D]`` each."""
    batch = pad_batch([ids], 0)
    with torch.inference_mode():
        return tuple(h[0] for h in model(**batch, output_hidden_states=True).hidden_states)


# --------------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------------


def test_model_compared_with_itself(tiny: SimpleNamespace, splits: Any, tmp_path: Path) -> None:
    """PT = FT gives cosine 1 and CKA 1 at every layer (0..L), equal probes (a paired
    difference of exactly 0, CI [0, 0]), and identical PT and FT stores."""
    encoders = PairedEncoders(pt=tiny.pt, ft=tiny.pt, device=torch.device("cpu"))
    result = run_compare(
        encoders, tiny.tokenizer, splits, [0, 1, 2], SMALL, MAX_LENGTH, 0, tmp_path, False
    )
    assert [row["layer"] for row in result.layers] == [0, 1, 2]
    for row in result.layers:
        assert row["cosine"] == pytest.approx(1.0, abs=1e-5)
        assert row["cka"] == pytest.approx(1.0, abs=1e-5)
        assert row["probe_pt"] == row["probe_ft"]
        assert (row["probe_diff"], row["probe_diff_lo"], row["probe_diff_hi"]) == (0.0, 0.0, 0.0)
    store = ActivationStore.open(tmp_path, "analysis")
    for layer in (0, 1, 2):
        np.testing.assert_array_equal(store.acts(f"pt_L{layer}"), store.acts(f"ft_L{layer}"))


def test_exclude_special_drops_cls_sep_from_similarity_only(
    tiny: SimpleNamespace, splits: Any, tmp_path: Path
) -> None:
    """With compare.exclude_special the similarity counts skip [CLS] and [SEP] (two per text)
    while the analysis store still holds every token."""
    params = dataclasses.replace(SMALL, exclude_special=True)
    encoders = PairedEncoders(pt=tiny.pt, ft=tiny.ft, device=torch.device("cpu"))
    result = run_compare(
        encoders, tiny.tokenizer, splits, [2], params, MAX_LENGTH, 0, tmp_path, False
    )
    ids = tokenize_texts(tiny.tokenizer, list(splits["analysis"]["text"]), MAX_LENGTH)
    n_all = sum(len(x) for x in ids)
    assert result.n_tokens_analysis == n_all
    assert result.summary["n_tokens"] == n_all - 2 * len(ids)
    assert all(row["n_tokens"] == n_all - 2 * len(ids) for row in result.layers)
    assert ActivationStore.open(tmp_path, "analysis").n_tokens == n_all


def test_padding_changes_nothing(tiny: SimpleNamespace, splits: Any) -> None:
    """Padding every batch to a wider width than needed changes no real token's hidden state
    and no similarity number (cosine, CKA, their CIs, pooled features)."""
    ids = tokenize_texts(tiny.tokenizer, list(splits["analysis"]["text"]), MAX_LENGTH)
    pad_id = tiny.tokenizer.pad_token_id
    encoders = PairedEncoders(pt=tiny.pt, ft=tiny.ft, device=torch.device("cpu"))
    accs = {
        key: LayerSimilarityAccumulator(3, 32, len(ids), n_blocks=4) for key in ("tight", "wide")
    }
    for idx in length_sorted_batches([len(x) for x in ids], 8):
        tight = pad_batch([ids[i] for i in idx], pad_id)
        b, width = tight["input_ids"].shape
        extra = 40 - width
        assert extra > 0
        wide = {
            "input_ids": torch.cat(
                [tight["input_ids"], torch.full((b, extra), pad_id, dtype=torch.long)], 1
            ),
            "attention_mask": torch.cat(
                [tight["attention_mask"], torch.zeros((b, extra), dtype=torch.long)], 1
            ),
        }
        states = {"tight": encoders.hidden_states(tight), "wide": encoders.hidden_states(wide)}
        real = tight["attention_mask"].bool()
        for which in (0, 1):  # PT, FT
            for layer in range(3):
                torch.testing.assert_close(
                    states["wide"][which][layer][:, :width][real],
                    states["tight"][which][layer][real],
                )
        for key, batch in (("tight", tight), ("wide", wide)):
            accs[key].update(*states[key], batch["attention_mask"].bool(), idx)
    tight_rows = accs["tight"].result(n_boot=50, seed=0)
    wide_rows = accs["wide"].result(n_boot=50, seed=0)
    assert tight_rows[0]["cosine"] < 0.999  # the perturbed model really differs
    for a, b in zip(tight_rows, wide_rows, strict=True):
        assert a["n_tokens"] == b["n_tokens"]
        for key in ("cosine", "cosine_lo", "cosine_hi", "cka", "cka_lo", "cka_hi"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    for layer in range(3):
        np.testing.assert_allclose(
            accs["wide"].pooled(layer, "ft"), accs["tight"].pooled(layer, "ft"), atol=1e-6
        )


def test_layer_zero_is_the_embedding_output(tiny: SimpleNamespace, splits: Any) -> None:
    """hidden_states[0] is the embedding layer's output, and hidden_states[k] is block k's
    output (so the layers passed around are hidden-state indices)."""
    ids = tokenize_texts(tiny.tokenizer, list(splits["analysis"]["text"][:3]), MAX_LENGTH)
    for text in ids:
        states = hidden_states(tiny.pt, text)
        assert len(states) == 3  # L + 1 for the 2-layer model
        input_ids = torch.tensor([text])
        with torch.inference_mode():
            embedded = tiny.pt.embeddings(input_ids=input_ids)[0]
            # One unpadded text: no attention mask needed.
            block1 = tiny.pt.encoder.layer[0](embedded[None])
            block2 = tiny.pt.encoder.layer[1](block1)
        torch.testing.assert_close(states[0], embedded)
        torch.testing.assert_close(states[1], block1[0])
        torch.testing.assert_close(states[2], block2[0])


def test_store_layer_zero_holds_embeddings(
    tiny: SimpleNamespace, splits: Any, tmp_path: Path
) -> None:
    """A store of layer 0 holds the embedding output of each token (float16 tolerance)."""
    encoders = PairedEncoders(pt=tiny.pt, ft=tiny.ft, device=torch.device("cpu"))
    run_compare(encoders, tiny.tokenizer, splits, [0], SMALL, MAX_LENGTH, 0, tmp_path, False)
    store = ActivationStore.open(tmp_path, "analysis")
    ids = tokenize_texts(tiny.tokenizer, list(splits["analysis"]["text"]), MAX_LENGTH)
    acts, text_id = store.acts("pt_L0"), store.column("text_id")
    for i in range(0, len(ids), 7):
        with torch.inference_mode():
            embedded = tiny.pt.embeddings(input_ids=torch.tensor([ids[i]]))[0]
        stored = torch.from_numpy(acts[text_id == i].astype(np.float32))
        torch.testing.assert_close(stored, embedded, rtol=1e-3, atol=1e-3)


def test_check_pair_refuses_mismatches(tiny_bert_dir: Path) -> None:
    """Identical tokenizers and configs pass; a tokenizer with another vocabulary, and configs
    of another width or depth, fail naming what differs."""
    tok, other_tok = load_tokenizer(str(tiny_bert_dir)), load_tokenizer(str(tiny_bert_dir))
    config = load_config(str(tiny_bert_dir))
    check_pair(tok, other_tok, config, config)  # no error
    other_tok.add_tokens(["zzyzxqq"])
    with pytest.raises(ConfigError, match=r"tokenizers differ"):
        check_pair(tok, other_tok, config, config)
    for attr, value in (("hidden_size", 48), ("num_hidden_layers", 3)):
        other = copy.deepcopy(config)
        setattr(other, attr, value)
        with pytest.raises(ConfigError, match=rf"differ in {attr}: {getattr(config, attr)} vs"):
            check_pair(tok, tok, config, other)


# --------------------------------------------------------------------------------------------
# The stage, run once: prepare -> finetune -> compare into a temp repo
# --------------------------------------------------------------------------------------------


def write_params(path: Path, tiny_bert_dir: Path, keyword_csv: Path) -> Path:
    """The conftest ``tiny_params`` recipe (module-scoped here), with a binding token budget."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["seeds"] = [0]
    raw["tasks"] = ["kw"]
    raw["task_defs"] = {
        "kw": {
            "source": str(keyword_csv),
            "format": "csv",
            "labels": {"kind": "column"},
            "max_train": 60,
            "max_val": 20,
            "max_analysis": 30,
        }
    }
    raw["models"] = {"tiny": {"source": str(tiny_bert_dir), "layers": [1, 2]}}
    if raw.get("data", {}).get("stats_model"):
        raw["data"]["stats_model"] = "tiny"
    raw["finetune"].update(
        epochs=3, batch_size=8, learning_rate=1e-3, max_length=MAX_LENGTH, logging_steps=2
    )
    raw["compare"].update(
        batch_size=16, token_budget=TOKEN_BUDGET, n_boot=50, n_blocks=4, probe_folds=3
    )
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_argv(params: Path, root: Path) -> list[str]:
    keys = ["--model", "tiny", "--task", "kw", "--seed", "0"]
    return [*keys, "--params", str(params), "--root", str(root)]


@pytest.fixture(scope="module")
def stage(
    stages: dict[str, ModuleType],
    tiny_bert_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _mlflow_template_db: Path,
) -> SimpleNamespace:
    """prepare@kw, finetune@tiny-kw-0 and compare@tiny-kw-0 run once into a temp repo."""
    base = tmp_path_factory.mktemp("compare_stage")
    params = write_params(base / "params.yaml", tiny_bert_dir, write_keyword_csv(base / "kw.csv"))
    root = base / "repo"
    shutil.copyfile(_mlflow_template_db, base / "mlruns.db")
    uri = f"sqlite:///{base / 'mlruns.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(base)  # MLflow puts a new experiment's artifacts under <cwd>/mlruns
        stages["prepare"].main(["--task", "kw", "--params", str(params), "--root", str(root)])
        stages["finetune"].main(stage_argv(params, root))
        stages["pt_store"].main(stage_argv(params, root)[:4] + stage_argv(params, root)[6:])
        summary = stages["compare"].main(stage_argv(params, root))
    paths = Paths(root)
    with paths.similarity_csv("tiny", "kw", 0).open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    return SimpleNamespace(
        root=root,
        paths=paths,
        uri=uri,
        summary=summary,
        columns=reader.fieldnames,
        rows=[{k: float(v) for k, v in row.items()} for row in rows],
        splits=data.load_splits(paths.prepared("kw")),
        store=paths.activations("tiny", "kw", 0),
        ft_dir=paths.finetuned("tiny", "kw", 0),
        pt_dir=tiny_bert_dir,
        tokenizer=load_tokenizer(str(tiny_bert_dir)),
    )


def expected_summary_keys(layers: list[int]) -> set[str]:
    keys = {f"{m}/{w}" for m in ("cosine", "cka") for w in ("first", "last", "min")}
    keys |= {"probe_pt/last", "probe_ft/last"}
    keys |= {f"{m}/L{k}" for m in ("cosine", "cka") for k in layers}
    keys |= {"n_texts", "n_tokens", "store/n_tokens_analysis", "store/n_tokens_train"}
    return keys


def test_stage_writes_exact_summary_and_csv(stage: SimpleNamespace) -> None:
    """similarity.json holds exactly the summary keys (plus ci_methods, confidence and the
    probes' pooling, mean for the tiny BERT) and equals what main returned; the CSV has
    SIMILARITY_COLUMNS and one row per layer 0..L whose values the summary repeats; every CI
    (the paired probe difference's too) contains its estimate; a FINISHED MLflow run exists."""
    written = json.loads(stage.paths.similarity_json("tiny", "kw", 0).read_text())
    extra = {"ci_methods", "confidence", "probe_pooling"}
    assert set(written) == expected_summary_keys([1, 2]) | extra
    assert written["probe_pooling"] == "mean"
    assert written["ci_methods"] == SIMILARITY_CI_METHODS
    assert written["confidence"] == 0.95
    assert {k: v for k, v in written.items() if k in stage.summary} == pytest.approx(stage.summary)
    assert set(stage.summary) == expected_summary_keys([1, 2])

    assert stage.columns == list(SIMILARITY_COLUMNS)
    rows = stage.rows
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert [r["depth"] for r in rows] == [0.0, 0.5, 1.0]
    assert written["n_texts"] == 30
    assert all(r["n_tokens"] == written["n_tokens"] for r in rows)
    for k in (1, 2):
        assert written[f"cosine/L{k}"] == pytest.approx(rows[k]["cosine"])
        assert written[f"cka/L{k}"] == pytest.approx(rows[k]["cka"])
    assert written["cosine/first"] == pytest.approx(rows[0]["cosine"])
    assert written["cka/last"] == pytest.approx(rows[2]["cka"])
    assert written["probe_ft/last"] == pytest.approx(rows[2]["probe_ft"])
    assert written["cosine/min"] == pytest.approx(min(r["cosine"] for r in rows))
    for row in rows:
        for metric in ("cosine", "cka", "probe_pt", "probe_ft", "probe_diff"):
            lo, est, hi = row[f"{metric}_lo"], row[metric], row[f"{metric}_hi"]
            assert lo <= est <= hi, (row["layer"], metric, lo, est, hi)
        assert 0 <= row["cka"] <= 1
        assert row["probe_diff"] == pytest.approx(row["probe_ft"] - row["probe_pt"])
    assert sorted(stage.root.rglob(f"{io.TMP_PREFIX}*")) == []

    client = mlflow.MlflowClient(stage.uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'compare'")
    assert run.info.status == "FINISHED"
    assert (run.data.tags["task"], run.data.tags["model"], run.data.tags["seed"]) == (
        "kw",
        "tiny",
        "0",
    )
    assert run.data.metrics["cka/L2"] == pytest.approx(written["cka/L2"])
    # The CSV is logged (its file name is checked by the xfail test below).
    (artifact,) = client.list_artifacts(run.info.run_id, "similarity")
    logged = Path(run.info.artifact_uri.removeprefix("file://")) / artifact.path
    assert logged.read_bytes() == stage.paths.similarity_csv("tiny", "kw", 0).read_bytes()
    assert logged.is_relative_to(stage.root.parent)


def test_similarity_artifact_keeps_its_file_name(stage: SimpleNamespace) -> None:
    """The similarity CSV is logged to MLflow under its own name (similarity/similarity.csv)."""
    client = mlflow.MlflowClient(stage.uri)
    experiment = client.get_experiment_by_name("layerwise")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'compare'")
    artifacts = client.list_artifacts(run.info.run_id, "similarity")
    assert [a.path for a in artifacts] == ["similarity/similarity.csv"]


def test_fine_tuning_moved_the_representations(stage: SimpleNamespace) -> None:
    """The fine-tuned model differs from the pre-trained one (the stage compared two models),
    so the recomputation below checks real numbers, not the trivial value 1."""
    assert stage.summary["cosine/last"] < 0.999


def test_store_rows_are_hidden_states_at_their_layer(stage: SimpleNamespace) -> None:
    """Stored pt_L<k> / ft_L<k> rows equal hidden_states[k] of the PT / FT encoder at those
    tokens (float16 tolerance), and not a neighbouring layer's or the other model's."""
    models = {
        "pt": load_encoder(str(stage.pt_dir)),
        "ft": load_encoder(str(stage.ft_dir)),
    }
    store = ActivationStore.open(stage.store, "analysis")
    text_id = store.column("text_id")
    ids = tokenize_texts(stage.tokenizer, list(stage.splits["analysis"]["text"]), MAX_LENGTH)
    mismatches = {"L-1": 0, "other model": 0}
    for i, text in enumerate(ids):
        states = {which: hidden_states(m, text) for which, m in models.items()}
        rows = text_id == i
        for which in ("pt", "ft"):
            for layer in (1, 2):
                stored = torch.from_numpy(store.acts(f"{which}_L{layer}")[rows].astype(np.float32))
                torch.testing.assert_close(stored, states[which][layer], rtol=1e-3, atol=1e-3)
                if not torch.allclose(stored, states[which][layer - 1], rtol=1e-2, atol=1e-2):
                    mismatches["L-1"] += 1
                other = states["ft" if which == "pt" else "pt"][layer]
                if not torch.allclose(stored, other, rtol=1e-2, atol=1e-2):
                    mismatches["other model"] += 1
    assert mismatches == {"L-1": 4 * len(ids), "other model": 4 * len(ids)}


def test_run_store_holds_the_ft_half_linked_to_the_shared_pt_store(
    stage: SimpleNamespace,
) -> None:
    """compare stores the FT layers only and links each split to pt_store's PT half of the
    same tokens (one PT store per model and task, whatever the seed): the linked store reads
    both halves, and the PT half is pt_store's own file, not a copy."""
    pt_root = stage.paths.pt_activations("tiny", "kw")
    for split in ("analysis", "train"):
        meta = json.loads((stage.store / split / "meta.json").read_text())
        assert meta["stores"] == ["ft_L1", "ft_L2"]
        assert meta[PT_LINK] == "../pt"
        assert sorted(p.name for p in (stage.store / split).glob("pt_*")) == []
        store = ActivationStore.open(stage.store, split)
        assert store.names == ["ft_L1", "ft_L2", "pt_L1", "pt_L2"]
        linked = Path(store.acts("pt_L2").filename).resolve()
        assert linked == (pt_root / split / "pt_L2.npy").resolve()
        assert json.loads((pt_root / split / "meta.json").read_text())["stores"] == [
            "pt_L1",
            "pt_L2",
        ]


def test_store_index_maps_rows_to_tokens(stage: SimpleNamespace) -> None:
    """Every stored row's token id is the tokenizer's id of text ``text_id`` at ``position``;
    rows are grouped by text in split order and each text is whole (positions 0..len-1)."""
    for split in ("analysis", "train"):
        store = ActivationStore.open(stage.store, split)
        texts = list(stage.splits[split]["text"])
        ids = tokenize_texts(stage.tokenizer, texts, MAX_LENGTH)
        index = np.asarray(store.index)
        text_id, position, token_id = index.T
        assert len(index) == store.n_tokens
        assert np.all(np.diff(text_id) >= 0), f"{split}: rows not grouped in split order"
        for t in np.unique(text_id):
            rows = text_id == t
            np.testing.assert_array_equal(position[rows], np.arange(len(ids[t])))
            np.testing.assert_array_equal(token_id[rows], ids[t])
        assert store.meta["labels"] == [stage.splits[split]["label"][t] for t in np.unique(text_id)]
    analysis = ActivationStore.open(stage.store, "analysis")
    assert set(analysis.column("text_id")) == set(range(30))
    assert analysis.n_tokens == stage.summary["store/n_tokens_analysis"]


def test_train_store_respects_token_budget(stage: SimpleNamespace) -> None:
    """The train store holds whole texts whose tokens reach the budget, and no more texts than
    needed: without its longest text it would fall below the budget."""
    store = ActivationStore.open(stage.store, "train")
    assert store.meta["token_budget"] == TOKEN_BUDGET
    _, counts = np.unique(store.column("text_id"), return_counts=True)
    assert store.n_tokens == counts.sum() == stage.summary["store/n_tokens_train"]
    assert store.n_tokens >= TOKEN_BUDGET
    assert store.n_tokens - counts.max() < TOKEN_BUDGET
    assert store.n_texts == len(counts) < 60


@pytest.mark.parametrize("layer", [1, 2])
def test_reported_numbers_recomputed_from_store(stage: SimpleNamespace, layer: int) -> None:
    """Cosine and CKA recomputed from the stored analysis activations (all tokens, since
    compare.exclude_special is false) match the CSV's values for that layer to ~1e-3."""
    store = ActivationStore.open(stage.store, "analysis")
    x = np.asarray(store.acts(f"pt_L{layer}"), dtype=np.float64)
    y = np.asarray(store.acts(f"ft_L{layer}"), dtype=np.float64)
    row = stage.rows[layer]
    assert len(x) == row["n_tokens"]
    cosine = np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    assert cosine == pytest.approx(row["cosine"], abs=1e-4)
    assert linear_cka(x, y) == pytest.approx(row["cka"], abs=1e-4)


# --- bad input: fails before any work, nothing written ---------------------------------------


@pytest.fixture
def repo(tiny_bert_dir: Path, splits: Any, tmp_path: Path) -> Path:
    """A temp repo with valid prepared splits and the base tiny BERT as the 'fine-tuned'
    model, so only the fault under test is wrong."""
    root = tmp_path / "repo"
    splits.save_to_disk(str(Paths(root).prepared("kw")))
    shutil.copytree(tiny_bert_dir, Paths(root).finetuned("tiny", "kw", 0))
    return root


def edit_params(path: Path, section: str, key: str, value: Any) -> Path:
    raw = yaml.safe_load(path.read_text())
    raw[section][key] = value
    out = path.with_name("edited.yaml")
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def assert_nothing_written(root: Path, mlflow_uri: str) -> None:
    assert not (root / "results").exists()
    assert not (root / "data" / "activations").exists()
    assert mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("layerwise") is None


def test_base_repo_runs(
    stages: dict[str, ModuleType], tiny_params: Path, mlflow_uri: str, repo: Path
) -> None:
    """The fault-free repo of the tests below does run (so their failures are the fault's)."""
    summary = stages["compare"].main(stage_argv(tiny_params, repo))
    # The 'fine-tuned' model is the pre-trained one: identical representations.
    assert summary["cka/L2"] == pytest.approx(1.0, abs=1e-5)


def test_layer_outside_model_is_named(
    stages: dict[str, ModuleType], tiny_params: Path, mlflow_uri: str, repo: Path
) -> None:
    """models.tiny.layers=[1, 5] on a 2-layer model names layer 5 and L=2."""
    raw = yaml.safe_load(tiny_params.read_text())
    raw["models"]["tiny"]["layers"] = [1, 5]
    params = tiny_params.with_name("edited.yaml")
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"layers=\[1, 5\]: layer\(s\) \[5\] outside 0..2 \(L=2"):
        stages["compare"].main(stage_argv(params, repo))
    assert_nothing_written(repo, mlflow_uri)


@pytest.mark.parametrize("budget", [0, -5])
def test_non_positive_token_budget_is_named(
    stages: dict[str, ModuleType], tiny_params: Path, mlflow_uri: str, repo: Path, budget: int
) -> None:
    """compare.token_budget <= 0 fails naming the key and value."""
    params = edit_params(tiny_params, "compare", "token_budget", budget)
    with pytest.raises(ConfigError, match=rf"compare.token_budget={budget} must be > 0"):
        stages["compare"].main(stage_argv(params, repo))
    assert_nothing_written(repo, mlflow_uri)


def test_pair_of_different_widths_is_refused(
    stages: dict[str, ModuleType],
    tiny_params: Path,
    tiny_bert_dir: Path,
    mlflow_uri: str,
    repo: Path,
) -> None:
    """A 'fine-tuned' model 48 wide against the 32-wide PT model is named as a width mismatch."""
    from transformers import BertConfig, BertModel

    ft_dir = Paths(repo).finetuned("tiny", "kw", 0)
    shutil.rmtree(ft_dir)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    config = BertConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(tokenizer),
    )
    BertModel(config).save_pretrained(ft_dir)
    tokenizer.save_pretrained(ft_dir)
    with pytest.raises(ConfigError, match=r"PT and FT models differ in hidden_size: 32 vs 48"):
        stages["compare"].main(stage_argv(tiny_params, repo))
    assert_nothing_written(repo, mlflow_uri)


def test_pair_of_different_tokenizers_is_refused(
    stages: dict[str, ModuleType], tiny_params: Path, mlflow_uri: str, repo: Path
) -> None:
    """A 'fine-tuned' model saved with another vocabulary is refused: tokens would not align."""
    ft_dir = Paths(repo).finetuned("tiny", "kw", 0)
    tokenizer = load_tokenizer(str(ft_dir))
    tokenizer.add_tokens(["zzyzxqq"])
    tokenizer.save_pretrained(ft_dir)
    with pytest.raises(ConfigError, match=r"tokenizers differ"):
        stages["compare"].main(stage_argv(tiny_params, repo))
    assert_nothing_written(repo, mlflow_uri)


def test_missing_finetuned_model_names_finetune(
    stages: dict[str, ModuleType], tiny_params: Path, mlflow_uri: str, repo: Path
) -> None:
    """Without the fine-tuned model the stage points at finetune@tiny-kw-0."""
    shutil.rmtree(Paths(repo).finetuned("tiny", "kw", 0))
    with pytest.raises(FileNotFoundError, match=r"made by the finetune@tiny-kw-0 stage"):
        stages["compare"].main(stage_argv(tiny_params, repo))
    assert_nothing_written(repo, mlflow_uri)
