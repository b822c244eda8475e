"""crosscoder@<model>-<task>-<seed>: model diffing with one crosscoder per SAE layer on the
paired PT / FT activations: PT-only, shared and FT-only latents (checked by Latent Scaling),
their label selectivity against a permutation null, and the FT reconstruction's spliced
accuracy."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.crosscoder import run
from layerwise.schema import CONTROLS


def main(argv: list[str] | None = None) -> dict:
    return run(
        begin_stage(
            __doc__, argv, task=True, model=True, seed=True, controls=CONTROLS, full_protocol=True
        )
    )


if __name__ == "__main__":
    run_script(main)
