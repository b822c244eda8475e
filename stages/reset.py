"""reset@<model>-<task>-<seed>: the fine-tuned classifier's val accuracy with its encoder blocks
reset to the pre-trained weights bottom-up and top-down, for every number of blocks."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.reset import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=True, full_protocol=True))


if __name__ == "__main__":
    run_script(main)
