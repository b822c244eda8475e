"""Extraction throughput of the compare stage's analysis pass against a bare forward loop.

The stage's analysis pass (``layerwise.compare.run_compare`` -> ``activations.write_store``)
runs the PT and the FT encoder on every length-sorted batch, feeds all hidden states to the
similarity accumulator (cosine, CKA moments, pooled sums), and writes the SAE layers' token
activations to a memory-mapped store. Its cost above the two forward passes is our overhead.
The bare loop runs ``model(**batch, output_hidden_states=True)`` for both encoders on the same
padded batches (same length-sorted order, same batch size, padding included in both) and nothing
else. The ratio (stage tokens/s) / (bare tokens/s) is the figure: target >= 0.9.

Why interleaved repeats: the machine is shared and a later run can be faster or slower for
reasons of its own; alternating bare and stage runs, >= 3 times each, and reporting
min/median/max shows the noise instead of hiding it. Peak memory is the process's VmHWM, reset
before each run, so each phase's peak is its own (models and texts stay loaded across phases and
are included). The store goes to the system temp dir (check that it is on the same kind of
disk as the repo: a RAM-backed /tmp would flatter the store write).

PT model: params.yaml's first model. FT model: the workspace's fine-tuned model of the task
(``models/<m>/<task>/s<seed>/ft``, read-only) when present, else the PT model stands in for FT
(stated in the output: the cost is the same, the similarities are trivially 1).

Usage::

    python bench/compare.py                  # sentiment, the whole analysis split, 3 repeats
    python bench/compare.py --quick          # 96 analysis texts, 3 repeats
    python bench/compare.py --task topic --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/ is not a package: its folder is on sys.path
    GB,
    REPO,
    Figure,
    check,
    figures_payload,
    fmt_spread,
    load_repo_params,
    machine_info,
    peak_rss_bytes,
    print_table,
    reset_peak_rss,
    spread,
    workspace_splits,
    write_json,
)

RATIO_TARGET = 0.9
QUICK_TEXTS = 96


class _AnalysisDone(Exception):
    """Raised right after the analysis store is written: the rest of ``run_compare`` (train
    store, CIs, probes) is not what this benchmark times."""


def stage_pass(
    encoders: Any,
    tokenizer: Any,
    analysis: Any,
    layers: list[int],
    params: Any,
    max_length: int,
    seed: int,
    store_dir: Path,
) -> float:
    """Seconds of the stage's analysis pass, run by ``run_compare`` itself.

    Why not a copy of its loop: the stage's code changes, and a copy would silently benchmark
    an old version. ``run_compare``'s ``write_store`` is wrapped for the duration: the first call
    (the analysis split, with the similarity accumulator as ``on_batch``) is timed, then
    :class:`_AnalysisDone` stops the stage before the train store, CIs and probes.
    """
    import inspect

    import layerwise.compare as compare_module

    original = compare_module.write_store
    signature = inspect.signature(original)
    seconds: list[float] = []

    def timed_write_store(*args: Any, **kwargs: Any) -> int:
        directory = Path(signature.bind(*args, **kwargs).arguments["directory"])
        if directory.name != "analysis":
            raise RuntimeError(f"run_compare wrote {directory} first; expected the analysis store")
        start = time.perf_counter()
        n = original(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        raise _AnalysisDone(n)

    compare_module.write_store = timed_write_store
    try:
        compare_module.run_compare(
            encoders,
            tokenizer,
            {"analysis": analysis, "train": analysis},
            layers,
            params,
            max_length,
            seed,
            store_dir,
            progress=False,
        )
    except _AnalysisDone:
        pass
    finally:
        compare_module.write_store = original
    if len(seconds) != 1:
        raise RuntimeError("run_compare never wrote its analysis store")
    return seconds[0]


def bare_pass(encoders: Any, ids: list[list[int]], batch_size: int, pad_id: int) -> None:
    """Both encoders' forward passes with hidden states on the same batches, nothing else."""
    import torch

    from layerwise.activations import length_sorted_batches, pad_batch

    with torch.inference_mode():
        for idx in length_sorted_batches([len(t) for t in ids], batch_size):
            batch = pad_batch([ids[i] for i in idx], pad_id, encoders.device)
            encoders.pt(**batch, output_hidden_states=True)
            encoders.ft(**batch, output_hidden_states=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop (>= 3)")
    ap.add_argument("--texts", type=int, help="analysis texts to use (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TEXTS} analysis texts")
    ap.add_argument("--json", help="write the result dict here")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error("--repeats must be >= 3 (min/median/max of fewer is not a spread)")

    import torch

    from layerwise.activations import PairedEncoders, tokenize_texts
    from layerwise.models import load_encoder, load_tokenizer, pick_device
    from layerwise.runtime import quiet_libraries

    quiet_libraries()
    params = load_repo_params()
    model_key = next(iter(params.models))
    model_def = params.model(model_key)
    seed = params.seeds[0]
    splits, origin = workspace_splits(args.task, params)
    analysis = splits["analysis"]
    n_texts = args.texts or (QUICK_TEXTS if args.quick else len(analysis))
    analysis = analysis.select(range(min(n_texts, len(analysis))))
    texts = list(analysis["text"])

    ft_dir = REPO / "models" / model_key / args.task / f"s{seed}" / "ft"
    have_ft = (ft_dir / "config.json").is_file() and any(ft_dir.glob("*.safetensors"))
    ft_source = str(ft_dir) if have_ft else model_def.source
    ft_note = (
        f"FT = {ft_dir.relative_to(REPO)}"
        if have_ft
        else "no fine-tuned model in the workspace: PT model used as both PT and FT"
    )
    device = pick_device()
    tokenizer = load_tokenizer(model_def.source)
    encoders = PairedEncoders(
        load_encoder(model_def.source).to(device), load_encoder(ft_source).to(device), device
    )
    max_length = params.finetune.max_length
    ids = tokenize_texts(tokenizer, texts, max_length)
    n_tokens = sum(len(t) for t in ids)
    bs = params.compare.batch_size
    info = machine_info()
    print(
        f"compare benchmark: {args.task}, {len(ids)} texts, {n_tokens} tokens, batch {bs}, "
        f"layers {model_def.layers}; {ft_note}; {info['cores']} cores, "
        f"load {info['load_avg_1m']}",
        flush=True,
    )

    bare_s: list[float] = []
    stage_s: list[float] = []
    bare_peak: list[int] = []
    stage_peak: list[int] = []
    peak_resettable = True
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-cmp-") as tmp:
        # Warm-up, not timed: thread pools, allocator, lazy init, first-call kernel choices.
        bare_pass(encoders, ids[: 2 * bs], bs, tokenizer.pad_token_id)
        stage_pass(
            encoders,
            tokenizer,
            analysis.select(range(min(2 * bs, len(analysis)))),
            model_def.layers,
            params.compare,
            max_length,
            seed,
            Path(tmp) / "warm-up",
        )
        for r in range(args.repeats):
            peak_resettable &= reset_peak_rss()
            start = time.perf_counter()
            bare_pass(encoders, ids, bs, tokenizer.pad_token_id)
            bare_s.append(time.perf_counter() - start)
            bare_peak.append(peak_rss_bytes())

            store = Path(tmp) / f"run{r}"
            peak_resettable &= reset_peak_rss()
            stage_s.append(
                stage_pass(
                    encoders,
                    tokenizer,
                    analysis,
                    model_def.layers,
                    params.compare,
                    max_length,
                    seed,
                    store,
                )
            )
            stage_peak.append(peak_rss_bytes())
            shutil.rmtree(store, ignore_errors=True)
            print(
                f"  repeat {r + 1}: bare {n_tokens / bare_s[-1]:,.0f} tok/s, "
                f"stage {n_tokens / stage_s[-1]:,.0f} tok/s",
                flush=True,
            )

    bare_tps = [n_tokens / s for s in bare_s]
    stage_tps = [n_tokens / s for s in stage_s]
    pair_ratios = [b / s for b, s in zip(bare_s, stage_s, strict=True)]
    ratio = spread(stage_tps)[1] / spread(bare_tps)[1]
    peak_note = "" if peak_resettable else "VmHWM not resettable here: process peak"
    figures = [
        Figure(
            "compare: bare PT+FT forward",
            spread(bare_tps)[1],
            "tokens/s",
            note=f"median (min-max) of {args.repeats}: {fmt_spread(bare_tps, 0)}",
        ),
        Figure(
            "compare: stage analysis pass",
            spread(stage_tps)[1],
            "tokens/s",
            note=f"median (min-max) of {args.repeats}: {fmt_spread(stage_tps, 0)}",
        ),
        Figure(
            "compare: stage / bare throughput",
            ratio,
            "x",
            f">= {RATIO_TARGET}",
            check(ratio, ">=", RATIO_TARGET, judge=not args.quick),
            ("not judged: --quick sizes; " if args.quick else "")
            + f"ratio of medians; per pair, median (min-max): {fmt_spread(pair_ratios, 3)}",
        ),
        Figure("compare: peak RSS, bare loop", max(bare_peak) / GB, "GB", note=peak_note),
        Figure(
            "compare: peak RSS, stage pass",
            max(stage_peak) / GB,
            "GB",
            "<= 3",
            check(max(stage_peak), "<=", 3 * GB),
            peak_note,
        ),
    ]
    print_table(f"compare ({args.task}, {len(ids)} texts, {n_tokens} tokens; {ft_note})", figures)
    payload = figures_payload(
        figures,
        machine=info,
        quick=args.quick,
        task=args.task,
        splits=origin,
        ft=ft_note,
        n_texts=len(ids),
        n_tokens=n_tokens,
        batch_size=bs,
        torch_threads=torch.get_num_threads(),
        bare_s=bare_s,
        stage_s=stage_s,
        bare_peak_rss_bytes=bare_peak,
        stage_peak_rss_bytes=stage_peak,
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
