"""End to end: the DVC pipeline in throw-away copies of the repository.

1. Cold ``dvc repro``, ``--repeats`` times, each in a fresh copy: the working tree's files
   without DVC outputs, lock or run stores, an empty ``.dvc/cache``, and a fresh git repo with
   one commit (``dvc exp run`` needs one). Stage by stage in topological order: the next stage
   is the first ``Running stage`` line of ``dvc repro --dry``, asked again after every stage
   (on a fresh copy the dry run stops at the first stage whose inputs do not exist yet); each
   runs as ``dvc repro --single-item <stage>``, whose peak RSS is that stage's. Figures: each
   stage's wall time and peak RSS, the total, the fine-tuning time (the finetune stages), and
   where the time goes: per kind of stage, and each stage's MLflow run (its own work; the rest
   of its wall is start-up: imports, DVC hashing).
2. Then in the last copy: disk use of outputs and cache, a no-op ``dvc repro`` (3 runs,
   nothing may rerun), and ``dvc exp run -S sae.lr_decay_ratio=<v>`` for ``--repeats`` values
   never run before (DVC's run cache would restore a repeated value instead of running it),
   each checked to rerun exactly the sae, features and paper stages.

Stage commands call ``python`` from PATH, i.e. this venv's, whose ``layerwise`` is the
installed (editable) workspace package that the copy mirrors; MLflow writes to the copy's own
``mlflow.db``. Why copies: the workspace's outputs must never change under a benchmark, and a
cold timing needs an empty cache.

Usage::

    python bench/e2e.py                     # 3 cold repros at default sizes (~35 min)
    python bench/e2e.py --quick --repeats 1 # sentiment only, tiny sizes: every stage in seconds
    python bench/e2e.py --quick --keep      # keep the copy and logs
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from timing import (
    REPO,
    Figure,
    Measured,
    bench_parser,
    judge,
    memory_figure,
    report,
    run_measured,
    spread,
)

OUTPUT_DIRS = ("data", "models", "results", "metrics", "plots", "paper")
RUN_STORES = ("dvc.lock", "mlflow.db", "mlruns", "mlartifacts")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
GIT += ["-c", "core.hooksPath=/dev/null"]
"""git for the copies only (never the workspace): an identity of its own, no hooks."""
DVC = str(Path(sys.executable).parent / "dvc")
QUICK_PARAMS: dict[str, Any] = {
    "tasks": ["sentiment"],
    "size_models": {},  # the size model's 404 MB weights are not a --quick matter
    "task_defs.sentiment.max_train": 64,
    "task_defs.sentiment.max_val": 32,
    "task_defs.sentiment.max_analysis": 48,
    "finetune.epochs": 1.0,
    "compare.token_budget": 3000,
    "compare.n_boot": 100,
    "sae.train_tokens": 4096,
    "sae.batch_size": 256,
    "sae.warmup_steps": 5,
}
"""--quick sizes for the copy's params: every stage runs, each in seconds."""
EXP_VALUES = (0.25, 0.3, 0.35, 0.4, 0.45)
EXP_RERUN = ("sae@", "sae_baseline@", "features@", "sae_size@", "features_size@", "paper")
"""Every stage downstream of the ``sae`` params, in both protocols (models, size_models): the
SAEs, what reads them (the seed baseline of their overlap, the features) and the paper."""
NOOP_RUNS = 3
COLD_TARGET_S = 15 * 60.0
FINETUNE_TARGET_S = 8 * 60.0
NOOP_TARGET_S = 5.0
STAGE_RSS_TARGET_GB = 4.0
DISK_TARGET_GB = 3.0
_PIPE: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
"""DVC's own queries: output and errors in one text."""


class BenchError(RuntimeError):
    """A benchmark could not run (as opposed to a target being missed)."""


# --------------------------------------------------------------------------------------------
# Copies of the repository


def make_copy(dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy the working tree (tracked and untracked-but-not-ignored files, as the next commit
    would see them; no outputs, no run stores) to ``dest`` and commit it in a fresh git repo.
    ``overrides`` (dotted keys) are applied to the copy's params first."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if name.split("/", 1)[0] in OUTPUT_DIRS + RUN_STORES or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    if overrides:
        set_params(dest / "params.yaml", overrides)
    subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True, capture_output=True)
    commit(dest, "benchmark snapshot")
    return dest


def commit(copy: Path, message: str) -> None:
    """Commit everything in the copy (never the workspace)."""
    subprocess.run([*GIT, "add", "-A"], cwd=copy, check=True, capture_output=True)
    cmd = [*GIT, "commit", "-q", "--no-verify", "--allow-empty", "-m", message]
    subprocess.run(cmd, cwd=copy, check=True, capture_output=True)


def set_params(path: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys (``task_defs.sentiment.max_analysis``) in a params file (comments are
    lost: only ever used on copies)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def copy_env() -> dict[str, str]:
    """Environment of commands in a copy: this venv first on PATH (stage commands call
    ``python``), MLflow in the copy's default store, quiet libraries."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return env


def measured(cmd: list[str], copy: Path, log: Path) -> Measured:
    """``cmd`` run in ``copy`` and measured; a failure stops the benchmark."""
    res = run_measured(cmd, copy, copy_env(), log)
    if res.rc != 0:
        raise BenchError(f"{' '.join(cmd[-3:])} failed (exit {res.rc}):\n{res.tail()}")
    return res


def stages_run(output: str) -> list[str]:
    """Stage names DVC ran (``Running stage 'x':`` lines), in order, without repeats."""
    return list(dict.fromkeys(re.findall(r"Running stage '([^']+)'", output)))


def stage_names(copy: Path) -> list[str]:
    out = subprocess.run(
        [DVC, "stage", "list", "--name-only"], cwd=copy, env=copy_env(), text=True, **_PIPE
    )
    if out.returncode != 0:
        raise BenchError(f"dvc stage list failed:\n{out.stdout}")
    return out.stdout.split()


# --------------------------------------------------------------------------------------------
# Cold repro


def cold_repro(copy: Path, logs: Path) -> dict[str, Measured]:
    """Every stage from an empty cache, one ``dvc repro --single-item`` each, in order."""
    names = stage_names(copy)
    done: dict[str, Measured] = {}
    while True:
        dry = subprocess.run([DVC, "repro", "--dry"], cwd=copy, env=copy_env(), text=True, **_PIPE)
        pending = stages_run(dry.stdout)
        if not pending:
            if dry.returncode != 0:
                raise BenchError(f"dvc repro --dry failed:\n{dry.stdout}")
            break
        stage = pending[0]
        if stage in done:
            raise BenchError(f"{stage} is pending again after it ran: see {logs}")
        print(f"  [{len(done) + 1}/{len(names)}] {stage}", end=" ", flush=True)
        cmd = [DVC, "repro", "--single-item", stage]
        done[stage] = res = measured(cmd, copy, logs / f"{stage}.log")
        print(f"{res.wall_s:.1f} s, peak RSS {res.peak_rss_gb:.2f} GB", flush=True)
    if missing := set(names) - set(done):
        raise BenchError(f"stages never ran: {sorted(missing)}")
    return done


def mlflow_seconds(copy: Path) -> dict[str, dict[str, float]]:
    """Per stage (MLflow run name == DVC stage name): its run's own duration, and for the
    finetune stages the training seconds the stage logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    out: dict[str, dict[str, float]] = {}
    for run in client.search_runs(ids, max_results=10_000):
        info, metrics = run.info, run.data.metrics
        stage = out[info.run_name.removesuffix("@all")] = {}  # paper's run is paper@all
        stage["run_s"] = (info.end_time - info.start_time) / 1000
        if "speed/train_s" in metrics:
            stage["train_s"] = metrics["speed/train_s"]
    return out


def cold_figures(
    runs: list[dict[str, Measured]], tracked: list[dict[str, dict[str, float]]], judged: bool
) -> list[Figure]:
    """Per stage and in total, over the cold runs; fine-tuning time; the largest stage peak."""

    def per_run(stage: str, key: str) -> list[float]:
        return [t[stage][key] for t in tracked if key in t.get(stage, {})]

    figures = []
    for stage in runs[0]:
        rss = [r[stage].peak_rss_gb for r in runs]
        where = f"peak RSS {spread(rss)} GB; MLflow run {spread(per_run(stage, 'run_s'))} s"
        if train := per_run(stage, "train_s"):
            where += f", of which training {spread(train)} s"
        walls = [r[stage].wall_s for r in runs]
        figures.append(Figure(f"e2e stage {stage}", walls, "s", where=where + "; rest: start-up"))
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(runs))
    for i, run in enumerate(runs):
        for stage, res in run.items():
            kinds[stage.split("@")[0]][i] += res.wall_s
    totals = [sum(r.wall_s for r in run.values()) for run in runs]
    in_runs = [sum(v["run_s"] for v in t.values()) for t in tracked]
    by_kind = ", ".join(f"{k} {spread(v)}" for k, v in kinds.items())
    peaks = [max(r.peak_rss_gb for r in run.values()) for run in runs]
    heaviest = max(runs[-1], key=lambda s: runs[-1][s].peak_rss_gb)
    ft_train = [sum(v.get("train_s", 0.0) for v in t.values()) for t in tracked]
    return [
        *figures,
        Figure(
            "e2e: dvc repro, clean cache, all stages",
            totals,
            "s",
            f"<= {COLD_TARGET_S:.0f}",
            judge(totals, "<=", COLD_TARGET_S, judged=judged),
            f"{len(runs[0])} stages: {by_kind} s; in MLflow runs {spread(in_runs)} s, "
            "the rest start-up (imports, DVC hashing)",
        ),
        Figure(
            "finetune: all tasks (the finetune stages)",
            kinds["finetune"],
            "s",
            f"<= {FINETUNE_TARGET_S:.0f}",
            judge(kinds["finetune"], "<=", FINETUNE_TARGET_S, judged=judged),
            f"training {spread(ft_train)} s; the rest evaluation, probe baseline, loading",
        ),
        memory_figure(
            "e2e: max stage peak RSS", peaks, STAGE_RSS_TARGET_GB, f"{heaviest} in the last run"
        ),
    ]


# --------------------------------------------------------------------------------------------
# After the cold runs: disk, no-op, experiments


def disk_figure(copy: Path, judged: bool) -> Figure:
    paths = [str(copy / d) for d in (*OUTPUT_DIRS, ".dvc/cache") if (copy / d).exists()]
    du = subprocess.run(["du", "-sbc", *paths], capture_output=True, text=True, check=True)
    gb = [int(du.stdout.splitlines()[-1].split()[0]) / 1024**3]
    return Figure(
        "disk: pipeline outputs + DVC cache",
        gb,
        "GB",
        f"<= {DISK_TARGET_GB:g}",
        judge(gb, "<=", DISK_TARGET_GB, judged=judged),
        "du -sb of " + ", ".join(OUTPUT_DIRS) + ", .dvc/cache after a cold repro",
    )


def noop_figure(copy: Path, logs: Path, judged: bool) -> Figure:
    runs = [measured([DVC, "repro"], copy, logs / f"noop-{i}.log") for i in range(NOOP_RUNS)]
    reran = sorted({s for r in runs for s in stages_run(r.output())})
    walls = [r.wall_s for r in runs]
    met = judge(walls, "<=", NOOP_TARGET_S, judged=judged)
    return Figure(
        "no-op dvc repro",
        walls,
        "s",
        f"<= {NOOP_TARGET_S:g}, nothing reruns",
        False if reran else met,
        f"RERAN {reran}" if reran else "DVC hashing and status only",
    )


def exp_figure(copy: Path, logs: Path, repeats: int) -> Figure:
    """``dvc exp run -S sae.lr_decay_ratio=<v>`` for new values ``v``: must rerun exactly the
    stages downstream of the SAE params."""
    expected = sorted(n for n in stage_names(copy) if n.startswith(EXP_RERUN))
    walls, ok, ran = [], True, []
    for value in EXP_VALUES[:repeats]:
        setting = f"sae.lr_decay_ratio={value}"
        res = measured([DVC, "exp", "run", "-S", setting], copy, logs / f"exp-{value}.log")
        ran = stages_run(res.output())
        print(f"  dvc exp run -S {setting}: {res.wall_s:.0f} s, reran {ran}", flush=True)
        walls.append(res.wall_s)
        ok &= sorted(ran) == expected
    return Figure(
        "dvc exp run -S sae.lr_decay_ratio=...",
        walls,
        "s",
        "only sae*@*, features*@*, paper rerun",
        ok,
        f"values {list(EXP_VALUES[:repeats])}; reran each time: {', '.join(ran)}",
    )


# --------------------------------------------------------------------------------------------
# Main


def run(work: Path, args: Any, figures: list[Figure]) -> None:
    """The cold runs, then disk, no-op and experiments in the last copy (each step needs the
    state the previous one left). Figures are appended as they come: a later failure keeps
    the earlier ones."""
    runs, tracked = [], []
    for r in range(args.repeats):
        if r:
            shutil.rmtree(work / f"repo{r - 1}", ignore_errors=True)  # disk: one copy at a time
        copy = make_copy(work / f"repo{r}", QUICK_PARAMS if args.quick else None)
        print(f"cold run {r + 1}/{args.repeats} in {copy}", flush=True)
        runs.append(cold_repro(copy, work / "logs" / f"cold-{r}"))
        tracked.append(mlflow_seconds(copy))
    figures += cold_figures(runs, tracked, judged=not args.quick)
    commit(copy, "reproduced")
    figures.append(disk_figure(copy, judged=not args.quick))
    figures.append(noop_figure(copy, work / "logs", judged=not args.quick))
    figures.append(exp_figure(copy, work / "logs", args.repeats))


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, "sentiment only, tiny sizes (time targets not judged)")
    ap.add_argument("--keep", action="store_true", help="keep the copy and logs")
    args = ap.parse_args(argv)
    print(f"end to end{' (--quick)' if args.quick else ''}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="layerwise-bench-e2e-"))
    figures: list[Figure] = []
    failed = None
    try:
        run(work, args, figures)
    except BenchError as exc:
        failed = str(exc)
        figures.append(Figure("e2e: benchmark", [], "", where=failed.splitlines()[0]))
        print(failed, file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report("end to end", figures, args.json, failed=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
