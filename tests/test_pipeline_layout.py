"""dvc.yaml agrees with the code: declared paths are layerwise.paths.Paths, declared params
exist in params.yaml, and every stage script and dependency exists.

When you add a stage to dvc.yaml, add each of its output path templates to PATH_TEMPLATES.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_PARAMS, REPO_ROOT

from layerwise.paths import Paths

DVC_YAML = REPO_ROOT / "dvc.yaml"
OUTPUT_KINDS = ("outs", "metrics", "plots")

# dvc.yaml path template -> the Paths method that must give the same path for the same item.
# ``item`` is the stage's foreach value (a task key) or its matrix dict (model, task, seed).
PATH_TEMPLATES: dict[str, Callable[[Paths, Any], Path]] = {
    "data/prepared/${item}": lambda p, item: p.prepared(item),
    "metrics/prepare/${item}.json": lambda p, item: p.prepare_metrics(item),
    "models/${item.model}/${item.task}/ft/s${item.seed}": lambda p, i: p.finetuned(**i),
    "models/${item.model}/${item.task}/shuffled/ft": lambda p, i: p.finetuned(**i, seed="shuffled"),
    "metrics/finetune/${item.model}/${item.task}/shuffled.json": (
        lambda p, i: p.finetune_metrics(**i, seed="shuffled")
    ),
    "plots/finetune/${item.model}/${item.task}/shuffled.csv": (
        lambda p, i: p.finetune_curve(**i, seed="shuffled")
    ),
    "data/activations/${item.model}/${item.task}/shuffled": (
        lambda p, i: p.activations(**i, seed="shuffled")
    ),
    "results/${item.model}/${item.task}/shuffled/similarity.json": (
        lambda p, i: p.similarity_json(**i, seed="shuffled")
    ),
    "results/${item.model}/${item.task}/shuffled/similarity.csv": (
        lambda p, i: p.similarity_csv(**i, seed="shuffled")
    ),
    "results/${item.model}/${item.task}/s${item.seed}/reset.json": lambda p, i: p.reset_json(**i),
    "results/${item.model}/${item.task}/s${item.seed}/reset.csv": lambda p, i: p.reset_csv(**i),
    "results/${item.model}/${item.task}/seed_floor.json": lambda p, i: p.seed_floor_json(**i),
    "results/${item.model}/${item.task}/seed_floor.csv": lambda p, i: p.seed_floor_csv(**i),
    "metrics/finetune/${item.model}/${item.task}/s${item.seed}.json": (
        lambda p, i: p.finetune_metrics(**i)
    ),
    "plots/finetune/${item.model}/${item.task}/s${item.seed}.csv": (
        lambda p, i: p.finetune_curve(**i)
    ),
    "data/activations/${item.model}/${item.task}/s${item.seed}": lambda p, i: p.activations(**i),
    "data/activations/${item.model}/${item.task}/pt": lambda p, i: p.pt_activations(**i),
    "metrics/pt_store/${item.model}/${item.task}.json": lambda p, i: p.pt_store_metrics(**i),
    "results/${item.model}/${item.task}/s${item.seed}/similarity.json": (
        lambda p, i: p.similarity_json(**i)
    ),
    "results/${item.model}/${item.task}/s${item.seed}/similarity.csv": (
        lambda p, i: p.similarity_csv(**i)
    ),
    "results/${item.model}/${item.task}/sae_baseline.json": lambda p, i: p.sae_baseline_json(**i),
    "results/${item.model}/${item.task}/sae_baseline.csv": lambda p, i: p.sae_baseline_csv(**i),
    "models/${item.model}/${item.task}/s${item.seed}/crosscoder": (lambda p, i: p.crosscoders(**i)),
    "results/${item.model}/${item.task}/s${item.seed}/crosscoder.json": (
        lambda p, i: p.crosscoder_json(**i)
    ),
    "results/${item.model}/${item.task}/s${item.seed}/crosscoder.csv": (
        lambda p, i: p.crosscoder_csv(**i)
    ),
    "metrics/crosscoder/${item.model}/${item.task}/s${item.seed}.json": (
        lambda p, i: p.crosscoder_metrics(**i)
    ),
    "plots/crosscoder/${item.model}/${item.task}/s${item.seed}.csv": (
        lambda p, i: p.crosscoder_curve(**i)
    ),
    "models/${item.model}/${item.task}/shuffled/crosscoder": (
        lambda p, i: p.crosscoders(**i, seed="shuffled")
    ),
    "results/${item.model}/${item.task}/shuffled/crosscoder.json": (
        lambda p, i: p.crosscoder_json(**i, seed="shuffled")
    ),
    "results/${item.model}/${item.task}/shuffled/crosscoder.csv": (
        lambda p, i: p.crosscoder_csv(**i, seed="shuffled")
    ),
    "metrics/crosscoder/${item.model}/${item.task}/shuffled.json": (
        lambda p, i: p.crosscoder_metrics(**i, seed="shuffled")
    ),
    "plots/crosscoder/${item.model}/${item.task}/shuffled.csv": (
        lambda p, i: p.crosscoder_curve(**i, seed="shuffled")
    ),
    "models/${item.model}/${item.task}/s${item.seed}/sae": lambda p, i: p.saes(**i),
    "metrics/sae/${item.model}/${item.task}/s${item.seed}.json": lambda p, i: p.sae_metrics(**i),
    "plots/sae/${item.model}/${item.task}/s${item.seed}.csv": lambda p, i: p.sae_curve(**i),
    "results/${item.model}/${item.task}/s${item.seed}/features.json": (
        lambda p, i: p.features_json(**i)
    ),
    "results/${item.model}/${item.task}/s${item.seed}/features.csv": (
        lambda p, i: p.features_csv(**i)
    ),
    "results/${item.model}/${item.task}/s${item.seed}/token_maps": lambda p, i: p.token_maps(**i),
    "metrics/features/${item.model}/${item.task}/s${item.seed}.json": (
        lambda p, i: p.features_metrics(**i)
    ),
    "paper": lambda p, _: p.paper(),
    "metrics/paper.json": lambda p, _: p.paper_metrics(),
}

_VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def lookup(context: dict[str, Any], dotted: str) -> Any:
    node: Any = context
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def interpolate(value: Any, context: dict[str, Any]) -> Any:
    """DVC-style ``${a.b}`` substitution in strings, lists and dicts (keys included)."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return lookup(context, whole.group(1))
        return _VAR.sub(lambda m: str(lookup(context, m.group(1))), value)
    if isinstance(value, list):
        return [interpolate(v, context) for v in value]
    if isinstance(value, dict):
        return {interpolate(k, context): interpolate(v, context) for k, v in value.items()}
    return value


def entry_path(entry: str | dict[str, Any]) -> str:
    """A deps/outs/metrics/plots entry is a path or ``{path: {options}}``."""
    return entry if isinstance(entry, str) else next(iter(entry))


def stage_items(stage: dict[str, Any], params: dict[str, Any]) -> list[Any]:
    """The values ``${item}`` takes in a stage (``[None]`` for a plain stage)."""
    if "foreach" in stage:
        items = interpolate(stage["foreach"], params)
        return list(items) if isinstance(items, list | dict) else [items]
    if "matrix" in stage:
        axes = {k: interpolate(v, params) for k, v in stage["matrix"].items()}
        axes = {k: list(v) if isinstance(v, dict) else v for k, v in axes.items()}
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    return [None]


def expand(dvc: dict[str, Any], params: dict[str, Any]) -> Iterator[tuple[str, Any, dict, dict]]:
    """Every concrete stage: (name, item, raw definition, definition with item substituted)."""
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for item in stage_items(stage, params):
            context = {**params, "item": item} if item is not None else params
            yield name, item, body, interpolate(body, context)


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


@pytest.fixture(scope="module")
def dvc() -> dict[str, Any]:
    return yaml.safe_load(DVC_YAML.read_text())


@pytest.fixture(scope="module")
def stages(dvc: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, Any, dict, dict]]:
    expanded = list(expand(dvc, params))
    assert expanded, "dvc.yaml declares no stages"
    return expanded


def test_prepare_runs_for_every_task(stages, params: dict[str, Any]) -> None:
    """prepare expands to exactly one stage per task in params (foreach over tasks)."""
    items = [item for name, item, _, _ in stages if name == "prepare"]
    assert items == params["tasks"]


def test_declared_outputs_are_paths_methods(stages) -> None:
    """Every outs/metrics/plots template is known here, and for every item it is exactly the
    path Paths gives (relative to the repo root)."""
    paths = Paths(".")
    for name, item, raw, concrete in stages:
        for kind in OUTPUT_KINDS:
            for template, entry in zip(raw.get(kind, []), concrete.get(kind, []), strict=True):
                template = entry_path(template)
                assert template in PATH_TEMPLATES, (
                    f"stage {name}: {kind} path {template!r} has no Paths method in "
                    "PATH_TEMPLATES (add one to layerwise/paths.py and to this test)"
                )
                expected = PATH_TEMPLATES[template](paths, item)
                assert Path(entry_path(entry)) == expected, (name, item, template)


def test_path_templates_are_all_declared(stages) -> None:
    """No stale entries: every template in PATH_TEMPLATES is declared by some stage."""
    declared = {
        entry_path(e) for _, _, raw, _ in stages for kind in OUTPUT_KINDS for e in raw.get(kind, [])
    }
    assert set(PATH_TEMPLATES) <= declared


def test_outputs_are_unique(stages) -> None:
    """No two concrete stages write the same path (DVC would refuse the pipeline)."""
    seen: dict[str, str] = {}
    for name, item, _, concrete in stages:
        for kind in OUTPUT_KINDS:
            for entry in concrete.get(kind, []):
                path = entry_path(entry)
                assert path not in seen, f"{path} written by {seen[path]} and {name}@{item}"
                seen[path] = f"{name}@{item}"


def test_declared_params_exist(stages, params: dict[str, Any]) -> None:
    """Every params key a stage lists exists in params.yaml (after ${item} substitution)."""
    for name, item, _, concrete in stages:
        for entry in concrete.get("params", []):
            keys = [entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]
            for key in keys:
                try:
                    lookup(params, key)
                except (KeyError, IndexError, TypeError):
                    pytest.fail(f"stage {name}@{item}: params key {key!r} not in params.yaml")


def test_stage_scripts_exist_and_are_deps(stages) -> None:
    """Every stages/*.py named in a cmd exists, and is listed in that stage's deps."""
    for name, _, _, concrete in stages:
        cmds = concrete["cmd"] if isinstance(concrete["cmd"], list) else [concrete["cmd"]]
        scripts = [s for cmd in cmds for s in re.findall(r"stages/[\w/]+\.py", cmd)]
        assert scripts, f"stage {name}: cmd runs no stages/*.py script"
        deps = {entry_path(d) for d in concrete.get("deps", [])}
        for script in scripts:
            assert (REPO_ROOT / script).is_file(), f"stage {name}: {script} does not exist"
            assert script in deps, f"stage {name}: {script} is not in its deps"


def test_stage_cmd_passes_its_item(stages) -> None:
    """A foreach/matrix stage passes each of its item's values to its script (--task etc.)."""
    for name, item, _, concrete in stages:
        values = [] if item is None else [item] if not isinstance(item, dict) else item.values()
        for value in values:
            assert re.search(rf"[\s=]{re.escape(str(value))}(\s|$)", concrete["cmd"]), (name, item)


def test_deps_exist_or_are_produced(stages) -> None:
    """Every dep is a file in the repo or an output some stage declares."""
    produced = {
        Path(entry_path(e))
        for _, _, _, c in stages
        for kind in OUTPUT_KINDS
        for e in c.get(kind, [])
    }
    for name, item, _, concrete in stages:
        for dep in concrete.get("deps", []):
            path = Path(entry_path(dep))
            made = any(
                path == out or out in path.parents or path in out.parents for out in produced
            )
            assert made or (REPO_ROOT / path).exists(), f"stage {name}@{item}: dep {path} missing"
