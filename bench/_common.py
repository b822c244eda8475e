"""Helpers shared by the benchmark scripts in ``bench/`` (not a benchmark itself).

Why one module: every benchmark needs the same few things done the same way, so that figures
from different scripts can sit in one table: where the repo and its venv are, what machine ran
it, a peak-RSS reading that can be reset between phases, min/median/max of repeats, a target
check, a Markdown table, and a throw-away copy of the repository in which the DVC pipeline can
run without touching the workspace's outputs.

Also runnable as a tiny wrapper process (why: ``RUSAGE_CHILDREN`` of a fresh process is exactly
the peak RSS of the one command it ran, descendants included)::

    python bench/_common.py wrap OUT.json -- CMD ARGS...

runs CMD, and writes ``{"rc", "wall_s", "peak_rss_bytes"}`` to OUT.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
"""The workspace (repository root) the benchmarks belong to."""
BENCH = REPO / "bench"
VENV_BIN = Path(sys.executable).parent
"""The venv the benchmarks run in; stage commands of a temp copy use its ``python``/``dvc``."""

OUTPUT_PATHS = (
    "data",
    "models",
    "results",
    "metrics",
    "plots",
    "paper",
    "dvc.lock",
    "mlflow.db",
    "mlruns",
    "mlartifacts",
)
"""DVC outputs and run stores: never copied into, never written in, the workspace."""

GIT = [
    "git",
    "-c",
    "user.name=bench",
    "-c",
    "user.email=bench@localhost",
    "-c",
    "core.hooksPath=/dev/null",
]
"""git for the temp copies only (never the workspace): an identity of its own, no hooks."""

GB = 1024**3
MB = 1024**2


# --------------------------------------------------------------------------------------------
# Machine, memory, statistics
# --------------------------------------------------------------------------------------------


def _first_match(path: str, pattern: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    m = re.search(pattern, text, flags=re.MULTILINE)
    return m.group(1).strip() if m else None


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: every figure is meaningless without it (cores and load above all:
    the targets are stated for the 2-core machine, quiet)."""
    import torch

    mem_kb = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        from layerwise.models import cpu_has_fast_bf16

        bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
        device = f"cpu ({bf16}), {torch.get_num_threads()} torch threads"
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "ram_gb": round(int(mem_kb) / 1024**2, 1) if mem_kb else None,
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5), so the next
    :func:`peak_rss_bytes` covers only what ran since. False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS of this process since start or the last :func:`reset_peak_rss` (``VmHWM``);
    ``ru_maxrss`` (never reset) where ``/proc`` is missing."""
    hwm = _first_match("/proc/self/status", r"^VmHWM:\s+(\d+)\s+kB")
    if hwm is not None:
        return int(hwm) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def self_maxrss_bytes() -> int:
    """``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max): repeats on a shared machine are noisy, one number hides it."""
    return min(values), statistics.median(values), max(values)


def fmt_spread(values: Sequence[float], digits: int = 1) -> str:
    lo, mid, hi = spread(values)
    return f"{mid:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------------------------
# Figures and tables
# --------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One reported number with its target. ``met`` is None when there is no target or the run
    cannot judge it (e.g. ``--quick`` sizes)."""

    name: str
    value: float | str | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def value_str(self) -> str:
        v = self.value
        if v is None:
            return "n/a"
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}"
        return str(v)

    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "-"}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def check(value: float | None, op: str, target: float, judge: bool = True) -> bool | None:
    """``value op target`` (op ``<=`` or ``>=``); None when not judged or no value."""
    if not judge or value is None:
        return None
    return value <= target if op == "<=" else value >= target


def markdown_table(figures: Iterable[Figure]) -> str:
    lines = ["| figure | value | unit | target | verdict | note |", "|---|---|---|---|---|---|"]
    for f in figures:
        note = f.note.replace("|", "/")
        lines.append(
            f"| {f.name} | {f.value_str()} | {f.unit} | {f.target} | {f.verdict()} | {note} |"
        )
    return "\n".join(lines)


def print_table(title: str, figures: Sequence[Figure]) -> None:
    print(f"\n## {title}\n")
    print(markdown_table(figures))
    print(flush=True)


def write_json(path: str | Path | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def figures_payload(figures: Sequence[Figure], **extra: Any) -> dict[str, Any]:
    """What a benchmark's ``main`` returns and ``--json`` writes: figures plus raw numbers."""
    return {"figures": [f.as_dict() for f in figures], **extra}


def figures_from_payload(payload: dict[str, Any]) -> list[Figure]:
    return [Figure(**f) for f in payload.get("figures", [])]


# --------------------------------------------------------------------------------------------
# Workspace inputs (read-only) and temp copies of the repository
# --------------------------------------------------------------------------------------------


def load_repo_params(path: Path | None = None) -> Any:
    from layerwise.config import load_params

    return load_params(path or REPO / "params.yaml")


def workspace_splits(task: str, params: Any) -> tuple[Any, str]:
    """The task's prepared splits: the workspace's ``data/prepared/<task>`` when the pipeline
    made it (loaded in memory: the workspace is never written), else built here exactly as the
    prepare stage builds them. Returns (splits, where they came from)."""
    from layerwise.data import build_dataset, load_splits, stratified_splits

    prepared = REPO / "data" / "prepared" / task
    if (prepared / "dataset_dict.json").is_file():
        return load_splits(prepared), f"workspace {prepared.relative_to(REPO)}"
    dataset = build_dataset(params.task(task), params.data.min_chars, task)
    splits = stratified_splits(dataset, params.task(task), params.seed, task)
    return splits, "built here (workspace has no prepared split)"


def repo_files(repo: Path = REPO) -> list[str]:
    """Tracked and untracked-but-not-ignored files (the working tree as the next commit would
    see it), minus DVC outputs and run stores. Read-only git."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = []
    for name in filter(None, out.split("\0")):
        top = name.split("/", 1)[0]
        if top in OUTPUT_PATHS or not (repo / name).is_file():
            continue
        files.append(name)
    return files


def make_repo_copy(dest: Path, params_overrides: dict[str, Any] | None = None) -> Path:
    """Copy the working tree (no DVC outputs, no lock, no cache) to ``dest`` and make it a git
    repo with one commit: ``dvc exp run`` needs a commit, and a fresh ``.dvc/cache`` is the clean
    cache an end-to-end timing must start from. ``params_overrides`` (dotted keys) are applied to
    the copy's ``params.yaml`` before the commit (``--quick`` sizes)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in repo_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    if params_overrides:
        set_params(dest / "params.yaml", params_overrides)
    for cmd in (
        [*GIT, "init", "-q"],
        [*GIT, "add", "-A"],
        [*GIT, "commit", "-q", "--no-verify", "-m", "benchmark snapshot"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def set_params(path: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys (``task_defs.sentiment.max_analysis``) in a params file (comments are
    lost: only ever used on copies)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def copy_env(root: Path) -> dict[str, str]:
    """Environment for commands in a temp copy: the workspace venv first on PATH (stage
    commands call ``python``), the copy's own ``src`` first on the import path (the editable
    install points at the workspace), MLflow in a SQLite file of the copy, quiet libraries."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root / "src")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.pop("DVC_EXP_NAME", None)
    return env


@dataclass
class CmdResult:
    """A finished command: exit code, wall time, peak RSS of it and its descendants, log."""

    cmd: list[str]
    rc: int
    wall_s: float
    peak_rss_bytes: int | None
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> CmdResult:
    """Run ``cmd`` inside the wrapper process below (peak RSS via its ``RUSAGE_CHILDREN``),
    output to ``log``; wall time measured here (includes the wrapper's few ms)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stats = log.with_suffix(".rss.json")
    wrapper = [str(VENV_BIN / "python"), str(Path(__file__).resolve()), "wrap", str(stats), "--"]
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(
            [*wrapper, *cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - start
    peak = None
    if stats.is_file():
        peak = json.loads(stats.read_text()).get("peak_rss_bytes")
    return CmdResult(cmd, rc, wall, peak, log)


STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def stages_run(output: str) -> list[str]:
    """Stage names DVC ran (``Running stage 'x':`` lines), in order, without repeats."""
    seen: list[str] = []
    for name in STAGE_LINE.findall(output):
        if name not in seen:
            seen.append(name)
    return seen


def du_bytes(paths: Iterable[Path]) -> int:
    """``du -sb`` summed over the existing paths (apparent size, as the brief asks)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-sbc", *existing], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def _wrap(argv: list[str]) -> int:
    """``wrap OUT.json -- CMD...``: run CMD, write rc, wall and ``RUSAGE_CHILDREN.ru_maxrss``."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: _common.py wrap OUT.json -- CMD ARGS...", file=sys.stderr)
        return 2
    out, cmd = Path(argv[0]), argv[2:]
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out.write_text(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_bytes": peak}))
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "wrap":
        sys.exit(_wrap(sys.argv[2:]))
    print(__doc__)
