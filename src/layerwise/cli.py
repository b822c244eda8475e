"""What every stage script (``stages/*.py``) does around its own work: set up logging, parse
``--task/--model/--seed`` and the params, open the MLflow run with the standard tags and log the
params it used."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise import tracking
from layerwise.config import Params, load_params, section_dict
from layerwise.errors import UserError
from layerwise.runtime import quiet_libraries, setup_logging


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

    @property
    def key(self) -> tuple[str, str, int]:
        """``(model, task, seed)``: what names one run's outputs (the ``Paths`` methods)."""
        if self.model is None or self.task is None or self.seed is None:
            raise ValueError(f"stage {self.item!r} has no (model, task, seed) key")
        return self.model, self.task, self.seed

    @property
    def tags(self) -> dict[str, Any]:
        """MLflow tags of the stage's run: the task, model and seed it ran for."""
        pairs = (("task", self.task), ("model", self.model), ("seed", self.seed))
        return {name: value for name, value in pairs if value is not None}


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


def begin_stage(
    description: str, argv: list[str] | None, *, task: bool, model: bool, seed: bool
) -> StageArgs:
    """A stage's first step: logging, quiet HF libraries, then :func:`parse_stage_args`."""
    setup_logging()
    quiet_libraries()
    return parse_stage_args(description, argv, task=task, model=model, seed=seed)


def prefixed(prefix: str, section: Any) -> dict[str, Any]:
    """A params section as MLflow params named like its params.yaml keys (``sae.k``, ...)."""
    return {f"{prefix}.{k}": v for k, v in section_dict(section).items()}


@contextmanager
def stage_run(
    stage: str, args: StageArgs, used: dict[str, Any], tags: dict[str, Any] | None = None
) -> Iterator[tracking.StageRun]:
    """The stage's MLflow run (``<stage>@<item>``, tagged with ``args.tags`` unless ``tags`` is
    given), with the params it used logged before anything else."""
    with tracking.start_stage_run(
        stage,
        args.item,
        args.params.mlflow.experiment,
        args.tags if tags is None else tags,
        root=args.root,
    ) as run:
        run.log_params(used)
        yield run


def run_script(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """A stage script's ``__main__``: run ``main``; a :class:`UserError` prints one line
    ``error: ...`` and exits with status 2 (the traceback only with ``LAYERWISE_DEBUG=1``), so a
    user sees what to fix, not where in the code it was noticed."""
    try:
        main(argv)
    except UserError as exc:
        if os.environ.get("LAYERWISE_DEBUG") == "1":
            raise
        logging.getLogger(__name__).debug("user error", exc_info=True)
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
