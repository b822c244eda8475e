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

from layerwise import io, tracking
from layerwise.config import ConfigError, Params, load_params, section_dict
from layerwise.errors import UserError
from layerwise.paths import Paths
from layerwise.runtime import quiet_libraries, setup_logging

logger = logging.getLogger(__name__)


@dataclass
class StageArgs:
    params: Params
    root: Path
    task: str | None = None
    model: str | None = None
    seed: int | None = None
    control: str | None = None
    """A control run instead of a seed (``shuffled``: labels permuted within the train split);
    it trains with the model's first seed (``seeds``, or ``size_seeds`` for a size model)."""

    @property
    def run(self) -> int | str | None:
        """What names this run's outputs: the control's name, else the seed."""
        return self.control if self.control is not None else self.seed

    @property
    def item(self) -> str:
        """The DVC stage suffix: ``<model>-<task>-<seed|control>`` (``<task>`` for prepare)."""
        parts = [p for p in (self.model, self.task) if p]
        if self.run is not None:
            parts.append(str(self.run))
        return "-".join(parts) or "all"

    def stage_name(self, stage: str) -> str:
        """The DVC stage that makes ``stage``'s output for this run (``finetune@m-t-0``, or
        ``finetune_shuffled@m-t`` for a control): what an error tells the user to rerun."""
        size = self._size_suffix
        if self.control is not None:
            return f"{stage}_{self.control}{size}@{self.model}-{self.task}"
        return f"{stage}{size}@{self.item}"

    def task_stage_name(self, stage: str) -> str:
        """The DVC stage of a per-(model, task) ``stage`` (``pt_store@m-t``, or
        ``pt_store_size@m-t`` for a size model)."""
        return f"{stage}{self._size_suffix}@{self.model}-{self.task}"

    @property
    def _size_suffix(self) -> str:
        """``_size`` for a model of ``size_models``: its stages are the ``*_size`` ones."""
        return "_size" if self.model and self.params.is_size_model(self.model) else ""

    def require_store(self) -> Path:
        """This run's activation store, after checking that it and the shared PT store it links
        to exist: a missing one names the stage that makes it, before any work starts."""
        paths = Paths(self.root)
        root = io.require(paths.activations(*self.key), self.stage_name("compare"))
        io.require(paths.pt_activations(*self.key[:2]), self.task_stage_name("pt_store"))
        return root

    @property
    def key(self) -> tuple[str, str, int | str]:
        """``(model, task, seed or control)``: names one run's outputs (``Paths`` methods)."""
        if self.model is None or self.task is None or self.run is None:
            raise ValueError(f"stage {self.item!r} has no (model, task, seed) key")
        return self.model, self.task, self.run

    @property
    def tags(self) -> dict[str, Any]:
        """MLflow tags of the stage's run: the task, model, seed (and control) it ran for."""
        pairs = (
            ("task", self.task),
            ("model", self.model),
            ("seed", self.seed),
            ("control", self.control),
        )
        return {name: value for name, value in pairs if value is not None}


def parse_stage_args(
    description: str,
    argv: list[str] | None,
    *,
    task: bool,
    model: bool,
    seed: bool,
    controls: tuple[str, ...] = (),
    full_protocol: bool = False,
) -> StageArgs:
    """Parse ``--task/--model/--seed`` (or ``--control`` where the stage runs controls) and
    load params; validate the keys against params. ``full_protocol``: the stage runs for the
    models of ``models`` only (reset, seed floor, SAE baseline, crosscoders), so a size model
    is refused."""
    parser = argparse.ArgumentParser(description=description)
    if task:
        parser.add_argument("--task", required=True, help="task key (params: tasks)")
    if model:
        parser.add_argument("--model", required=True, help="model key (params: models)")
    if seed:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--seed", type=int, help="training seed (params: seeds)")
        if controls:
            which.add_argument("--control", choices=controls, help="a control run")
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
        if full_protocol and params.is_size_model(ns.model):
            raise ConfigError(
                f"model {ns.model!r} is in size_models (one seed, shuffled control only); this "
                f"stage runs for the models of `models` only: {sorted(params.models)}"
            )
    if seed and getattr(ns, "control", None) is not None:
        args.control, args.seed = ns.control, params.seeds_of(args.model or "")[0]
    elif seed:
        args.seed = params.check_seed(ns.seed, args.model)
    return args


def begin_stage(
    description: str,
    argv: list[str] | None,
    *,
    task: bool,
    model: bool,
    seed: bool,
    controls: tuple[str, ...] = (),
    full_protocol: bool = False,
) -> StageArgs:
    """A stage's first step: logging, quiet HF libraries, then :func:`parse_stage_args`."""
    setup_logging()
    quiet_libraries()
    return parse_stage_args(
        description,
        argv,
        task=task,
        model=model,
        seed=seed,
        controls=controls,
        full_protocol=full_protocol,
    )


def prefixed(prefix: str, section: Any) -> dict[str, Any]:
    """A params section as MLflow params named like its params.yaml keys (``sae.k``, ...)."""
    return {f"{prefix}.{k}": v for k, v in section_dict(section).items()}


@contextmanager
def stage_run(
    stage: str, args: StageArgs, used: dict[str, Any], tags: dict[str, Any] | None = None
) -> Iterator[tracking.StageRun]:
    """The stage's MLflow run (``<stage>@<item>``, tagged with ``args.tags`` unless ``tags`` is
    given), with the params it used logged before anything else, then the task's prepared
    split as the run's dataset: before the work for the stages that read it, after it for
    ``prepare``, which writes it."""
    with tracking.start_stage_run(
        stage,
        args.item,
        args.params.mlflow.experiment,
        args.tags if tags is None else tags,
        root=args.root,
    ) as run:
        run.log_params(used)
        if args.task is not None and stage != "prepare":
            log_split(run, args, "input")
        yield run
        if args.task is not None and stage == "prepare":
            log_split(run, args, "output")


def log_split(run: tracking.StageRun, args: StageArgs, context: str) -> None:
    """Log ``args.task``'s prepared split as an MLflow dataset: its source in params and the md5
    DVC records for it, so the run and ``dvc.lock`` name the same data. A missing split is left
    for the stage to report (it names the stage that makes it)."""
    split = Paths(args.root).prepared(args.task)
    if not split.is_dir():
        logger.debug("no prepared split at %s: no dataset logged", split)
        return
    source = {
        "source": args.params.task(args.task).source,
        "path": split.relative_to(args.root).as_posix(),
    }
    run.log_dataset(args.task, source, tracking.dir_md5(split), context)


def run_script(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """A stage script's ``__main__``: run ``main``; a :class:`UserError` prints one line
    ``error: ...`` and exits with status 2 (the traceback only with ``LAYERWISE_DEBUG=1``), so a
    user sees what to fix, not where in the code it was noticed."""
    try:
        main(argv)
    except UserError as exc:
        if os.environ.get("LAYERWISE_DEBUG") == "1":
            raise
        logger.debug("user error", exc_info=True)
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
