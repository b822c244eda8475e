"""Fine-tuning throughput: examples/s for training and evaluation, and the finetune stage's wall
time per task on the defaults (params.yaml ``finetune``), with peak memory.

Why per-task child processes: each task runs ``layerwise.finetune.finetune`` (what the stage
calls: PT-head eval, training, FT eval, probe baseline, save) in a fresh Python process, so its
peak RSS is its own (``ru_maxrss`` never goes down) and its wall time includes the imports and
model loading the stage pays too. The prepared splits come from the workspace's
``data/prepared`` (read-only) when present, else are built in the child exactly as the prepare
stage builds them; the model is written to a temp dir that is deleted afterwards.

Targets (2-core CPU machine, quiet): all tasks fine-tuned in <= 8 min wall in total; peak
memory <= 3 GB.

Usage::

    python bench/finetune.py                 # every task in params.yaml, default sizes
    python bench/finetune.py --quick         # sentiment only, 64 train / 32 val texts
    python bench/finetune.py --tasks topic --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/ is not a package: its folder is on sys.path
    GB,
    Figure,
    check,
    figures_payload,
    load_repo_params,
    machine_info,
    print_table,
    self_maxrss_bytes,
    workspace_splits,
    write_json,
)

TOTAL_TARGET_S = 8 * 60
PEAK_TARGET_BYTES = 3 * GB
QUICK_SIZES = {"train": 64, "val": 32}


def run_task(task: str, quick: bool, seed: int | None) -> dict[str, Any]:
    """Fine-tune one task in this process (the child side); returns its figures."""
    from layerwise.finetune import finetune
    from layerwise.models import pick_device
    from layerwise.runtime import quiet_libraries

    quiet_libraries()
    params = load_repo_params()
    model_key = next(iter(params.models))
    seed = params.seeds[0] if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-ft-") as tmp:
        tmp_path = Path(tmp)
        splits, origin = workspace_splits(task, params)
        if quick:
            for split, n in QUICK_SIZES.items():
                splits[split] = splits[split].select(range(min(n, len(splits[split]))))
        device = pick_device()
        start = time.perf_counter()
        result = finetune(
            params.model(model_key).source,
            splits,
            params.finetune,
            seed,
            tmp_path / "ft",
            ordinal=params.task(task).labels.kind == "bins",
            device=device,
            work_dir=tmp_path / "work",
        )
        wall = time.perf_counter() - start
    m = result.metrics
    return {
        "task": task,
        "splits": origin,
        "device": str(device),
        "n_train": m["data/n_train"],
        "n_val": m["data/n_val"],
        "epochs": params.finetune.epochs,
        # finetune() times its own training and evaluation calls (None if it ever stops).
        "train_s": m.get("speed/train_s"),
        "train_examples_per_s": m.get("speed/train_examples_per_s"),
        "eval_examples_per_s": m.get("speed/eval_examples_per_s"),
        "finetune_call_s": round(wall, 2),
        "ft_accuracy": m.get("ft/accuracy"),
        "peak_rss_bytes": self_maxrss_bytes(),
    }


def run_child(task: str, quick: bool, seed: int | None) -> dict[str, Any]:
    """Run :func:`run_task` in a fresh interpreter; adds the process wall time."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--child-task", task, "--json", str(out)]
    if quick:
        cmd.append("--quick")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    log = out.with_suffix(".log")
    print(f"  fine-tuning {task} ...", flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:  # Trainer's progress bars: kept out of the table, shown on failure
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    try:
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"fine-tuning {task} failed (exit {proc.returncode}):\n{tail}")
        row = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
    row["process_wall_s"] = round(wall, 2)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", help="tasks (default: params.yaml tasks)")
    ap.add_argument("--quick", action="store_true", help="sentiment only, tiny splits")
    ap.add_argument("--seed", type=int, help="training seed (default: first of params seeds)")
    ap.add_argument("--json", help="write the result dict here")
    ap.add_argument("--child-task", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_task:
        row = run_task(args.child_task, args.quick, args.seed)
        write_json(args.json, row)
        return row

    params = load_repo_params()
    tasks = args.tasks or (["sentiment"] if args.quick else list(params.tasks))
    info = machine_info()
    print(
        f"finetune benchmark: tasks {tasks}{' (quick sizes)' if args.quick else ''}; "
        f"{info['cores']} cores, load {info['load_avg_1m']}",
        flush=True,
    )
    rows = [run_child(task, args.quick, args.seed) for task in tasks]
    judge = not args.quick and set(tasks) == set(params.tasks)

    figures: list[Figure] = []
    for r in rows:
        note = f"{r['n_train']} train x {r['epochs']:g} ep, {r['n_val']} val; {r['splits']}"
        figures += [
            Figure(f"finetune {r['task']}: train", r["train_examples_per_s"], "examples/s"),
            Figure(f"finetune {r['task']}: eval", r["eval_examples_per_s"], "examples/s"),
            Figure(
                f"finetune {r['task']}: stage wall",
                r["process_wall_s"],
                "s",
                note=f"finetune() {r['finetune_call_s']:.0f} s of it; {note}",
            ),
            Figure(f"finetune {r['task']}: peak RSS", r["peak_rss_bytes"] / GB, "GB", "<= 3", None),
        ]
        figures[-1].met = check(r["peak_rss_bytes"], "<=", PEAK_TARGET_BYTES)
    total = sum(r["process_wall_s"] for r in rows)
    peak = max(r["peak_rss_bytes"] for r in rows)
    figures += [
        Figure(
            "finetune: all tasks wall",
            total,
            "s",
            "<= 480",
            check(total, "<=", TOTAL_TARGET_S, judge),
            "" if judge else "not judged: not all default tasks at default sizes",
        ),
        Figure("finetune: peak RSS (max)", peak / GB, "GB", "<= 3", check(peak, "<=", 3 * GB)),
    ]
    print_table("finetune", figures)
    payload = figures_payload(figures, rows=rows, machine=info, quick=args.quick)
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
