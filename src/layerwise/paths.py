"""Where each stage reads and writes, in one place (mirrors the paths in ``dvc.yaml``).

A test checks that ``dvc.yaml`` declares exactly these paths, so a stage and the pipeline can
never disagree about a file.
"""

from __future__ import annotations

from pathlib import Path

Run = int | str
"""A training seed, or the name of a control run (``shuffled``)."""


def run_name(seed: Run) -> str:
    """The folder / file stem of a run: ``s<seed>`` for a seed, the control's name otherwise."""
    return f"s{seed}" if isinstance(seed, int) else seed


class Paths:
    """Output paths relative to a repo root (the working directory under ``dvc repro``)."""

    def __init__(self, root: str | Path = ".") -> None:
        self.root = Path(root)

    # prepare@<task>
    def prepared(self, task: str) -> Path:
        return self.root / "data" / "prepared" / task

    def prepare_metrics(self, task: str) -> Path:
        return self.root / "metrics" / "prepare" / f"{task}.json"

    # A run is a training seed (an int: folder ``s<seed>``) or a control (its name, e.g.
    # ``shuffled``: the shuffled-label fine-tune).
    def run_dir(self, kind: str, model: str, task: str, seed: Run) -> Path:
        return self.root / kind / model / task / run_name(seed)

    # finetune@<model>-<task>-<seed> and finetune_shuffled@<model>-<task>
    def finetuned_seeds(self, model: str, task: str) -> Path:
        """The folder of every seed's fine-tuned model (and nothing else), so a stage that
        compares seeds can depend on all of them at once."""
        return self.root / "models" / model / task / "ft"

    def finetuned(self, model: str, task: str, seed: Run) -> Path:
        if isinstance(seed, str):
            return self.run_dir("models", model, task, seed) / "ft"
        return self.finetuned_seeds(model, task) / run_name(seed)

    def finetune_metrics(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "metrics" / "finetune" / model / task / f"{run_name(seed)}.json"

    def finetune_curve(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "plots" / "finetune" / model / task / f"{run_name(seed)}.csv"

    # reset@<model>-<task>-<seed>
    def reset_json(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "reset.json"

    def reset_csv(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "reset.csv"

    # seed_floor@<model>-<task>
    def seed_floor_json(self, model: str, task: str) -> Path:
        return self.root / "results" / model / task / "seed_floor.json"

    def seed_floor_csv(self, model: str, task: str) -> Path:
        return self.root / "results" / model / task / "seed_floor.csv"

    # compare@<model>-<task>-<seed>
    def similarity_json(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "similarity.json"

    def similarity_csv(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "similarity.csv"

    def activations(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("data/activations", model, task, seed)

    # pt_store@<model>-<task>: the PT half of every run's store (linked from its meta.json)
    def pt_activations(self, model: str, task: str) -> Path:
        return self.root / "data" / "activations" / model / task / "pt"

    def pt_store_metrics(self, model: str, task: str) -> Path:
        return self.root / "metrics" / "pt_store" / model / f"{task}.json"

    # sae@<model>-<task>-<seed>
    def saes(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("models", model, task, seed) / "sae"

    def sae_metrics(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "metrics" / "sae" / model / task / f"{run_name(seed)}.json"

    def sae_curve(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "plots" / "sae" / model / task / f"{run_name(seed)}.csv"

    # sae_baseline@<model>-<task>
    def sae_baseline_json(self, model: str, task: str) -> Path:
        return self.root / "results" / model / task / "sae_baseline.json"

    def sae_baseline_csv(self, model: str, task: str) -> Path:
        return self.root / "results" / model / task / "sae_baseline.csv"

    # crosscoder@<model>-<task>-<seed> and crosscoder_shuffled@<model>-<task>
    def crosscoders(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("models", model, task, seed) / "crosscoder"

    def crosscoder_json(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "crosscoder.json"

    def crosscoder_csv(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "crosscoder.csv"

    def crosscoder_metrics(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "metrics" / "crosscoder" / model / task / f"{run_name(seed)}.json"

    def crosscoder_curve(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "plots" / "crosscoder" / model / task / f"{run_name(seed)}.csv"

    # features@<model>-<task>-<seed>
    def features_json(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "features.json"

    def features_csv(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "features.csv"

    def features_metrics(self, model: str, task: str, seed: Run) -> Path:
        return self.root / "metrics" / "features" / model / task / f"{run_name(seed)}.json"

    def token_maps(self, model: str, task: str, seed: Run) -> Path:
        return self.run_dir("results", model, task, seed) / "token_maps"

    # paper
    def paper(self) -> Path:
        return self.root / "paper"

    def paper_metrics(self) -> Path:
        return self.root / "metrics" / "paper.json"
