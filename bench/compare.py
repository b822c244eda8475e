"""Extraction overhead: the compare stage's analysis pass against a bare PT+FT forward loop.

The stage's analysis pass (``layerwise.pipeline.compare.run_compare`` -> ``write_plan`` ->
``write_store``) runs the PT and the FT encoder on every length-sorted batch, feeds all hidden
states to the similarity accumulator (cosine, CKA moments, pooled sums) and writes the SAE
layers' token activations to a memory-mapped store. Its cost above the two forward passes is
our overhead.
The bare loop runs ``model(**batch, output_hidden_states=True)`` for both encoders on the same
padded batches (same length-sorted order and batch size) and nothing else. The figure is the
throughput ratio stage / bare (target >= 0.9), one per interleaved pair of runs: the machine is
shared, and a slow drift hits both runs of a pair alike. Where the time goes: the similarity
update (the accumulator's callback, timed inside the stage) and the rest of the overhead (store
writes, batching). Peak memory is the process's VmHWM, reset before each run, so each run's
peak is its own (models and texts stay loaded and are included). The store goes to the system
temp dir: a RAM-backed /tmp would flatter the store write.

PT model: params.yaml's first model. FT: the workspace's fine-tuned model of the task when
present, else the PT model stands in (said in the output: same cost, trivial similarities).

Usage::

    python bench/compare.py                  # sentiment, the whole analysis split, 3 repeats
    python bench/compare.py --quick          # 96 analysis texts
    python bench/compare.py --task topic --repeats 5 --json out.json
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timing import (
    REPO,
    Figure,
    bench_parser,
    judge,
    memory_figure,
    peak_rss_gb,
    report,
    reset_peak_rss,
    spread,
    timed,
)

RATIO_TARGET = 0.9
PEAK_TARGET_GB = 3.0
QUICK_TEXTS = 96


class _AnalysisDone(Exception):
    """Raised right after the analysis store is written: the rest of ``run_compare`` (train
    store, CIs, probes) is not what this benchmark times."""


@dataclass
class Inputs:
    """What both loops share: models, tokenized texts, the stage's settings."""

    encoders: Any
    tokenizer: Any
    analysis: Any
    ids: list[list[int]]
    layers: list[int]
    params: Any
    max_length: int
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.ids)


def workspace_splits(task: str, params: Any) -> tuple[Any, str]:
    """The task's prepared splits: the workspace's when the pipeline made them (read, never
    written), else built here exactly as the prepare stage builds them."""
    from layerwise.data import build_dataset, load_splits, stratified_splits

    prepared = REPO / "data" / "prepared" / task
    if (prepared / "dataset_dict.json").is_file():
        return load_splits(prepared), f"splits from {prepared.relative_to(REPO)}"
    dataset = build_dataset(params.task(task), params.data.min_chars, task)
    splits = stratified_splits(dataset, params.task(task), params.seed, task)
    return splits, "splits built here (the workspace has none)"


def load_inputs(task: str, n_texts: int | None) -> Inputs:
    from layerwise.activations import PairedEncoders, tokenize_texts
    from layerwise.config import load_params
    from layerwise.models import load_encoder, load_tokenizer, pick_device

    params = load_params(REPO / "params.yaml")
    model_key = next(iter(params.models))
    model_def, seed = params.model(model_key), params.seeds[0]
    splits, origin = workspace_splits(task, params)
    analysis = splits["analysis"]
    analysis = analysis.select(range(min(n_texts or len(analysis), len(analysis))))
    ft_dir = REPO / "models" / model_key / task / f"s{seed}" / "ft"
    have_ft = (ft_dir / "config.json").is_file() and any(ft_dir.glob("*.safetensors"))
    ft_note = f"FT {ft_dir.relative_to(REPO)}" if have_ft else "no FT model: PT stands in for FT"
    device = pick_device()
    tokenizer = load_tokenizer(model_def.source)
    pt = load_encoder(model_def.source).to(device)
    ft = load_encoder(str(ft_dir) if have_ft else model_def.source).to(device)
    max_length = params.finetune.max_length
    ids = tokenize_texts(tokenizer, list(analysis["text"]), max_length)
    return Inputs(
        PairedEncoders(pt, ft, device),
        tokenizer,
        analysis,
        ids,
        model_def.layers,
        params.compare,
        max_length,
        seed,
        [origin, ft_note],
    )


def stage_pass(inputs: Inputs, store_dir: Path, n: int | None = None) -> tuple[float, float]:
    """(seconds of the stage's analysis pass, seconds of it in the similarity update), run by
    ``run_compare`` itself on the first ``n`` texts.

    Why not a copy of its loop: the stage's code changes, and a copy would silently benchmark
    an old version. ``write_store`` is wrapped for the duration: its first call (the analysis
    split, with the similarity accumulator as ``on_batch``) is timed, with the callback timed
    inside it, then :class:`_AnalysisDone` stops the stage before the train store, CIs, probes.
    """
    import layerwise.activations as activations_module
    import layerwise.pipeline.compare as compare_module

    original = activations_module.write_store
    signature = inspect.signature(original)
    seconds: list[float] = []
    update = [0.0]

    def timed_callback(callback: Any) -> Any:
        def on_batch(*args: Any) -> None:
            start = time.perf_counter()
            callback(*args)
            update[0] += time.perf_counter() - start

        return on_batch

    def timed_write_store(*args: Any, **kwargs: Any) -> int:
        bound = signature.bind(*args, **kwargs)
        if Path(bound.arguments["directory"]).name != "analysis":
            raise RuntimeError("run_compare wrote another store first; expected the analysis one")
        bound.arguments["on_batch"] = timed_callback(bound.arguments["on_batch"])
        wall, written = timed(lambda: original(*bound.args, **bound.kwargs))
        seconds.append(wall)
        raise _AnalysisDone(written)

    analysis = inputs.analysis.select(range(min(n, len(inputs.analysis)))) if n else inputs.analysis
    activations_module.write_store = timed_write_store
    try:
        compare_module.run_compare(
            inputs.encoders,
            inputs.tokenizer,
            {"analysis": analysis, "train": analysis},
            inputs.layers,
            inputs.params,
            inputs.max_length,
            inputs.seed,
            store_dir,
            progress=False,
            pt_link="../pt",  # as the stage: the analysis store keeps the FT half only
        )
    except _AnalysisDone:
        pass
    finally:
        activations_module.write_store = original
    if len(seconds) != 1:
        raise RuntimeError("run_compare never wrote its analysis store")
    return seconds[0], update[0]


def bare_pass(inputs: Inputs, n: int | None = None) -> None:
    """Both encoders' forward passes with hidden states on the same batches, nothing else."""
    import torch

    from layerwise.activations import length_sorted_batches, pad_batch

    ids, enc = inputs.ids[:n] if n else inputs.ids, inputs.encoders
    pad_id = inputs.tokenizer.pad_token_id
    with torch.inference_mode():
        for idx in length_sorted_batches([len(t) for t in ids], inputs.params.batch_size):
            batch = pad_batch([ids[i] for i in idx], pad_id, enc.device)
            enc.pt(**batch, output_hidden_states=True)
            enc.ft(**batch, output_hidden_states=True)


def measure(inputs: Inputs, repeats: int, tmp: Path) -> dict[str, list[float]]:
    """``repeats`` interleaved pairs (bare, stage) after an untimed warm-up of both (thread
    pools, allocator growth, lazy init and first-call kernel choices)."""
    warm = 2 * inputs.params.batch_size
    bare_pass(inputs, warm)
    stage_pass(inputs, tmp / "warm-up", warm)
    out: dict[str, list[float]] = {
        k: [] for k in ("bare", "stage", "update", "bare_rss", "stage_rss")
    }
    for r in range(repeats):
        reset_peak_rss()
        out["bare"].append(timed(lambda: bare_pass(inputs))[0])
        out["bare_rss"].append(peak_rss_gb())
        reset_peak_rss()
        stage_s, update_s = stage_pass(inputs, tmp / f"run{r}")
        out["stage_rss"].append(peak_rss_gb())
        out["stage"].append(stage_s)
        out["update"].append(update_s)
        shutil.rmtree(tmp / f"run{r}", ignore_errors=True)
        tps = [inputs.n_tokens / out[k][-1] for k in ("bare", "stage")]
        print(f"  pair {r + 1}: bare {tps[0]:,.0f} tok/s, stage {tps[1]:,.0f} tok/s", flush=True)
    return out


def figures(inputs: Inputs, t: dict[str, list[float]], judged: bool) -> list[Figure]:
    n_tok = inputs.n_tokens
    ratios = [b / s for b, s in zip(t["bare"], t["stage"], strict=True)]
    rest = [s - u for s, u in zip(t["stage"], t["update"], strict=True)]
    where = (
        f"stage {spread(t['stage'])} s = similarity update {spread(t['update'])} s + forward "
        f"passes and store writes {spread(rest)} s; bare forward {spread(t['bare'])} s"
    )
    return [
        Figure("compare: bare PT+FT forward", [n_tok / s for s in t["bare"]], "tokens/s"),
        Figure("compare: stage analysis pass", [n_tok / s for s in t["stage"]], "tokens/s"),
        Figure(
            "compare: stage / bare throughput, per pair",
            ratios,
            "x",
            f">= {RATIO_TARGET}",
            judge(ratios, ">=", RATIO_TARGET, judged=judged),
            where,
        ),
        Figure("compare: peak RSS, bare loop", t["bare_rss"], "GB"),
        memory_figure(
            "compare: peak RSS, stage pass",
            t["stage_rss"],
            PEAK_TARGET_GB,
            "models and texts included",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = bench_parser(__doc__, f"{QUICK_TEXTS} analysis texts", least=3)
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--texts", type=int, help="analysis texts to use (default: all)")
    args = ap.parse_args(argv)

    from layerwise.runtime import quiet_libraries

    quiet_libraries()
    inputs = load_inputs(args.task, args.texts or (QUICK_TEXTS if args.quick else None))
    bs = inputs.params.batch_size
    title = f"compare ({args.task}, {len(inputs.ids)} texts, {inputs.n_tokens} tokens, batch {bs})"
    print(f"{title}; {'; '.join(inputs.notes)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-compare-") as tmp:
        t = measure(inputs, args.repeats, Path(tmp))
    figs = figures(inputs, t, judged=not args.quick)
    if not reset_peak_rss():
        figs[-1].where += "; VmHWM not resettable here: the process's peak"
    report(title, figs, args.json, notes=inputs.notes, seconds=t)


if __name__ == "__main__":
    main()
