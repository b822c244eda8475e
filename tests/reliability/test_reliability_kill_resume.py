"""Kill and resume: a stage SIGKILLed at any moment leaves each output path absent or complete
(never half-written, never a temp name at a final path), and a rerun to completion gives the
same outputs as an uninterrupted run.

Stages run as subprocesses (``python stages/<stage>.py ... --root <tmp>``, cwd = the repo). The
library has no kill hooks, so kill points are chosen from outside, each per stage:

- ``time``: after a delay drawn from a seeded RNG within the stage's measured uninterrupted
  duration (40-80 % of it);
- ``staging``: as soon as a new ``.tmp-*`` staging path appears next to an output (the stage is
  writing its outputs, or, for finetune, training into its staged model folder);
- ``commit``: as soon as any final output path appears or changes (the renames are under way).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerwise.io import TMP_PREFIX

from .reliability_support import (
    REPO_ROOT,
    STAGES,
    Workspace,
    assert_output_equal,
    diff_snapshots,
    files_under,
    outputs,
    remove_outputs,
    snapshot,
    stage_command,
    subprocess_env,
    tmp_leftovers,
)

KILL_STAGES = ("prepare", "finetune", "sae")


@dataclass(frozen=True)
class KillPoint:
    kind: str  # "time" | "staging" | "commit"
    fraction: float = 0.0  # of the uninterrupted duration, for "time"

    def __str__(self) -> str:
        return f"time {self.fraction:.2f}" if self.kind == "time" else self.kind


def kill_plan(stage: str) -> list[KillPoint]:
    """Three kill points per stage; the time-based one is drawn from an RNG seeded by name."""
    rng = random.Random(f"kill-resume-{stage}")
    return [KillPoint("time", rng.uniform(0.4, 0.8)), KillPoint("staging"), KillPoint("commit")]


def watcher(finals: list[Path]) -> Callable[[], tuple[frozenset, tuple]]:
    """A cheap probe of the state a kill point waits for: the ``.tmp-*`` entries beside the
    outputs and (inode, mtime) of each final output path."""
    parents = sorted({p.parent for p in finals})

    def probe() -> tuple[frozenset, tuple]:
        tmp = set()
        for parent in parents:
            try:
                with os.scandir(parent) as entries:
                    tmp |= {parent / e.name for e in entries if e.name.startswith(TMP_PREFIX)}
            except FileNotFoundError:
                pass
        stats = []
        for path in finals:
            try:
                st = os.stat(path)
                stats.append((st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                stats.append(None)
        return frozenset(tmp), tuple(stats)

    return probe


@dataclass
class Outcome:
    rc: int
    killed: bool
    seconds: float
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def run_stage_process(
    stage: str,
    ws: Workspace,
    root: Path,
    log: Path,
    point: KillPoint | None = None,
    duration: float = 0.0,
) -> Outcome:
    """Run one stage as a subprocess; SIGKILL it when ``point`` is reached (None: let it run)."""
    probe = watcher(outputs(stage, root))
    # Trainer's scratch folder (tempfile) of a killed finetune stays behind: keep it in tmp.
    scratch = ws.base / "process_tmp"
    scratch.mkdir(exist_ok=True)
    tmp0, finals0 = probe()
    with log.open("w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(
            stage_command(stage, ws.params, root),
            cwd=REPO_ROOT,
            env={**subprocess_env(ws.mlflow_uri), "TMPDIR": str(scratch)},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        killed = False
        deadline = start + 600
        while proc.poll() is None:
            now = time.perf_counter()
            if now > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{stage} did not finish in 600 s")
            if point is not None:
                if point.kind == "time":
                    fire = now - start >= point.fraction * duration
                else:
                    tmp, finals = probe()
                    fire = bool(tmp - tmp0) if point.kind == "staging" else finals != finals0
                if fire:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.002)
        rc = proc.wait()
    return Outcome(rc, killed and rc == -signal.SIGKILL, time.perf_counter() - start, log)


def assert_no_half_outputs(stage: str, root: Path, ref_root: Path) -> list[str]:
    """Every final output path is absent or complete and equal to the reference run's, holds
    no ``.tmp-*`` entry, and no temp path sits at a final name; returns the temp leftovers."""
    for path, ref in zip(outputs(stage, root), outputs(stage, ref_root), strict=True):
        assert not path.name.startswith(TMP_PREFIX)
        if path.exists() or path.is_symlink():
            assert_output_equal(path, ref)
            if path.is_dir():
                assert tmp_leftovers(path) == [], f"temp entries inside output {path}"
    leftovers = tmp_leftovers(root)
    finals = {p.relative_to(root).as_posix() for p in outputs(stage, root)}
    for rel in leftovers:
        assert rel not in finals
        assert not any(rel.startswith(f"{final}/") for final in finals), rel
        assert Path(rel).name.startswith(TMP_PREFIX), rel
    return leftovers


@pytest.mark.slow
@pytest.mark.parametrize("stage", KILL_STAGES)
def test_sigkill_then_resume_gives_the_uninterrupted_outputs(
    stage: str, workspace: Workspace, tmp_path: Path
) -> None:
    """SIGKILL at 3 points (seeded time, staging, commit): after each kill every output is
    absent or complete; the rerun's outputs equal an uninterrupted run's (metrics values
    without speed/*, identical weights), and upstream outputs are never touched."""
    ws = workspace
    later = STAGES[STAGES.index(stage) :]
    remove_outputs(ws.root, later)  # the tree as the pipeline leaves it before this stage
    upstream = snapshot(ws.root, dirs=False)
    ref_root = tmp_path / "ref_root"
    shutil.copytree(ws.root, ref_root)

    ref = run_stage_process(stage, ws, ref_root, tmp_path / "ref.log")
    assert ref.rc == 0, ref.tail()
    duration = ref.seconds

    report = []
    for i, point in enumerate(kill_plan(stage)):
        out = run_stage_process(stage, ws, ws.root, tmp_path / f"kill{i}.log", point, duration)
        leftovers = assert_no_half_outputs(stage, ws.root, ref_root)
        report.append((str(point), out.rc, round(out.seconds, 2), len(leftovers)))
    # The kill points must really interrupt runs, or the test proves nothing.
    assert sum(rc == -signal.SIGKILL for _, rc, _, _ in report) >= 2, report

    final = run_stage_process(stage, ws, ws.root, tmp_path / "resume.log")
    assert final.rc == 0, final.tail()
    for path, ref_path in zip(outputs(stage, ws.root), outputs(stage, ref_root), strict=True):
        assert_output_equal(path, ref_path)
    assert files_under(ws.root) == files_under(ref_root)
    assert_no_half_outputs(stage, ws.root, ref_root)
    after = {k: v for k, v in snapshot(ws.root, dirs=False).items() if k in upstream}
    assert diff_snapshots(upstream, after)["changed"] == []
    print(f"{stage}: uninterrupted {duration:.1f} s; kills {report}")


def test_rerun_cleans_temp_leftovers_of_a_killed_run(workspace: Workspace) -> None:
    """After a SIGKILLed prepare left a staged folder and a staged metrics file, a successful
    rerun removes these stale temp siblings (leftovers are made exactly as io.Staging names
    them, so the outcome does not depend on kill timing)."""
    ws = workspace
    from layerwise.paths import Paths

    from .reliability_support import run_stage

    paths = Paths(ws.root)
    stale_dir = paths.prepared("kw").with_name(f"{TMP_PREFIX}kw-abc123")
    shutil.copytree(paths.prepared("kw"), stale_dir)
    stale_file = paths.prepare_metrics("kw").with_name(f"{TMP_PREFIX}kw.json-def456")
    stale_file.write_text('{"texts": 1')  # half-written, as a kill leaves it
    run_stage("prepare", ws.params, ws.root)
    assert tmp_leftovers(ws.root) == []
