"""Where each stage reads and writes, in one place (mirrors the paths in ``dvc.yaml``).

A test checks that ``dvc.yaml`` declares exactly these paths, so a stage and the pipeline can
never disagree about a file.
"""

from __future__ import annotations

from pathlib import Path


class Paths:
    """Output paths relative to a repo root (the working directory under ``dvc repro``)."""

    def __init__(self, root: str | Path = ".") -> None:
        self.root = Path(root)

    # prepare@<task>
    def prepared(self, task: str) -> Path:
        return self.root / "data" / "prepared" / task

    def prepare_metrics(self, task: str) -> Path:
        return self.root / "metrics" / "prepare" / f"{task}.json"

    # finetune@<model>-<task>-<seed>
    def run_dir(self, kind: str, model: str, task: str, seed: int) -> Path:
        return self.root / kind / model / task / f"s{seed}"

    def finetuned(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("models", model, task, seed) / "ft"

    def finetune_metrics(self, model: str, task: str, seed: int) -> Path:
        return self.root / "metrics" / "finetune" / model / task / f"s{seed}.json"

    def finetune_curve(self, model: str, task: str, seed: int) -> Path:
        return self.root / "plots" / "finetune" / model / task / f"s{seed}.csv"

    # compare@<model>-<task>-<seed>
    def similarity_json(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("results", model, task, seed) / "similarity.json"

    def similarity_csv(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("results", model, task, seed) / "similarity.csv"

    def activations(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("data/activations", model, task, seed)

    # sae@<model>-<task>-<seed>
    def saes(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("models", model, task, seed) / "sae"

    def sae_metrics(self, model: str, task: str, seed: int) -> Path:
        return self.root / "metrics" / "sae" / model / task / f"s{seed}.json"

    def sae_curve(self, model: str, task: str, seed: int) -> Path:
        return self.root / "plots" / "sae" / model / task / f"s{seed}.csv"

    # features@<model>-<task>-<seed>
    def features_json(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("results", model, task, seed) / "features.json"

    def features_csv(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("results", model, task, seed) / "features.csv"

    def features_metrics(self, model: str, task: str, seed: int) -> Path:
        return self.root / "metrics" / "features" / model / task / f"s{seed}.json"

    def token_maps(self, model: str, task: str, seed: int) -> Path:
        return self.run_dir("results", model, task, seed) / "token_maps"

    # paper
    def paper(self) -> Path:
        return self.root / "paper"

    def paper_metrics(self) -> Path:
        return self.root / "metrics" / "paper.json"
