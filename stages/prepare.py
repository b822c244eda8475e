"""prepare@<task>: load the task's source, clean, split, save; metrics: rows and token lengths."""

from __future__ import annotations

import logging

from layerwise import data, io, tracking
from layerwise.cli import parse_stage_args
from layerwise.config import section_dict
from layerwise.models import load_tokenizer
from layerwise.paths import Paths
from layerwise.runtime import quiet_libraries, setup_logging

logger = logging.getLogger("prepare")


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    quiet_libraries()
    args = parse_stage_args(__doc__, argv, task=True, model=False, seed=False)
    p, key = args.params, args.task
    task = p.task(key)
    paths = Paths(args.root)
    used = {
        "seed": p.seed,
        **{f"task_defs.{key}.{k}": v for k, v in section_dict(task).items()},
        **{f"data.{k}": v for k, v in section_dict(p.data).items()},
    }
    with tracking.start_stage_run(
        "prepare", key, p.mlflow.experiment, {"task": key}, root=args.root
    ) as run:
        run.log_params(used)
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


if __name__ == "__main__":
    main()
