"""finetune@<model>-<task>-<seed>: fine-tune the model on the task; PT-head and probe baselines."""

from __future__ import annotations

import logging
import tempfile

from layerwise import io
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import ConfigError
from layerwise.data import load_splits
from layerwise.models import check_max_length, load_config, load_tokenizer, pick_device
from layerwise.paths import Paths

logger = logging.getLogger("finetune")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def, task_def = p.model(args.model), p.task(args.task)
    # Everything cheap that can be wrong is checked before any training.
    config = load_config(model_def.source)
    tokenizer = load_tokenizer(model_def.source)
    check_max_length(p.finetune.max_length, config, tokenizer, "finetune.max_length")
    splits = load_splits(paths.prepared(args.task))
    names = splits["train"].features["label"].names
    if len(set(splits["train"]["label"])) < 2:
        raise ConfigError(f"task {args.task!r}: the train split holds one class only ({names})")

    from layerwise.finetune import finetune

    device = pick_device()
    used = {
        **prefixed("finetune", p.finetune),
        f"models.{args.model}.source": model_def.source,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("finetune", args, used) as run:
        with io.Staging() as staging, tempfile.TemporaryDirectory() as scratch:
            out_dir = staging.dir(paths.finetuned(*args.key))
            result = finetune(
                model_def.source,
                splits,
                p.finetune,
                args.seed,
                out_dir,
                ordinal=task_def.labels.kind == "bins",
                device=device,
                on_log=lambda metrics, step: run.log_metrics(metrics, step=step),
                work_dir=scratch,
            )
            metrics = result.metrics
            # Timings go to MLflow only: DVC metrics files must be byte-identical across reruns.
            stable = {k: v for k, v in metrics.items() if not k.startswith("speed/")}
            io.write_json(
                out_dir / "eval.json",
                {"label_names": names, "confusion_val": result.confusion, "metrics": stable},
            )
            io.write_json(staging.file(paths.finetune_metrics(*args.key)), stable)
            curve = staging.file(paths.finetune_curve(*args.key))
            io.write_csv(curve, result.curve)
            run.log_metrics(metrics)
            run.log_artifact(curve, "plots", name=paths.finetune_curve(*args.key).name)
        logger.info(
            "%s: val accuracy PT head %.3f, PT probe %.3f, FT %.3f (macro-F1 %.3f) in %.0f s",
            args.item,
            metrics["pt_head/accuracy"],
            metrics["pt_probe/accuracy"],
            metrics["ft/accuracy"],
            metrics["ft/macro_f1"],
            metrics["speed/train_s"],
        )
    return stable  # what the DVC metrics file holds

