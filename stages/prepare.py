"""prepare@<task>: load the task's source, clean, split, save; metrics: rows and token lengths."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.prepare import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=False, seed=False))


if __name__ == "__main__":
    run_script(main)
