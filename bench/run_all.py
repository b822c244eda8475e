"""The whole benchmark suite (``make bench``): one table of figures with targets, written to
``bench/RESULTS.md``.

What it measures, and where:

1. The component benchmarks, each in its own process (own peak RSS): ``bench/finetune.py``,
   ``bench/compare.py``, ``bench/sae.py``. They read the workspace's prepared data, fine-tuned
   model and activation store read-only and write only to temp dirs.
2. In temporary copies of the repository (working tree files, no DVC outputs, no lock, an
   empty ``.dvc/cache``; a fresh git repo, since ``dvc exp run`` needs a commit; stage commands
   use this venv's ``python`` through PATH, the copy's ``src`` through PYTHONPATH, and an MLflow
   SQLite file in the copy): the end-to-end ``dvc repro`` from a clean cache, ``--repeats``
   times, each in a fresh copy, stage by stage in topological order (the next stage is the first
   ``Running stage '...'`` line of ``dvc repro --dry``; each runs as ``dvc repro --single-item
   <stage>`` inside a wrapper process whose ``RUSAGE_CHILDREN.ru_maxrss`` is that stage's peak
   RSS); then in the last copy: disk use of outputs + DVC cache (``du -sb``), a no-op ``dvc
   repro`` (3 runs), and ``dvc exp run -S sae.lr_decay_ratio=<v>`` for ``--repeats`` new values
   of ``v``, checking each time that only ``sae@*``, ``features@*`` and ``paper`` reran.
3. Scaling: the compare and sae stages of ``sentiment`` at 1x and 4x analysis texts
   (``task_defs.sentiment.max_analysis`` 250 vs 1000), run as stage scripts on their own
   ``--root``/``--params`` beside the copy, ``--repeats`` times alternating sizes, reusing the
   copy's fine-tuned model (the split's train part changes with ``max_analysis``, but
   fine-tuning is not what is timed here).

Every repeated figure is reported as median (min-max); verdicts are on the median.

Why a copy: the workspace's outputs (data/, models/, results/, metrics/, plots/, paper/,
dvc.lock, mlflow.db) must never change under a benchmark, and a clean-cache timing needs an
empty cache. Why the workspace must have run first: the component benchmarks measure the real
fine-tuned model and activation store; without them they fall back to stand-ins. So when the
workspace pipeline has never run this script stops (exit 2) and asks for ``make reproduce``
rather than running it itself: reproducing is the long job, to be started knowingly.

Usage::

    python bench/run_all.py                   # everything, default sizes, 3 repeats (~70 min)
    python bench/run_all.py --repeats 1       # one of each (~30 min)
    python bench/run_all.py --quick           # smoke run: sentiment only, tiny sizes, no file
    python bench/run_all.py --skip-e2e        # components + scaling only
    python bench/run_all.py --quick --results /tmp/r.md --keep

Exit status: 0 when every benchmark ran (targets may still be missed: see the table), 1 when
one failed to run, 2 when the workspace pipeline has never run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/ is not a package: its folder is on sys.path
    BENCH,
    GB,
    GIT,
    REPO,
    VENV_BIN,
    CmdResult,
    Figure,
    check,
    copy_env,
    du_bytes,
    figures_from_payload,
    fmt_spread,
    machine_info,
    make_repo_copy,
    markdown_table,
    print_table,
    run_measured,
    set_params,
    spread,
    stages_run,
    write_json,
)

NOOP_TARGET_S = 5.0
COLD_TARGET_S = 15 * 60.0
STAGE_RSS_TARGET_BYTES = 4 * GB
SCALING_TARGET = 4.5
DISK_TARGET_BYTES = 3 * GB
EXP_VALUES = (0.25, 0.3, 0.35, 0.4, 0.45)
"""``sae.lr_decay_ratio`` of the successive ``dvc exp run -S`` timings: each a new value, since
DVC restores an experiment it has already run from its run cache instead of running it."""
EXP_RERUN_PREFIXES = ("sae@", "features@", "paper")
SCALE_TASK = "sentiment"
SCALE_SIZES = (250, 1000)
QUICK_SCALE_SIZES = (48, 192)
QUICK_PARAMS: dict[str, Any] = {
    "tasks": ["sentiment"],
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
"""--quick sizes for the copy's pipeline: every stage runs, each in seconds."""
OUTPUT_DIRS = ("data", "models", "results", "metrics", "plots", "paper")
RESULTS_BEGIN = "<!-- bench/run_all.py: begin -->"
RESULTS_END = "<!-- bench/run_all.py: end -->"
DVC = str(VENV_BIN / "dvc")
PYTHON = str(VENV_BIN / "python")


class BenchError(RuntimeError):
    """A benchmark could not run (as opposed to a target being missed)."""


# --------------------------------------------------------------------------------------------
# Workspace check
# --------------------------------------------------------------------------------------------


def workspace_state() -> tuple[str, str]:
    """('never' | 'partial' | 'complete', explanation), read from dvc.lock and the outputs it
    lists, without running DVC in the workspace."""
    import yaml

    lock = REPO / "dvc.lock"
    if not lock.is_file():
        return "never", "no dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    outs = [o["path"] for s in stages.values() for o in s.get("outs", []) if "path" in o]
    present = [p for p in outs if (REPO / p).exists()]
    if not stages or not present:
        return "never", "dvc.lock lists no stage with an output present"
    if not (REPO / "metrics" / "paper.json").is_file():
        return "partial", f"{len(stages)} stages locked, no paper output yet"
    return "complete", f"{len(stages)} stages locked"


# --------------------------------------------------------------------------------------------
# Component benchmarks
# --------------------------------------------------------------------------------------------


def run_component(
    script: str, quick: bool, workdir: Path, extra: list[str] | None = None
) -> tuple[list[Figure], dict[str, Any]]:
    """``bench/<script>.py [--quick] --json ... [extra]`` in its own process; its table streams
    through, its figures come back."""
    import json

    out = workdir / f"{script}.json"
    cmd = [PYTHON, str(BENCH / f"{script}.py"), "--json", str(out), *(extra or [])]
    if quick:
        cmd.append("--quick")
    print(f"\n# bench/{script}.py\n", flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO).returncode
    wall = time.perf_counter() - start
    if rc != 0 or not out.is_file():
        raise BenchError(f"bench/{script}.py failed (exit {rc})")
    payload = json.loads(out.read_text())
    payload["wall_s"] = wall
    return figures_from_payload(payload), payload


# --------------------------------------------------------------------------------------------
# End to end, no-op, experiment, disk
# --------------------------------------------------------------------------------------------


def dvc_stage_names(copy: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [DVC, "stage", "list", "--name-only"], cwd=copy, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise BenchError(f"dvc stage list failed:\n{out.stdout}{out.stderr}")
    return out.stdout.split()


def next_stage(copy: Path, env: dict[str, str]) -> str | None:
    """The first stage ``dvc repro --dry`` would run (None: nothing left). On a fresh copy the
    dry run stops at the first stage whose inputs do not exist yet, so it is asked again after
    every stage: its first line is always a stage whose upstream is done (topological order)."""
    dry = subprocess.run([DVC, "repro", "--dry"], cwd=copy, env=env, capture_output=True, text=True)
    pending = stages_run(dry.stdout + dry.stderr)
    if pending:
        return pending[0]
    if dry.returncode != 0:
        raise BenchError(f"dvc repro --dry failed:\n{dry.stdout}{dry.stderr}")
    return None


def e2e_repro(copy: Path, env: dict[str, str], logs: Path) -> tuple[list[CmdResult], float]:
    """Every stage from a clean cache, one ``dvc repro --single-item`` each; and the loop's
    wall time (stages plus the dry runs that order them)."""
    names = dvc_stage_names(copy, env)
    results: list[CmdResult] = []
    done: set[str] = set()
    start = time.perf_counter()
    for i in range(len(names) + 1):
        stage = next_stage(copy, env)
        if stage is None:
            break
        if stage in done:
            raise BenchError(f"{stage} is pending again after it ran: see {logs}")
        print(f"  [{i + 1}/{len(names)}] dvc repro --single-item {stage}", flush=True)
        res = run_measured([DVC, "repro", "--single-item", stage], copy, env, logs / f"{stage}.log")
        res.extra["stage"] = stage
        if res.rc != 0:
            raise BenchError(f"stage {stage} failed (exit {res.rc}):\n{res.tail()}")
        print(
            f"      {res.wall_s:.1f} s, peak RSS {(res.peak_rss_bytes or 0) / GB:.2f} GB",
            flush=True,
        )
        results.append(res)
        done.add(stage)
    missing = set(names) - done
    if missing:
        raise BenchError(f"stages never ran: {sorted(missing)}")
    return results, time.perf_counter() - start


def noop_repro(copy: Path, env: dict[str, str], logs: Path, runs: int = 3) -> list[CmdResult]:
    results = []
    for i in range(runs):
        res = run_measured([DVC, "repro"], copy, env, logs / f"noop-{i}.log")
        if res.rc != 0:
            raise BenchError(f"no-op dvc repro failed (exit {res.rc}):\n{res.tail()}")
        res.extra["ran"] = stages_run(res.output())
        results.append(res)
    return results


def commit_copy(copy: Path, message: str) -> None:
    """Commit the copy's state (never the workspace's): the experiment's baseline."""
    subprocess.run([*GIT, "add", "-A"], cwd=copy, check=True, capture_output=True)
    subprocess.run(
        [*GIT, "commit", "-q", "--no-verify", "-m", message], cwd=copy, capture_output=True
    )


def disk_use(copy: Path) -> int:
    return du_bytes([copy / d for d in OUTPUT_DIRS] + [copy / ".dvc" / "cache"])


def exp_run(
    copy: Path, env: dict[str, str], logs: Path, value: float
) -> tuple[CmdResult, list[str], bool]:
    """``dvc exp run -S sae.lr_decay_ratio=<value>``: (result, stages that ran, only the
    expected ones and all of them)."""
    setting = f"sae.lr_decay_ratio={value}"
    res = run_measured([DVC, "exp", "run", "-S", setting], copy, env, logs / f"exp-{value}.log")
    if res.rc != 0:
        raise BenchError(f"dvc exp run -S {setting} failed (exit {res.rc}):\n{res.tail()}")
    ran = stages_run(res.output())
    expected = [n for n in dvc_stage_names(copy, env) if n.startswith(EXP_RERUN_PREFIXES)]
    return res, ran, sorted(ran) == sorted(expected)


def cold_repro_figures(
    runs: list[list[CmdResult]], judge: bool, raw: dict[str, Any]
) -> list[Figure]:
    """Per stage and in total: min/median/max wall over the cold runs, peak RSS (max)."""
    n = len(runs)
    figures = []
    for stage in [r.extra["stage"] for r in runs[0]]:
        per_run = [next(r for r in run if r.extra["stage"] == stage) for run in runs]
        walls = [r.wall_s for r in per_run]
        peak = max(r.peak_rss_bytes or 0 for r in per_run)
        figures.append(
            Figure(
                f"e2e stage {stage}",
                spread(walls)[1],
                "s",
                note=f"median (min-max) of {n}: {fmt_spread(walls)}; peak RSS {peak / GB:.2f} GB",
            )
        )
    totals = [sum(r.wall_s for r in run) for run in runs]
    peak = max(r.peak_rss_bytes or 0 for run in runs for r in run)
    heaviest = max((r for run in runs for r in run), key=lambda r: r.peak_rss_bytes or 0)
    figures += [
        Figure(
            "e2e: dvc repro, clean cache, all stages",
            spread(totals)[1],
            "s",
            f"<= {COLD_TARGET_S:.0f}",
            check(spread(totals)[1], "<=", COLD_TARGET_S, judge),
            f"median (min-max) of {n} cold runs: {fmt_spread(totals, 0)} s; "
            f"{len(runs[0])} stages, one `dvc repro --single-item` each",
        ),
        Figure(
            "e2e: max stage peak RSS",
            peak / GB,
            "GB",
            "<= 4",
            check(peak, "<=", STAGE_RSS_TARGET_BYTES, judge),
            f"{heaviest.extra['stage']}; max over {n} runs",
        ),
    ]
    raw["e2e"] = [
        [{"stage": r.extra["stage"], "wall_s": r.wall_s, "peak_rss": r.peak_rss_bytes} for r in run]
        for run in runs
    ]
    return figures


def e2e_figures(
    work: Path,
    overrides: dict[str, Any] | None,
    logs: Path,
    judge: bool,
    repeats: int,
    raw: dict[str, Any],
    figures: list[Figure],
) -> tuple[Path, dict[str, str]]:
    """``repeats`` cold ``dvc repro`` runs, each in a fresh copy with an empty cache; then, in
    the last copy, disk use, no-op repro (3 runs) and ``repeats`` SAE experiments, in that
    order (each step needs the state the previous one left). Figures are appended to
    ``figures`` as they come (a later failure keeps the earlier ones), raw numbers to ``raw``.
    Returns the last copy and its environment (the scaling runs reuse its fine-tuned model)."""
    runs: list[list[CmdResult]] = []
    for r in range(repeats):
        if r:
            shutil.rmtree(work / f"repo{r - 1}", ignore_errors=True)  # disk: one copy at a time
        copy = make_repo_copy(work / f"repo{r}", overrides)
        env = copy_env(copy)
        print(f"  cold run {r + 1}/{repeats} in {copy}", flush=True)
        stage_runs, loop_s = e2e_repro(copy, env, logs / f"e2e-{r}")
        total = sum(x.wall_s for x in stage_runs)
        print(f"  cold run {r + 1}: {total:.0f} s of stages ({loop_s:.0f} s with dry runs)")
        runs.append(stage_runs)
    figures.extend(cold_repro_figures(runs, judge, raw))
    commit_copy(copy, "reproduced")
    disk = disk_use(copy)
    figures.append(
        Figure(
            "disk: pipeline outputs + DVC cache",
            disk / GB,
            "GB",
            "<= 3",
            check(disk, "<=", DISK_TARGET_BYTES, judge),
            "du -sb of " + ", ".join(OUTPUT_DIRS) + ", .dvc/cache after a cold repro",
        )
    )
    noop = noop_repro(copy, env, logs)
    walls = [x.wall_s for x in noop]
    reran = sorted({st for x in noop for st in x.extra["ran"]})
    figures.append(
        Figure(
            "no-op dvc repro",
            spread(walls)[1],
            "s",
            f"<= {NOOP_TARGET_S:g}",
            check(spread(walls)[1], "<=", NOOP_TARGET_S, judge) and not reran,
            f"median (min-max) of 3: {fmt_spread(walls, 2)}"
            + (f"; RERAN {reran}" if reran else ""),
        )
    )
    raw["noop_s"] = walls
    exp_walls, all_ok, ran_sets = [], True, []
    for value in EXP_VALUES[:repeats]:
        res, ran, ok = exp_run(copy, env, logs, value)
        print(f"  dvc exp run -S sae.lr_decay_ratio={value}: {res.wall_s:.0f} s, reran {ran}")
        exp_walls.append(res.wall_s)
        all_ok &= ok
        ran_sets.append(ran)
    figures.append(
        Figure(
            "dvc exp run -S sae.lr_decay_ratio=...",
            spread(exp_walls)[1],
            "s",
            "only sae@*, features@*, paper rerun",
            all_ok,
            f"median (min-max) of {len(exp_walls)} values {list(EXP_VALUES[:repeats])}: "
            f"{fmt_spread(exp_walls, 0)} s; reran each time: " + ", ".join(ran_sets[-1]),
        )
    )
    raw["exp_run"] = {"wall_s": exp_walls, "ran": ran_sets, "only_expected": all_ok}
    raw["disk_after_exp_bytes"] = disk_use(copy)
    return copy, env


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def stage_script(
    copy: Path, env: dict[str, str], log: Path, name: str, args: list[str]
) -> CmdResult:
    """``python stages/<name>.py ARGS`` in the copy, measured like a DVC stage."""
    res = run_measured([PYTHON, f"stages/{name}.py", *args], copy, env, log)
    if res.rc != 0:
        raise BenchError(f"stages/{name}.py {' '.join(args)} failed:\n{res.tail()}")
    return res


def scaling(
    copy: Path,
    env: dict[str, str],
    work: Path,
    sizes: tuple[int, int],
    logs: Path,
    repeats: int,
) -> dict[int, dict[str, list[CmdResult]]]:
    """compare and sae of ``SCALE_TASK`` at two ``max_analysis`` sizes, each on its own root,
    ``repeats`` times, alternating sizes (slow drifts of a shared machine hit both alike)."""
    from layerwise.config import load_params

    params = load_params(copy / "params.yaml")
    model_key, seed = next(iter(params.models)), params.seeds[0]
    item = ["--model", model_key, "--task", SCALE_TASK, "--seed", str(seed)]
    ft_rel = Path("models") / model_key / SCALE_TASK / f"s{seed}" / "ft"
    common: dict[int, list[str]] = {}
    for n in sizes:
        root = work / f"analysis-{n}"
        root.mkdir(parents=True, exist_ok=True)
        params_file = root / "params.yaml"
        shutil.copyfile(copy / "params.yaml", params_file)
        set_params(params_file, {"tasks": [SCALE_TASK], f"task_defs.{SCALE_TASK}.max_analysis": n})
        common[n] = ["--params", str(params_file), "--root", str(root)]
        print(f"  max_analysis={n}: prepare", flush=True)
        stage_script(
            copy, env, logs / f"{n}-prepare.log", "prepare", ["--task", SCALE_TASK, *common[n]]
        )
        for source in (copy / ft_rel, REPO / ft_rel):
            if (source / "config.json").is_file():
                shutil.copytree(source, root / ft_rel, dirs_exist_ok=True)
                break
        else:
            print(f"  max_analysis={n}: finetune (no fine-tuned model to reuse)", flush=True)
            stage_script(copy, env, logs / f"{n}-finetune.log", "finetune", [*item, *common[n]])
    out: dict[int, dict[str, list[CmdResult]]] = {n: {"compare": [], "sae": []} for n in sizes}
    for r in range(repeats):
        for n in sizes:
            for name in ("compare", "sae"):
                res = stage_script(
                    copy, env, logs / f"{n}-{name}-{r}.log", name, [*item, *common[n]]
                )
                out[n][name].append(res)
                print(f"  run {r + 1}, max_analysis={n}: {name} {res.wall_s:.1f} s", flush=True)
    return out


def scaling_figures(
    runs: dict[int, dict[str, list[CmdResult]]], sizes: tuple[int, int], judge: bool
) -> list[Figure]:
    """Time ratio large/small (of median walls) for compare, sae and both together."""
    small, large = sizes
    figures = []

    def walls(n: int, names: tuple[str, ...]) -> list[float]:
        """Per repeat, the summed wall of ``names`` at size ``n``."""
        per_stage = [[x.wall_s for x in runs[n][m]] for m in names]
        return [sum(rs) for rs in zip(*per_stage, strict=True)]

    for names in (("compare",), ("sae",), ("compare", "sae")):
        t_small, t_large = walls(small, names), walls(large, names)
        peak = max(x.peak_rss_bytes or 0 for m in names for x in runs[large][m])
        ratio = spread(t_large)[1] / spread(t_small)[1]
        figures.append(
            Figure(
                f"scaling {SCALE_TASK} {'+'.join(names)}: time {large}/{small} texts",
                ratio,
                "x",
                f"<= {SCALING_TARGET:g}",
                check(ratio, "<=", SCALING_TARGET, judge),
                f"ratio of medians of {len(t_small)}; {small} texts {fmt_spread(t_small)} s, "
                f"{large} texts {fmt_spread(t_large)} s; peak RSS {peak / GB:.2f} GB",
            )
        )
    return figures


# --------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------


def results_markdown(
    info: dict[str, Any], figures: list[Figure], args: Any, notes: list[str], repeats: int
) -> str:
    """This script's section of RESULTS.md: machine, date, load, mode, then every figure."""
    mode = "--quick (smoke sizes: only memory targets judged)" if args.quick else "default sizes"
    skips = [f"--skip-{k}" for k in ("components", "e2e", "scaling") if getattr(args, f"skip_{k}")]
    skipped = f"; {' '.join(skips)}" if skips else ""
    machine = (
        f"- machine: {info['cores']} cores, {info['ram_gb']} GB RAM, {info['cpu']}\n"
        f"- software: Python {info['python']}, torch {info['torch']}; device {info['device']}\n"
        f"- date: {info['date_utc']}; 1-minute load average at start {info['load_avg_1m']} "
        "(a busy machine makes every figure slower and noisier)\n"
        f"- mode: {mode}{skipped}; {repeats} repeat(s) of each repeated figure\n"
    )
    extra = "".join(f"- {n}\n" for n in notes)
    return (
        f"{RESULTS_BEGIN}\n## Benchmark suite (`make bench` = `python bench/run_all.py`)\n\n"
        f"{machine}{extra}\n{markdown_table(figures)}\n{RESULTS_END}\n"
    )


def write_results(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (between the markers), keep the rest (e.g. the
    SAE sweep table that params.yaml points to)."""
    if path.is_file():
        text = path.read_text()
        if RESULTS_BEGIN in text and RESULTS_END in text:
            head, rest = text.split(RESULTS_BEGIN, 1)
            tail = rest.split(RESULTS_END, 1)[1].lstrip("\n")
            text = head + section + ("\n" + tail if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = (
            "# Benchmarks\n\nFigures printed by the scripts in `bench/`; each has its target and "
            "whether this run met it.\n\n" + section
        )
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, sentiment only")
    ap.add_argument("--skip-e2e", action="store_true", help="no dvc repro / exp run in a copy")
    ap.add_argument("--skip-components", action="store_true", help="no finetune/compare/sae")
    ap.add_argument("--skip-scaling", action="store_true", help="no 1x/4x scaling run")
    ap.add_argument(
        "--repeats",
        type=int,
        help="cold repros, SAE experiments, scaling and SAE runs to take min/median/max over "
        "(default 3; 1 with --quick)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp copy and logs")
    ap.add_argument(
        "--results",
        help="Markdown file to write (default: bench/RESULTS.md; with --quick: none)",
    )
    ap.add_argument("--json", help="also write every figure and raw number here")
    args = ap.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        ap.error(f"--repeats must be >= 1, got {repeats}")

    state, why = workspace_state()
    if state == "never":
        print(
            f"The workspace pipeline has never run ({why}).\n"
            "Run `make reproduce` first: the component benchmarks measure its fine-tuned models "
            "and activation stores. This script does not start it for you: it is the long job.",
            file=sys.stderr,
        )
        return 2
    info = machine_info()
    print(
        f"benchmark suite{' (--quick)' if args.quick else ''}: {info['cores']} cores, "
        f"{info['cpu']}, torch {info['torch']}, {info['device']}; load {info['load_avg_1m']}; "
        f"workspace pipeline {state} ({why})",
        flush=True,
    )
    notes = [f"workspace pipeline: {state} ({why})"]
    if state == "partial":
        notes.append("components fall back to stand-ins where workspace outputs are missing")
    figures: list[Figure] = []
    raw: dict[str, Any] = {"machine": info, "quick": args.quick}
    failures: list[str] = []
    judge = not args.quick
    work = Path(tempfile.mkdtemp(prefix="layerwise-bench-"))
    logs = work / "logs"
    try:
        if not args.skip_components:
            extra = {
                "compare": ["--repeats", str(max(3, repeats))],
                "sae": ["--repeats", str(repeats)],
            }
            for script in ("finetune", "compare", "sae"):
                try:
                    figs, payload = run_component(script, args.quick, work, extra.get(script))
                    figures += figs
                    raw[script] = payload
                except BenchError as exc:
                    failures.append(str(exc))
                    figures.append(Figure(f"{script}: benchmark", None, note=str(exc)))

        copy: Path | None = None
        env: dict[str, str] = {}
        overrides = QUICK_PARAMS if args.quick else None
        if not args.skip_e2e:
            print("\n# end to end, in temporary copies\n", flush=True)
            try:
                copy, env = e2e_figures(work, overrides, logs, judge, repeats, raw, figures)
            except BenchError as exc:
                failures.append(str(exc))
                figures.append(Figure("e2e: benchmark", None, note=str(exc).splitlines()[0]))
                print(exc, file=sys.stderr)

        if not args.skip_scaling:
            print(f"\n# scaling: compare + sae of {SCALE_TASK} at 1x and 4x analysis texts\n")
            try:
                if copy is None:
                    copy = make_repo_copy(work / "repo", overrides)
                    env = copy_env(copy)
                sizes = QUICK_SCALE_SIZES if args.quick else SCALE_SIZES
                runs = scaling(copy, env, work / "scale", sizes, logs / "scale", repeats)
                figures += scaling_figures(runs, sizes, judge)
                raw["scaling"] = {
                    n: {
                        k: [{"wall_s": v.wall_s, "peak_rss": v.peak_rss_bytes} for v in vs]
                        for k, vs in r.items()
                    }
                    for n, r in runs.items()
                }
            except BenchError as exc:
                failures.append(str(exc))
                figures.append(Figure("scaling: benchmark", None, note=str(exc).splitlines()[0]))
                print(exc, file=sys.stderr)
    except Exception:
        traceback.print_exc()
        failures.append("unexpected error (traceback above)")
    finally:
        if args.keep:
            print(f"\nkept temp dir (copy, logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table("all benchmarks", figures)
    results = args.results or (None if args.quick else str(BENCH / "RESULTS.md"))
    if results:
        write_results(Path(results), results_markdown(info, figures, args, notes, repeats))
        print(f"wrote {results}")
    write_json(args.json, {**raw, "figures": [f.as_dict() for f in figures]})
    if failures:
        print("\nFAILED to run:\n- " + "\n- ".join(f.splitlines()[0] for f in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
