"""What the pipeline has produced under a root: which (model, task, seed) runs exist, which of
their stage outputs are there, and the paper's files.

Read from the file system alone (no DVC, no MLflow), so the explorer opens on any checkout: a
fresh clone (nothing yet), a partial ``dvc repro`` (some stages) or a complete run. A run is
listed as soon as any of its outputs exists; each page then says which stage it still needs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path

from layerwise.activations import ActivationStore
from layerwise.errors import UserError
from layerwise.paths import Paths, Run
from layerwise.schema import CONTROLS, run_item, stage_run_name, unit_name

logger = logging.getLogger(__name__)

REPRODUCE_HINT = (
    "Nothing has been produced yet under {root}: run `make reproduce` (the whole pipeline, "
    "`dvc repro`), then reload this page."
)
UNIT = re.compile(r"(pt|ft)_L(\d+)")
"""An SAE unit folder name (``schema.unit_name``)."""
CROSSCODER_LAYER = re.compile(r"L(\d+)")
"""A crosscoder folder name under ``models/<model>/<task>/<run>/crosscoder``."""
SEED_DIR = re.compile(r"s(\d+)")
SEED_ONLY_STAGES = ("sae", "features")
"""Stages the pipeline runs per seed but not for a control run."""
FULL_PROTOCOL_STAGES = ("crosscoder",)
"""Stages the pipeline runs for ``models`` only, not for ``size_models``."""
RUN_GLOBS = (
    "models/*/*/s*",
    "results/*/*/s*",
    "data/activations/*/*/s*",
    "metrics/finetune/*/*/s*.json",
    "metrics/sae/*/*/s*.json",
    "metrics/features/*/*/s*.json",
)
"""Where a run leaves a trace: ``<model>/<task>/s<seed>`` (or the control's name, which the
``s*`` patterns match too: ``shuffled``) at the end."""


class ExplorerError(UserError):
    """What a page asked for cannot be shown (missing output, bad input): the message says why
    and what to do, and the page shows it instead of a traceback."""


@dataclass(frozen=True)
class RunKey:
    """One (model, task, seed) run of the pipeline, or a control run of the task
    (``seed="shuffled"``: the shuffled-label fine-tune, with its store and crosscoders)."""

    model: str
    task: str
    seed: Run
    size: bool = field(default=False, compare=False)
    """A model of ``size_models``: its DVC stages are the ``*_size`` ones. Not part of the key's
    identity, so a key built from the sidebar finds the run."""

    @property
    def control(self) -> str | None:
        """The control's name for a control run, else None."""
        return self.seed if isinstance(self.seed, str) else None

    @property
    def label(self) -> str:
        which = f"{self.control}-label control" if self.control else f"seed {self.seed}"
        return f"{self.model} · {self.task} · {which}"

    @property
    def item(self) -> str:
        """The DVC matrix suffix (``compare@<item>``; a control's stages are ``<m>-<t>``)."""
        if self.control:
            return f"{self.model}-{self.task}"
        return run_item(self.model, self.task, self.seed)

    def runs(self, stage: str) -> bool:
        """Whether the pipeline runs ``stage`` for this run (a control has no SAEs or features,
        a size model no crosscoders)."""
        if self.size and stage in FULL_PROTOCOL_STAGES:
            return False
        return not (self.control and stage in SEED_ONLY_STAGES)

    def why_not(self, stages: list[str]) -> str:
        """Why the pipeline does not run ``stages`` (those ``runs`` refuses) for this run."""
        names = ", ".join(stages)
        if self.size and any(s in FULL_PROTOCOL_STAGES for s in stages):
            return (
                f"{self.label}: the pipeline runs {names} for the models of `models` only; "
                f"{self.model} is a size model (size_models: one seed and the shuffled-label "
                "control). Move it to `models` in params.yaml for the full protocol."
            )
        return (
            f"{self.label}: the pipeline runs {names} for the seeds only, not for the control; "
            "pick a seed in the sidebar."
        )

    def stage(self, stage: str) -> str:
        """The DVC stage name of ``stage`` for this run (for a seed of a ``models`` entry also
        its MLflow run name; MLflow names a control's runs ``<stage>@<model>-<task>-<control>``
        and a size model's without the ``_size``)."""
        if stage == "prepare":
            return f"prepare@{self.task}"
        size = "_size" if self.size else ""
        if stage == "pt_store":
            return f"pt_store{size}@{self.model}-{self.task}"
        if self.control:
            return f"{stage}_{self.control}{size}@{self.item}"
        if size:
            return f"{stage}{size}@{self.item}"
        return stage_run_name(stage, self.model, self.task, self.seed)

    @property
    def param(self) -> str:
        """``model/task/seed``, how messages name the run."""
        return f"{self.model}/{self.task}/{self.seed}"

    @property
    def order(self) -> tuple:
        """Sort key: model, task, then seeds ascending before controls by name."""
        return (self.model, self.task, self.control is not None, str(self.seed).zfill(9))


def unit_sort_key(name: str) -> tuple[int, int]:
    """Units ordered by layer, PT before FT."""
    match = UNIT.fullmatch(name)
    if match is None:
        return (1 << 30, 0)
    return (int(match.group(2)), 0 if match.group(1) == "pt" else 1)


def unit_layer(name: str) -> int:
    match = UNIT.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not an SAE unit name (pt_L<k> or ft_L<k>)")
    return int(match.group(2))


def other_unit(name: str) -> str:
    """The same layer's SAE of the other model: ``pt_L4`` <-> ``ft_L4``."""
    which = "ft" if name.startswith("pt") else "pt"
    return unit_name(which, unit_layer(name))


@dataclass(frozen=True)
class RunOutputs:
    """Which outputs of one run exist (``True``: present and complete enough to read)."""

    key: RunKey
    prepared: bool
    finetuned: bool
    store: bool
    similarity: bool
    sae_units: tuple[str, ...]
    features: bool
    crosscoder_layers: tuple[int, ...] = ()
    """Layers with a saved crosscoder (``crosscoder/L<layer>/cfg.json``), ascending."""
    pt_store: bool = True
    """Whether the run's store has the shared PT store it links to (``pt_store`` stage)."""

    @property
    def sae_layers(self) -> list[int]:
        return sorted({unit_layer(u) for u in self.sae_units})

    def missing(self, *needs: str) -> list[str]:
        """The stages among ``needs`` (``prepare``, ``finetune``, ``compare``, ``sae``,
        ``crosscoder``, ``features``) whose outputs this run lacks; a store needs the shared PT
        store too, so ``compare`` brings ``pt_store`` with it."""
        needs = tuple(s for n in needs for s in (("pt_store", n) if n == "compare" else (n,)))
        present = {
            "prepare": self.prepared,
            "finetune": self.finetuned,
            "pt_store": self.pt_store,
            "compare": self.store,
            "sae": bool(self.sae_units),
            "crosscoder": bool(self.crosscoder_layers),
            "features": self.features,
        }
        return [stage for stage in needs if not present[stage]]

    def hint(self, stages: list[str]) -> str:
        """What to run for the missing ``stages``: the DVC stage names, or the whole pipeline."""
        skipped = [s for s in stages if not self.key.runs(s)]
        if skipped:
            return self.key.why_not(skipped)
        names = [self.key.stage(s) for s in stages]
        return (
            f"{self.key.label}: this needs the output of {', '.join(names)}, which is not "
            "there yet. Run `make reproduce` (or `dvc repro " + " ".join(names) + "`)."
        )


def saved_dictionaries(root: Path, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """The folders under ``root`` whose names match ``pattern`` and that hold a ``cfg.json``
    (an SAE or a crosscoder is complete only once its config is written), as matches."""
    if not root.is_dir():
        return []
    found = (pattern.fullmatch(p.name) for p in root.iterdir() if (p / "cfg.json").is_file())
    return [m for m in found if m is not None]


def run_outputs(paths: Paths, key: RunKey) -> RunOutputs:
    """What exists of one run (file-system checks only)."""
    m, t, s = key.model, key.task, key.seed
    found = saved_dictionaries(paths.saes(m, t, s), UNIT)
    units = tuple(sorted((u.group(0) for u in found), key=unit_sort_key))
    crosscoders = saved_dictionaries(paths.crosscoders(m, t, s), CROSSCODER_LAYER)
    return RunOutputs(
        key=key,
        prepared=(paths.prepared(t) / "dataset_dict.json").is_file(),
        finetuned=(paths.finetuned(m, t, s) / "config.json").is_file(),
        store=(paths.activations(m, t, s) / "analysis" / "meta.json").is_file(),
        pt_store=ActivationStore.complete(paths.activations(m, t, s), "analysis"),
        similarity=paths.similarity_csv(m, t, s).is_file(),
        sae_units=units,
        features=paths.features_json(m, t, s).is_file(),
        crosscoder_layers=tuple(sorted(int(c.group(1)) for c in crosscoders)),
    )


@dataclass(frozen=True)
class Catalog:
    """Everything the pipeline has produced under ``root``."""

    root: Path
    runs: tuple[RunOutputs, ...]
    figures: tuple[Path, ...]
    """``paper/figures/*.png``."""
    tables: tuple[Path, ...]
    """``paper/tables/*.csv``."""

    @property
    def empty(self) -> bool:
        return not self.runs and not self.figures and not self.tables

    @property
    def keys(self) -> list[RunKey]:
        return [r.key for r in self.runs]

    def run(self, key: RunKey) -> RunOutputs:
        for outputs in self.runs:
            if outputs.key == key:
                return outputs
        known = ", ".join(k.param for k in self.keys) or "none"
        raise ExplorerError(f"no run {key.param} under {self.root}; runs: {known}")

    def models(self) -> list[str]:
        return sorted({k.model for k in self.keys})

    def tasks(self, model: str) -> list[str]:
        return sorted({k.task for k in self.keys if k.model == model})

    def seeds(self, model: str, task: str) -> list[Run]:
        """The seeds of (model, task) ascending, then its control runs."""
        keys = [k for k in self.keys if (k.model, k.task) == (model, task)]
        return [k.seed for k in sorted(keys, key=attrgetter("order"))]


def parse_run(text: str) -> Run:
    """A seed or control as a menu or URL writes it (``"2"``, ``"shuffled"``)."""
    return int(text) if text.isdigit() else text


def _key_of(rel: Path) -> RunKey | None:
    """The run a path under the root belongs to (its last three parts name it)."""
    *_, model, task, last = rel.parts
    name = last.removesuffix(".json")
    if name in CONTROLS:
        return RunKey(model, task, name)
    match = SEED_DIR.fullmatch(name)
    return RunKey(model, task, int(match.group(1))) if match else None


def scan(root: str | Path, size_models: Iterable[str] = ()) -> Catalog:
    """Every run with at least one output under ``root``, and the paper's figures and tables;
    runs of ``size_models`` are marked so their hints name the ``*_size`` stages."""
    root = Path(root)
    paths = Paths(root)
    keys = {key for pattern in RUN_GLOBS for p in root.glob(pattern) if (key := _key_of(p))}
    size = set(size_models)
    keys = {replace(k, size=True) if k.model in size else k for k in keys}
    runs = [run_outputs(paths, key) for key in sorted(keys, key=attrgetter("order"))]
    runs = [r for r in runs if _has_any(r, paths)]
    figures = tuple(sorted((paths.paper() / "figures").glob("*.png")))
    tables = tuple(sorted((paths.paper() / "tables").glob("*.csv")))
    logger.debug("catalog of %s: %d runs, %d figures", root, len(runs), len(figures))
    return Catalog(root, tuple(runs), figures, tables)


def _has_any(r: RunOutputs, paths: Paths) -> bool:
    """A run directory can exist with nothing in it but a ``.gitignore`` (a fresh clone)."""
    k = r.key
    metrics = (
        paths.finetune_metrics(k.model, k.task, k.seed),
        paths.sae_metrics(k.model, k.task, k.seed),
        paths.features_metrics(k.model, k.task, k.seed),
        paths.features_csv(k.model, k.task, k.seed),
    )
    outputs = (r.finetuned, r.store, r.similarity, r.sae_units, r.features, r.crosscoder_layers)
    return any(outputs) or any(p.is_file() for p in metrics)
