"""features@<model>-<task>-<seed>: which SAE features change with fine-tuning, layer by layer:
top-variance features with texts and tokens, label selectivity, PT/FT dictionary overlap, token
maps and the generated qualitative table."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.features import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=True))


if __name__ == "__main__":
    run_script(main)
