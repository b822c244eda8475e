"""The explorer's speed: the free-text views must answer in < 1 s for a ~30-token sentence with
every SAE layer of PT and FT, and a feature card must open in < 0.5 s after its first load.

Measured on the workspace's own run (``models/<m>/<t>/s<seed>/{ft,sae}``, its activation store,
``data/prepared``) when it has them, read only. Otherwise on stand-ins of the same shapes in a
temp root: the packaged pre-trained model as PT, the same weights with a fresh classifier head
as FT, untrained SAEs at the params' width (``sae.expansion``) and scale, and the analysis
store written by the compare stage's own ``write_store`` from the task's prepared analysis
split. Every timed step depends on shapes, not on the weights' values.

Figures (median (min-max) of ``--repeats``, each after one warm-up):

* free text, compute: :func:`layerwise.app.encode.encode_text` on all SAE units, split into
  tokenize / PT forward / FT forward / SAE encodes / cosine;
* free text, page: the *PT vs FT* page (every layer, both models, the cosine curve) run by
  Streamlit's AppTest, i.e. the computation plus the page script;
* feature card: :func:`layerwise.app.cards.feature_card` of a different latent each repeat;
* first loads (one each, no target): models and SAEs, and a unit's pass over its store.

Usage::

    python bench/explorer.py [--quick] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import REPO, Figure, bench_parser, judge, report, timed

SENTENCE = (
    "The acting was painfully wooden and the plot made no sense at all, but the soundtrack "
    "was surprisingly lovely and the ending made me cry."
)
"""About 30 tokens with [CLS] and [SEP] for a BERT WordPiece vocabulary."""
TARGET_TEXT_S = 1.0
TARGET_CARD_S = 0.5


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, quick="stand-ins on 100 analysis texts; targets not judged")
    ap.add_argument("--task", default=None, help="task (default: the first of params.yaml)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-explorer-") as tmp:
        root, key, where = workspace_run(args.task, Path(tmp), n_texts=100 if args.quick else None)
        print(f"explorer bench on {key.label} ({where})", flush=True)
        figures, raw = measure(root, key, args.repeats, judged=not args.quick)
    report("Explorer", figures, args.json, explorer=raw, run=key.param, outputs=where)
    return 0


# --------------------------------------------------------------------------------------------
# The run to measure


def workspace_run(task: str | None, tmp: Path, n_texts: int | None) -> tuple[Path, Any, str]:
    """(root, run key, description): the workspace's run when it is complete, else stand-ins
    built under ``tmp`` (always with ``n_texts``: a quick run never reads the workspace)."""
    import yaml

    from layerwise.app.catalog import RunKey, scan

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    model, task = next(iter(raw["models"])), task or raw["tasks"][0]
    key = RunKey(model, task, int(raw["seeds"][0]))
    catalog = scan(REPO)
    if n_texts is None and key in catalog.keys:
        run = catalog.run(key)
        if not run.missing("prepare", "finetune", "compare", "sae"):
            return REPO, key, "the workspace's outputs"
    build_standins(tmp, raw, key, n_texts)
    return tmp, key, "stand-ins: FT = PT weights + new head, untrained SAEs, real-size store"


def build_standins(root: Path, raw: dict, key: Any, n_texts: int | None) -> None:
    """Prepared splits, FT model, analysis store and SAEs of ``key`` under ``root``."""
    from layerwise.config import params_from_dict
    from layerwise.paths import Paths

    params, paths = params_from_dict(raw), Paths(root)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    splits = _splits(params, key.task)
    if n_texts is not None:
        splits["analysis"] = splits["analysis"].select(range(min(n_texts, len(splits["analysis"]))))
    splits.save_to_disk(str(paths.prepared(key.task)))
    pt, ft = _standin_models(params, key, paths)
    _standin_store(params, key, paths, pt, ft)
    _standin_saes(params, key, paths)


def _splits(params: Any, task: str) -> Any:
    """The workspace's prepared splits, or the prepare stage's own functions run in memory."""
    from layerwise import data
    from layerwise.paths import Paths

    prepared = Paths(REPO).prepared(task)
    if (prepared / "dataset_dict.json").is_file():
        return data.load_splits(prepared)
    dataset = data.build_dataset(params.task(task), params.data.min_chars, task)
    return data.stratified_splits(dataset, params.task(task), params.seed, task)


def _standin_models(params: Any, key: Any, paths: Any) -> tuple[Any, Any]:
    from layerwise.data import load_splits
    from layerwise.models import load_classifier, load_encoder, load_tokenizer

    source = params.model(key.model).source
    names = list(load_splits(paths.prepared(key.task))["train"].features["label"].names)
    ft_dir = paths.finetuned(*_k(key))
    load_classifier(source, names).save_pretrained(ft_dir)
    load_tokenizer(source).save_pretrained(ft_dir)
    return load_encoder(source), load_encoder(str(ft_dir))


def _standin_store(params: Any, key: Any, paths: Any, pt: Any, ft: Any) -> None:
    import numpy as np

    from layerwise.activations import PairedEncoders, tokenize_texts, write_store
    from layerwise.data import load_splits
    from layerwise.models import load_tokenizer

    tokenizer = load_tokenizer(params.model(key.model).source)
    analysis = load_splits(paths.prepared(key.task))["analysis"]
    texts = list(analysis["text"])
    ids = tokenize_texts(tokenizer, texts, params.finetune.max_length)
    meta = {"max_length": params.finetune.max_length, "split": "analysis"}
    write_store(
        PairedEncoders(pt, ft, "cpu"),
        ids,
        np.arange(len(ids)),
        params.model(key.model).layers,
        paths.activations(*_k(key)) / "analysis",
        params.compare.batch_size,
        tokenizer.pad_token_id,
        meta,
        progress="stand-in store",
    )


def _standin_saes(params: Any, key: Any, paths: Any) -> None:
    from layerwise.activations import ActivationStore
    from layerwise.sae.model import SAEConfig, SparseAutoencoder, save_sae
    from layerwise.sae.train import estimate_scale_factor

    store = ActivationStore.open(paths.activations(*_k(key)), "analysis")
    for name in store.names:
        d_in = int(store.meta["dim"])
        cfg = SAEConfig(
            d_in=d_in,
            d_sae=max(1, round(params.sae.expansion * d_in)),
            sparsity=params.sae.sparsity,
            l1_coefficient=params.sae.l1_coefficient,
            k=params.sae.k,
            scale_factor=estimate_scale_factor(store.acts(name)),
        )
        save_sae(SparseAutoencoder(cfg, seed=0), paths.saes(*_k(key)) / name)


def _k(key: Any) -> tuple[str, str, int]:
    return key.model, key.task, key.seed


# --------------------------------------------------------------------------------------------
# Measuring


def measure(root: Path, key: Any, repeats: int, judged: bool) -> tuple[list[Figure], dict]:
    from layerwise.app.cards import feature_card, unit_index
    from layerwise.app.encode import encode_text
    from layerwise.app.loaders import Workspace

    ws = Workspace(root)
    units = list(ws.outputs(key).sae_units)
    load_s, first = timed(lambda: encode_text(ws, key, SENTENCE))
    runs = [timed(lambda: encode_text(ws, key, SENTENCE)) for _ in range(repeats + 1)][1:]
    text_s, texts = [s for s, _ in runs], [t for _, t in runs]
    steps = {k: statistics.median(t.timings[k] for t in texts) for k in first.timings}
    page_s = _page_runs(root, key, repeats)
    unit = units[-1]
    index_s, index = timed(lambda: unit_index(ws, key, unit))
    feature_card(ws, key, unit, 0)  # warm-up: tokenizer and the other unit's decoder
    card_s = [timed(lambda f=f: feature_card(ws, key, unit, f))[0] for f in range(1, repeats + 1)]
    where_text = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in steps.items())
    figures = [
        Figure(
            f"free text, compute: {len(first.tokens)} tokens, {len(units)} SAEs (PT+FT)",
            text_s, "s", f"<= {TARGET_TEXT_S}", judge(text_s, "<=", TARGET_TEXT_S, judged=judged),
            where_text,
        ),
        Figure(
            "free text, page: PT vs FT page (AppTest run)", page_s, "s", f"<= {TARGET_TEXT_S}",
            judge(page_s, "<=", TARGET_TEXT_S, judged=judged),
            "compute above + Streamlit page script (token maps, cosine chart, tables)",
        ),
        Figure(
            f"feature card after first load ({unit}, F={index.n_features})", card_s, "s",
            f"<= {TARGET_CARD_S}", judge(card_s, "<=", TARGET_CARD_S, judged=judged),
            "column of the cached sparse token activations, top texts, histogram, "
            "200-shuffle selectivity null, decoder cosines",
        ),
        Figure("first load: tokenizer, PT, FT, all SAEs + first sentence", [load_s], "s",
               where="from_pretrained x2, load_sae per unit"),
        Figure(f"first load: {unit} over the analysis store", [index_s], "s",
               where=f"SAE encode of {index.token_acts.shape[0]} tokens, kept sparse"),
    ]  # fmt: skip
    raw = {"steps_median_s": steps, "text_s": text_s, "page_s": page_s, "card_s": card_s}
    return figures, raw


def _page_runs(root: Path, key: Any, repeats: int) -> list[float]:
    """Wall time of the PT vs FT page for the sentence, warm (the first run loads)."""
    from streamlit.testing.v1 import AppTest

    os.environ["LAYERWISE_ROOT"] = str(root)
    app = REPO / "src" / "layerwise" / "app" / "main.py"
    at = AppTest.from_file(str(app), default_timeout=600)
    at.query_params.update(page="PT vs FT", model=key.model, task=key.task, seed=str(key.seed))
    at.run()
    at.text_input(key="text").input(SENTENCE).run()
    out = []
    for i in range(repeats):
        at.text_input(key="text").input(SENTENCE + " " * (i + 1))  # a change reruns the page
        start = time.perf_counter()
        at.run()
        out.append(time.perf_counter() - start)
        if at.exception or at.warning:
            raise SystemExit(f"page failed: {at.exception or [w.value for w in at.warning]}")
    return out


if __name__ == "__main__":
    sys.exit(main())
