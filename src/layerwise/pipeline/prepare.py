"""prepare@<task>: load the task's source, clean, split, save; metrics: rows and token lengths."""

from __future__ import annotations

import logging

from layerwise import data, io
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.models import load_tokenizer
from layerwise.paths import Paths

logger = logging.getLogger("prepare")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, key = args.params, args.task
    task = p.task(key)
    paths = Paths(args.root)
    used = {"seed": p.seed, **prefixed(f"task_defs.{key}", task), **prefixed("data", p.data)}
    with stage_run("prepare", args, used) as run:
        dataset = data.build_dataset(task, p.data.min_chars, key)
        splits = data.stratified_splits(dataset, task, p.seed, key)
        tokenizer = load_tokenizer(p.model(p.stats_model_key).source)
        metrics = {
            "texts": len(dataset),
            "classes": len(dataset.features["label"].names),
            **data.split_stats(splits, tokenizer),
        }
        with io.Staging() as staging:
            splits.save_to_disk(str(staging.dir(paths.prepared(key))))
            io.write_json(staging.file(paths.prepare_metrics(key)), metrics)
            run.log_metrics(metrics)
        logger.info("prepared %s: %s", key, {s: len(splits[s]) for s in data.SPLITS})
    return metrics
