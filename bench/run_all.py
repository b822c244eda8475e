"""The benchmark suite (``make bench``): every benchmark script, one table, ``bench/RESULTS.md``.

Each part runs in its own process (its own peak RSS) and hands its figures back as JSON:

* ``compare.py``: extraction overhead of the compare stage vs a bare PT+FT forward loop;
* ``sae.py``: SAE training throughput and FVU vs the peer ``dictionary-learning``, L1 at
  matched L0 and TopK;
* ``crosscoder.py``: crosscoder training throughput and per-model FVU vs the peer's BatchTopK
  on the concatenated rows;
* ``e2e.py``: cold ``dvc repro`` in fresh copies with empty caches (per stage and in total,
  peak RSS per stage, fine-tuning time), disk use, no-op ``dvc repro``, ``dvc exp run -S``;
* ``scaling.py``: the compare and sae stages at 1x and 4x analysis texts;
* ``explorer.py``: the explorer app's free-text and feature-card response times.

Every figure is the median (min-max) of its repeats; verdicts are on the median (on the worst
repeat for memory). The SAE sweep behind the default L1 coefficient is ``sae_sweep.py``, run
by hand.

The component benchmarks measure the workspace's fine-tuned model and activation store (read
only; stand-ins where they are missing). So when the workspace pipeline has never run, this
script stops (exit 2) and asks for ``make reproduce`` rather than starting it: reproducing is
the long job, to be started knowingly.

Usage::

    python bench/run_all.py                   # everything, 3 repeats (~70 min)
    python bench/run_all.py --repeats 1       # one of each (~30 min)
    python bench/run_all.py --quick           # smoke run: tiny sizes, no results file
    python bench/run_all.py --parts sae,e2e --results /tmp/r.md

Exit status: 0 when every part ran (targets may still be missed: see the table), 1 when one
failed to run, 2 when the workspace pipeline has never run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import REPO, Figure, load_figures, machine_info, markdown_table

PARTS = ("compare", "sae", "crosscoder", "e2e", "scaling", "explorer")
RESULTS_BEGIN = "<!-- bench/run_all.py: begin -->"
RESULTS_END = "<!-- bench/run_all.py: end -->"


def workspace_state() -> tuple[str, str]:
    """('never' | 'partial' | 'complete', why), read from dvc.lock and the outputs it lists,
    without running DVC in the workspace."""
    import yaml

    lock = REPO / "dvc.lock"
    if not lock.is_file():
        return "never", "no dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    outs = [o["path"] for s in stages.values() for o in s.get("outs", []) if "path" in o]
    if not any((REPO / p).exists() for p in outs):
        return "never", "dvc.lock lists no stage with an output present"
    if not (REPO / "metrics" / "paper.json").is_file():
        return "partial", f"{len(stages)} stages locked, no paper output yet"
    return "complete", f"{len(stages)} stages locked"


def run_part(part: str, args: argparse.Namespace, work: Path) -> tuple[list[Figure], str | None]:
    """``bench/<part>.py`` in its own process, its output streaming through: (its figures,
    why it failed or None). A part that fails late still hands back what it measured."""
    out = work / f"{part}.json"
    repeats = max(3, args.repeats) if part == "compare" else args.repeats
    cmd = [sys.executable, str(Path(__file__).with_name(f"{part}.py")), "--json", str(out)]
    cmd += ["--repeats", str(repeats), *(["--quick"] if args.quick else [])]
    print(f"\n# bench/{part}.py\n", flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    figures = load_figures(out) if out.is_file() else []
    failed = None if rc == 0 else f"bench/{part}.py failed (exit {rc})"
    if failed and not figures:
        figures = [Figure(f"{part}: benchmark", [], "", where=failed)]
    return figures, failed


def results_section(machine: str, figures: list[Figure], notes: list[str]) -> str:
    """This script's section of RESULTS.md: machine, mode, every figure."""
    lines = "".join(f"- {n}\n" for n in [f"machine: {machine}", *notes])
    return (
        f"{RESULTS_BEGIN}\n## Benchmark suite (`make bench` = `python bench/run_all.py`)\n\n"
        f"{lines}\n{markdown_table(figures)}\n{RESULTS_END}\n"
    )


def write_results(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (between the markers), keep the rest (the
    profiles and the sweep that params.yaml points to)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        tail = rest.split(RESULTS_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, no results file")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--repeats", type=int, help="repeats of each figure (default 3; --quick 1)")
    ap.add_argument("--results", help="Markdown file to write (default bench/RESULTS.md)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or not set(args.parts) <= set(PARTS):
        ap.error(f"--parts: {args.parts} (allowed: {', '.join(PARTS)})")
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state, why = workspace_state()
    if state == "never":
        print(
            f"The workspace pipeline has never run ({why}).\nRun `make reproduce` first: the "
            "benchmarks measure its fine-tuned models and activation stores. This script does "
            "not start it for you: it is the long job.",
            file=sys.stderr,
        )
        return 2
    machine = machine_info()
    print(f"benchmark suite: {machine}; workspace pipeline {state} ({why})", flush=True)
    figures, failures = [], []
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-") as work:
        for part in [p for p in PARTS if p in args.parts]:
            part_figures, failed = run_part(part, args, Path(work))
            figures += part_figures
            if failed:
                failures.append(failed)
    print(f"\n## all benchmarks\n\n{markdown_table(figures)}\n")
    results = args.results or (None if args.quick else str(REPO / "bench" / "RESULTS.md"))
    if results:
        mode = "--quick (smoke sizes: only memory targets judged)" if args.quick else "defaults"
        notes = [
            f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"mode: {mode}; parts {', '.join(args.parts)}; {args.repeats} repeat(s)",
            f"workspace pipeline: {state} ({why})"
            + ("; stand-ins where its outputs are missing" if state == "partial" else ""),
        ]
        write_results(Path(results), results_section(machine, figures, notes))
        print(f"wrote {results}")
    if failures:
        print("FAILED to run:\n- " + "\n- ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
