"""finetune@<model>-<task>-<seed>: fine-tune the model on the task; PT-head and probe baselines."""

from __future__ import annotations

import logging
import tempfile

from layerwise import io, tracking
from layerwise.cli import parse_stage_args
from layerwise.config import ConfigError, section_dict
from layerwise.data import load_splits
from layerwise.models import check_max_length, load_config, load_tokenizer, pick_device
from layerwise.paths import Paths
from layerwise.runtime import quiet_libraries, setup_logging

logger = logging.getLogger("finetune")


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    quiet_libraries()
    args = parse_stage_args(__doc__, argv, task=True, model=True, seed=True)
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
        **{f"finetune.{k}": v for k, v in section_dict(p.finetune).items()},
        f"models.{args.model}.source": model_def.source,
        "seed": args.seed,
        "device": str(device),
    }
    tags = {"task": args.task, "model": args.model, "seed": args.seed}
    with tracking.start_stage_run(
        "finetune", args.item, p.mlflow.experiment, tags, root=args.root
    ) as run:
        run.log_params(used)
        with io.Staging() as staging, tempfile.TemporaryDirectory() as scratch:
            out_dir = staging.dir(paths.finetuned(args.model, args.task, args.seed))
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
            io.write_json(staging.file(paths.finetune_metrics(*args_key(args))), stable)
            curve = staging.file(paths.finetune_curve(*args_key(args)))
            io.write_csv(curve, result.curve)
            run.log_metrics(metrics)
            run.log_artifact(curve, "plots", name=paths.finetune_curve(*args_key(args)).name)
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


def args_key(args) -> tuple[str, str, int]:
    return args.model, args.task, args.seed


if __name__ == "__main__":
    main()
