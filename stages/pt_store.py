"""pt_store@<model>-<task>: the pre-trained encoder's activation stores of the SAE layers, once
per (model, task), shared by every seed's and control's compare store."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.pt_store import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=False))


if __name__ == "__main__":
    run_script(main)
