"""finetune@<model>-<task>-<seed>: fine-tune the model on the task; PT-head and probe baselines."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.finetune import run
from layerwise.schema import CONTROLS


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=True, controls=CONTROLS))


if __name__ == "__main__":
    run_script(main)
