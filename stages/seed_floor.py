"""seed_floor@<model>-<task>: FT-vs-FT similarity between fine-tunes of different seeds (all
pairs) on the same analysis tokens, per layer: the noise floor of PT-vs-FT similarity."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.seed_floor import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=False, full_protocol=True))


if __name__ == "__main__":
    run_script(main)
