"""Tests for the benchmark suite's own logic (bench/ is not a package: imported by path).

The benchmarks themselves take an hour; what is tested here is what turns their measurements
into the reported figures and verdicts, the wrapper that measures a command's peak RSS, and the
refusal to run on a checkout whose pipeline never ran.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import run_all  # noqa: E402


def _result(stage: str, wall: float, rss_gb: float, tmp: Path) -> _common.CmdResult:
    res = _common.CmdResult(["dvc"], 0, wall, int(rss_gb * _common.GB), tmp / f"{stage}.log")
    res.extra["stage"] = stage
    return res


def test_cold_repro_figures_are_medians_with_spreads_and_judged(tmp_path: Path) -> None:
    walls = {"prepare@a": [3.0, 5.0, 4.0], "finetune@m-a-0": [500.0, 300.0, 700.0]}
    runs = [
        [_result(stage, ws[r], 1.0 + r, tmp_path) for stage, ws in walls.items()] for r in range(3)
    ]
    raw: dict = {}
    figures = {f.name: f for f in run_all.cold_repro_figures(runs, judge=True, raw=raw)}
    assert figures["e2e stage prepare@a"].value == 4.0
    assert "(3.0-5.0)" in figures["e2e stage prepare@a"].note
    total = figures["e2e: dvc repro, clean cache, all stages"]
    assert total.value == 503.0  # median of 503, 305, 704
    assert total.met is True  # <= 900 s
    assert "(305-704)" in total.note
    rss = figures["e2e: max stage peak RSS"]
    assert rss.value == pytest.approx(3.0) and rss.met is True
    assert len(raw["e2e"]) == 3

    slow = [[_result("finetune@m-a-0", 1000.0, 5.0, tmp_path)]]
    figures = {f.name: f for f in run_all.cold_repro_figures(slow, judge=True, raw={})}
    assert figures["e2e: dvc repro, clean cache, all stages"].met is False
    assert figures["e2e: max stage peak RSS"].met is False
    unjudged = run_all.cold_repro_figures(slow, judge=False, raw={})
    assert all(f.met is None for f in unjudged)


def test_scaling_ratio_is_of_median_walls(tmp_path: Path) -> None:
    runs = {
        250: {
            "compare": [_result("c", w, 1, tmp_path) for w in (10.0, 12.0, 11.0)],
            "sae": [_result("s", w, 1, tmp_path) for w in (50.0, 50.0, 50.0)],
        },
        1000: {
            "compare": [_result("c", w, 1, tmp_path) for w in (40.0, 30.0, 100.0)],
            "sae": [_result("s", w, 1, tmp_path) for w in (60.0, 60.0, 60.0)],
        },
    }
    figures = run_all.scaling_figures(runs, (250, 1000), judge=True)
    by_name = {f.name.split(":")[0]: f for f in figures}
    assert by_name["scaling sentiment compare"].value == pytest.approx(40.0 / 11.0)
    assert by_name["scaling sentiment sae"].value == pytest.approx(60.0 / 50.0)
    both = by_name["scaling sentiment compare+sae"]
    assert both.value == pytest.approx(100.0 / 61.0)  # medians of per-repeat sums
    assert all(f.met is True for f in figures)


def test_stages_run_reads_dvc_output_in_order_without_repeats() -> None:
    out = (
        "Running stage 'sae@m-a-0':\n> python stages/sae.py\n"
        "Running stage 'features@m-a-0':\nRunning stage 'sae@m-a-0':\nRunning stage 'paper':\n"
    )
    assert _common.stages_run(out) == ["sae@m-a-0", "features@m-a-0", "paper"]


def test_wrapper_reports_exit_code_and_child_peak_rss(tmp_path: Path) -> None:
    log = tmp_path / "alloc.log"
    code = (
        "import sys; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
        "sys.exit(3)"
    )
    res = _common.run_measured([sys.executable, "-c", code], tmp_path, {}, log)
    assert res.rc == 3
    assert res.peak_rss_bytes is not None and res.peak_rss_bytes >= 300 * 1024 * 1024


def test_run_all_refuses_a_checkout_whose_pipeline_never_ran(tmp_path: Path) -> None:
    """No dvc.lock: exit 2, says to run `make reproduce` first, and writes no results file."""
    bench = tmp_path / "bench"
    shutil.copytree(BENCH, bench, ignore=shutil.ignore_patterns("RESULTS.md", "__pycache__"))
    out = subprocess.run(
        [sys.executable, str(bench / "run_all.py")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert "make reproduce" in out.stderr
    assert not (bench / "RESULTS.md").exists()
