"""sae@<model>-<task>-<seed>: sparse autoencoders on the early/middle/late layers of the PT and
FT models, judged by MSE, explained variance, L0, dead/dense fractions and spliced accuracy."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.sae import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=True))


if __name__ == "__main__":
    run_script(main)
