"""Argument parsing shared by the stage scripts (``stages/*.py``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from layerwise.config import Params, load_params


@dataclass
class StageArgs:
    params: Params
    root: Path
    task: str | None = None
    model: str | None = None
    seed: int | None = None

    @property
    def item(self) -> str:
        """The DVC stage suffix: ``<model>-<task>-<seed>`` (or ``<task>`` for prepare)."""
        parts = [p for p in (self.model, self.task) if p]
        if self.seed is not None:
            parts.append(str(self.seed))
        return "-".join(parts) or "all"


def parse_stage_args(
    description: str, argv: list[str] | None, *, task: bool, model: bool, seed: bool
) -> StageArgs:
    """Parse ``--task/--model/--seed`` and load params; validate the keys against params."""
    parser = argparse.ArgumentParser(description=description)
    if task:
        parser.add_argument("--task", required=True, help="task key (params: tasks)")
    if model:
        parser.add_argument("--model", required=True, help="model key (params: models)")
    if seed:
        parser.add_argument("--seed", required=True, type=int, help="training seed (params: seeds)")
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--root", default=".", help="repo root: outputs are written under it")
    ns = parser.parse_args(argv)
    params = load_params(ns.params)
    args = StageArgs(params=params, root=Path(ns.root))
    if task:
        params.task(ns.task)
        args.task = ns.task
    if model:
        params.model(ns.model)
        args.model = ns.model
    if seed:
        args.seed = params.check_seed(ns.seed)
    return args
