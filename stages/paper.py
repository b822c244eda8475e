"""paper: every figure and table of the paper regenerated from the earlier stages' outputs, the
paper's three claims checked against the numbers, and paper/summary.md. No model computation."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.paper import run


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run(begin_stage(__doc__, argv, task=False, model=False, seed=False))


if __name__ == "__main__":
    run_script(main)
