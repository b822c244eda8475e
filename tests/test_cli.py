"""Stage arguments: which seeds a model may run, and the DVC stage an error tells a user to rerun
(size models have their own ``*_size`` stages)."""

from __future__ import annotations

import pytest
from conftest import REPO_PARAMS

from layerwise.cli import parse_stage_args
from layerwise.config import ConfigError, load_params

P = ["--params", str(REPO_PARAMS)]


def parse(*argv: str):
    return parse_stage_args(
        "test", [*argv, *P], task=True, model=True, seed=True, controls=("shuffled",)
    )


def test_full_protocol_model_names_its_stages() -> None:
    full = next(iter(load_params(REPO_PARAMS).models))
    args = parse("--model", full, "--task", "topic", "--seed", "2")
    assert args.stage_name("compare") == f"compare@{full}-topic-2"
    control = parse("--model", full, "--task", "topic", "--control", "shuffled")
    assert control.stage_name("finetune") == f"finetune_shuffled@{full}-topic"
    assert control.seed == load_params(REPO_PARAMS).seeds[0]
    assert control.task_stage_name("pt_store") == f"pt_store@{full}-topic"


def test_size_model_names_its_size_stages_and_trains_its_control_with_its_seed() -> None:
    p = load_params(REPO_PARAMS)
    size = next(iter(p.size_models))
    args = parse("--model", size, "--task", "rating", "--seed", "0")
    assert args.stage_name("finetune") == f"finetune_size@{size}-rating-0"
    control = parse("--model", size, "--task", "rating", "--control", "shuffled")
    assert control.stage_name("compare") == f"compare_shuffled_size@{size}-rating"
    assert control.seed == p.size_seeds[0]
    assert args.task_stage_name("pt_store") == f"pt_store_size@{size}-rating"


def test_size_model_refuses_a_seed_it_does_not_run() -> None:
    size = next(iter(load_params(REPO_PARAMS).size_models))
    with pytest.raises(ConfigError, match=r"seed 1 is not in size_seeds=\[0\]"):
        parse("--model", size, "--task", "rating", "--seed", "1")


def test_full_protocol_stages_refuse_a_size_model() -> None:
    """reset, seed_floor, sae_baseline and crosscoder run for `models` only: a size model run
    by hand is refused at once, naming the models they do run for."""
    p = load_params(REPO_PARAMS)
    size, full = next(iter(p.size_models)), next(iter(p.models))
    argv = ["--model", size, "--task", "rating", *P]
    with pytest.raises(ConfigError, match=rf"'{size}' is in size_models .* \['{full}'\]"):
        parse_stage_args("t", argv, task=True, model=True, seed=False, full_protocol=True)
    ok = parse_stage_args("t", argv, task=True, model=True, seed=False)
    assert ok.model == size and p.model_key(size) == f"size_models.{size}"
