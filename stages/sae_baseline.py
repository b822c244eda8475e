"""sae_baseline@<model>-<task>: the separate-SAE dictionary overlap on a calibrated scale: per
SAE layer and seed, PT-vs-FT mean max cosine similarity beside PT-vs-PT and FT-vs-FT of SAEs
from another seed and the overlap of random directions."""

from __future__ import annotations

from layerwise.cli import begin_stage, run_script
from layerwise.pipeline.sae_baseline import run


def main(argv: list[str] | None = None) -> dict:
    return run(begin_stage(__doc__, argv, task=True, model=True, seed=False, full_protocol=True))


if __name__ == "__main__":
    run_script(main)
