"""sae@<model>-<task>-<seed>: sparse autoencoders on the early/middle/late layers of the PT and
FT models, judged by MSE, explained variance, L0, dead/dense fractions and spliced accuracy."""

from __future__ import annotations

import logging

from layerwise import io
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import section_dict
from layerwise.data import load_splits
from layerwise.paths import Paths
from layerwise.runtime import seed_everything
from layerwise.tracking import git_commit

logger = logging.getLogger("sae")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    made_by = f"compare@{args.item}"
    store_root = io.require(paths.activations(*args.key), made_by)
    ft_dir = io.require(paths.finetuned(*args.key), f"finetune@{args.item}")

    from layerwise.activations import ActivationStore
    from layerwise.models import (
        check_layers,
        check_max_length,
        load_classifier,
        load_config,
        load_tokenizer,
        pick_device,
    )
    from layerwise.sae import save_sae
    from layerwise.sae_runner import (
        METRIC_KEYS,
        check_sae_params,
        spliced_accuracy,
        train_and_evaluate,
    )

    store = ActivationStore.open(store_root, "train")
    check_sae_params(p.sae, int(store.meta["dim"]))
    ft_config = load_config(str(ft_dir))
    check_layers(model_def.layers, ft_config, f"models.{args.model}.layers")
    check_max_length(
        p.finetune.max_length, ft_config, load_tokenizer(str(ft_dir)), "finetune.max_length"
    )
    device = pick_device()
    used = {
        **prefixed("sae", p.sae),
        f"models.{args.model}.layers": model_def.layers,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("sae", args, used) as run:
        seed_everything(args.seed)

        def log_curve(step: int, rows: list[dict]) -> None:
            for i, row in enumerate(rows):
                run.log_metrics(
                    {
                        f"train/{k}/{i}": v
                        for k, v in row.items()
                        if k in ("loss", "mse_loss", "l0")
                    },
                    step=step,
                )

        meta = {
            "model": args.model,
            "task": args.task,
            "seed": args.seed,
            "git_commit": git_commit(args.root),
        }
        result = train_and_evaluate(
            store_root, model_def.layers, p.sae, args.seed, device, on_log=log_curve, meta=meta
        )
        metrics = dict(result.metrics)
        splits = load_splits(paths.prepared(args.task))
        texts, labels = list(splits["val"]["text"]), splits["val"]["label"]
        classifier = load_classifier(str(ft_dir)).to(device).eval()
        tokenizer = load_tokenizer(str(ft_dir))
        kwargs = dict(
            max_length=p.finetune.max_length, batch_size=p.finetune.eval_batch_size, device=device
        )
        import numpy as np

        labels = np.asarray(labels)
        metrics["ft/accuracy_clean"] = spliced_accuracy(
            classifier, tokenizer, texts, labels, 0, None, **kwargs
        )
        for layer in model_def.layers:
            name = f"ft_L{layer}"
            metrics[f"{name}/ft_accuracy_spliced"] = (
                spliced_accuracy(
                    classifier, tokenizer, texts, labels, layer, result.saes[name], **kwargs
                )
                if p.sae.pooling == "token"
                else float("nan")
            )
        with io.Staging() as staging:
            sae_root = staging.dir(paths.saes(*args.key))
            for name, sae in result.saes.items():
                save_sae(
                    sae.cpu(),
                    sae_root / name,
                    extra={
                        "params": section_dict(p.sae),
                        "eval": {k: metrics[f"{name}/{k}"] for k in METRIC_KEYS},
                    },
                )
            io.write_json(staging.file(paths.sae_metrics(*args.key)), metrics)
            curve = staging.file(paths.sae_curve(*args.key))
            io.write_csv(curve, result.curve)
            run.log_metrics(metrics)
            run.log_artifact(curve, "plots", name=paths.sae_curve(*args.key).name)
        for name in result.saes:
            logger.info(
                "%s: FVU %.3f  L0 %.1f  dead %.1f%%  dense %.1f%%%s",
                name,
                metrics[f"{name}/fvu"],
                metrics[f"{name}/l0"],
                100 * metrics[f"{name}/dead_frac"],
                100 * metrics[f"{name}/dense_frac"],
                f"  spliced acc {metrics[f'{name}/ft_accuracy_spliced']:.3f} "
                f"(clean {metrics['ft/accuracy_clean']:.3f})"
                if name.startswith("ft")
                else "",
            )
    return metrics

