"""features@<model>-<task>-<seed>: which SAE features change with fine-tuning, layer by layer:
top-variance features with texts and tokens, label selectivity, PT/FT dictionary overlap, token
maps and the generated qualitative table."""

from __future__ import annotations

import logging

import numpy as np

from layerwise import io
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.data import load_splits
from layerwise.paths import Paths

logger = logging.getLogger("features")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    key = args.key
    store_root = io.require(paths.activations(*key), f"compare@{args.item}")
    sae_root = io.require(paths.saes(*key), f"sae@{args.item}")
    splits = load_splits(paths.prepared(args.task))

    from layerwise.features_runner import LAYER_COLUMNS, analyse, summary_metrics
    from layerwise.models import load_config, load_tokenizer, num_layers
    from layerwise.plots import plot_token_maps

    tokenizer = load_tokenizer(model_def.source)
    n_model_layers = num_layers(load_config(model_def.source))
    analysis = splits["analysis"]
    label_names = list(analysis.features["label"].names)
    used = {
        **prefixed("features", p.features),
        f"models.{args.model}.layers": model_def.layers,
        "seed": args.seed,
    }
    with stage_run("features", args, used) as run:
        result = analyse(
            store_root,
            sae_root,
            model_def.layers,
            n_model_layers,
            list(analysis["text"]),
            np.asarray(analysis["label"]),
            label_names,
            tokenizer,
            p.features,
            args.seed,
        )
        metrics = summary_metrics(result)
        with io.Staging() as staging:
            io.write_json(staging.file(paths.features_json(*key)), result)
            io.write_csv(staging.file(paths.features_csv(*key)), result["layers"], LAYER_COLUMNS)
            io.write_json(staging.file(paths.features_metrics(*key)), metrics)
            maps = staging.dir(paths.token_maps(*key))
            io.write_json(maps / "token_maps.json", result["examples"])
            units = [f"{w}_L{layer}" for layer in model_def.layers for w in ("pt", "ft")]
            plot_token_maps(
                result["examples"],
                units,
                maps / "token_maps.png",
                title=f"{args.task}: top-feature activation per token ({args.model})",
                dpi=p.paper.dpi,
            )
            run.log_metrics(metrics)
            run.log_artifacts(maps, "token_maps")
        for row in result["layers"]:
            logger.info(
                "layer %d: MMCS %.3f (kept %.0f%%)  selectivity top-%d PT %.3f FT %.3f  "
                "selective frac PT %.3f FT %.3f",
                row["layer"],
                row["mmcs"],
                100 * row["kept_frac"],
                p.features.top_n,
                row["selectivity_top_pt"],
                row["selectivity_top_ft"],
                row["selective_frac_pt"],
                row["selective_frac_ft"],
            )
    return metrics

