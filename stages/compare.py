"""compare@<model>-<task>-<seed>: layer-wise PT vs FT similarity (cosine, CKA, probes, CIs) and
activation stores of the SAE layers."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.compare import run
from layerwise.schema import CONTROLS


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=True, controls=CONTROLS))


if __name__ == "__main__":
    run_script(main)
