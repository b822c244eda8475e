"""Timing, peak memory and median (min-max) reporting, shared by the scripts in ``bench/``.

Why one helper: the figures of different scripts sit in one table, so they are measured and
printed alike: every figure as median (min-max) of its N repeats, judged against its target on
the median (on the worst repeat for memory ceilings), with a note on where the time goes.
The scripts import it as a sibling (``python bench/<script>.py`` puts ``bench/`` first on the
import path) and import ``layerwise`` as installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
"""The workspace whose code and outputs the benchmarks read (never write)."""
KB_PER_GB = 1024**2


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Measured:
    """A finished command: exit status, wall time, peak RSS (GB) of it and its descendants,
    log."""

    rc: int
    wall_s: float
    peak_rss_gb: float
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str] | None, log: Path) -> Measured:
    """Run ``cmd`` with its output in ``log``: exit status, wall time and peak RSS.

    The peak is ``ru_maxrss`` of the rusage ``wait4`` returns for the child: the largest of its
    own and its waited-for descendants' (DVC runs each stage command as its child), so one
    reading covers the whole command and nothing else this process did.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(proc.returncode, wall, usage.ru_maxrss / KB_PER_GB, log)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5), so that :func:`peak_rss_gb`
    reads the next phase's own peak. False where the kernel refuses: the reading is then the
    process's peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """Peak RSS (GB) of this process since start or the last :func:`reset_peak_rss`
    (``VmHWM``; ``ru_maxrss``, never reset, where ``/proc`` is missing)."""
    found = re.search(r"^VmHWM:\s+(\d+) kB", _read("/proc/self/status"), re.M)
    kb = int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / KB_PER_GB


def machine_info() -> str:
    """What ran the benchmark, in one line: every figure is meaningless without it (cores and
    load above all: the targets are stated for the 2-core machine, quiet)."""
    import torch

    from layerwise.models import cpu_has_fast_bf16

    cpu_name = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem_kb = re.search(r"^MemTotal:\s+(\d+)", _read("/proc/meminfo"), re.M)
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
        device = f"cpu ({bf16}), {torch.get_num_threads()} torch threads"
    ram = f"{int(mem_kb.group(1)) / KB_PER_GB:.1f} GB RAM, " if mem_kb else ""
    return (
        f"{os.cpu_count()} cores, {ram}"
        f"{cpu_name.group(1) if cpu_name else platform.processor()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}; device {device}; "
        f"1-minute load {os.getloadavg()[0]:.2f}"
    )


def _read(path: str) -> str:
    return Path(path).read_text() if Path(path).is_file() else ""


# --------------------------------------------------------------------------------------------
# Figures


def fmt(value: float) -> str:
    """Three significant digits below 10, one decimal below 100, thousands separators above."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def spread(values: Sequence[float]) -> str:
    """``median (min-max)``; the value alone when there is one; ``n/a`` when there is none.
    Repeats on a shared machine are noisy: one number would hide it."""
    if not values:
        return "n/a"
    mid = fmt(statistics.median(values))
    return mid if len(values) == 1 else f"{mid} ({fmt(min(values))}-{fmt(max(values))})"


def judge(
    values: Sequence[float], op: str, limit: float, *, judged: bool = True, worst: bool = False
) -> bool | None:
    """``median op limit`` (op ``<=`` or ``>=``); with ``worst``, the least favourable value
    instead of the median (a memory ceiling must hold in every repeat). None when not judged
    (e.g. ``--quick`` sizes) or when there is no value."""
    if not judged or not values:
        return None
    if op == "<=":
        return (max(values) if worst else statistics.median(values)) <= limit
    return (min(values) if worst else statistics.median(values)) >= limit


@dataclass
class Figure:
    """One reported figure: its values (one per repeat), target, verdict and where the time
    goes. ``met`` is None when there is no target or the run cannot judge it."""

    name: str
    values: list[float]
    unit: str
    target: str = ""
    met: bool | None = None
    where: str = ""

    def row(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "-"}[self.met]
        cells = [self.name, spread(self.values), str(len(self.values)), self.unit, self.target]
        return "| " + " | ".join([*cells, verdict, self.where.replace("|", "/")]) + " |"


def memory_figure(name: str, values: list[float], limit: float, where: str = "") -> Figure:
    """Peak RSS (GB) against a ceiling, judged on the worst repeat and at any size (a smoke
    run that breaks a memory ceiling has found something)."""
    met = judge(values, "<=", limit, worst=True)
    return Figure(name, values, "GB", f"<= {limit:g}", met, where)


def markdown_table(figures: Sequence[Figure]) -> str:
    head = "| figure | median (min-max) | N | unit | target | verdict | where the time goes |"
    return "\n".join([head, "|---|---|---|---|---|---|---|", *(f.row() for f in figures)])


def report(title: str, figures: Sequence[Figure], json_path: str | None, **raw: Any) -> None:
    """Print the figures as a table under the machine that measured them; write both and
    ``raw`` to ``json_path`` (what ``run_all.py`` collects)."""
    machine = machine_info()
    print(f"\n## {title}\n\n{machine}\n\n{markdown_table(figures)}\n", flush=True)
    if json_path:
        payload = {"figures": [asdict(f) for f in figures], "machine": machine, **raw}
        Path(json_path).write_text(json.dumps(payload, indent=1, default=str) + "\n")


def run_records(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """The raw JSON rows of trainer comparisons (objects with ``label()``, ``walls`` and
    ``metrics``), one shape for every benchmark so ``RESULTS.md`` readers parse them alike."""
    return [{"label": r.label(), "walls_s": r.walls, **r.metrics} for r in runs]


def load_figures(json_path: Path) -> list[Figure]:
    return [Figure(**f) for f in json.loads(json_path.read_text())["figures"]]


def bench_parser(doc: str, quick: str, least: int = 1) -> argparse.ArgumentParser:
    """The options every benchmark script takes: ``--quick`` (smoke sizes, time targets not
    judged), ``--repeats`` (at least ``least``) and ``--json``."""

    def repeats(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r}: a whole number >= {least}")
        return int(text)

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--repeats", type=repeats, default=3, help="timed repeats (default 3)")
    ap.add_argument("--json", help="also write the figures and raw numbers here")
    return ap
