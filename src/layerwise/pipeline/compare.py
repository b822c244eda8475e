"""compare@<model>-<task>-<seed>: layer-wise PT vs FT similarity (cosine, CKA, probes, CIs) and
activation stores of the SAE layers."""

from __future__ import annotations

import logging

from layerwise import io
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.data import load_splits
from layerwise.models import (
    check_layers,
    check_max_length,
    load_config,
    load_tokenizer,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.runtime import seed_everything

logger = logging.getLogger("compare")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    ft_dir = io.require(paths.finetuned(*args.key), f"finetune@{args.item}")
    pt_config, ft_config = load_config(model_def.source), load_config(str(ft_dir))
    check_layers(model_def.layers, pt_config, f"models.{args.model}.layers")
    pt_tok, ft_tok = load_tokenizer(model_def.source), load_tokenizer(str(ft_dir))
    check_max_length(p.finetune.max_length, pt_config, pt_tok, "finetune.max_length")

    from layerwise.activations import PairedEncoders
    from layerwise.compare import CI_METHODS, LAYER_COLUMNS, check_pair, run_compare
    from layerwise.models import load_encoder

    check_pair(pt_tok, ft_tok, pt_config, ft_config)
    splits = load_splits(paths.prepared(args.task))
    device = pick_device()
    used = {
        **prefixed("compare", p.compare),
        f"models.{args.model}.layers": model_def.layers,
        "finetune.max_length": p.finetune.max_length,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("compare", args, used) as run:
        seed_everything(args.seed)
        encoders = PairedEncoders(
            load_encoder(model_def.source).to(device), load_encoder(str(ft_dir)).to(device), device
        )
        with io.Staging() as staging:
            store = staging.dir(paths.activations(*args.key))
            result = run_compare(
                encoders,
                pt_tok,
                splits,
                model_def.layers,
                p.compare,
                p.finetune.max_length,
                args.seed,
                store,
            )
            summary = {
                **result.summary,
                "store/n_tokens_analysis": result.n_tokens_analysis,
                "store/n_tokens_train": result.n_tokens_train,
            }
            io.write_json(
                staging.file(paths.similarity_json(*args.key)),
                {**summary, "ci_methods": CI_METHODS, "confidence": p.compare.confidence},
            )
            csv_path = staging.file(paths.similarity_csv(*args.key))
            io.write_csv(csv_path, result.layers, LAYER_COLUMNS)
            run.log_metrics(summary)
            for row in result.layers:
                run.log_metrics(
                    {k: row[k] for k in ("cosine", "cka", "probe_pt", "probe_ft")},
                    step=row["layer"],
                )
            run.log_artifact(csv_path, "similarity", name="similarity.csv")
        for row in result.layers:
            logger.info(
                "layer %d: cosine %.3f [%.3f, %.3f]  CKA %.3f [%.3f, %.3f]  probe PT %.3f FT %.3f",
                row["layer"],
                row["cosine"],
                row["cosine_lo"],
                row["cosine_hi"],
                row["cka"],
                row["cka_lo"],
                row["cka_hi"],
                row["probe_pt"],
                row["probe_ft"],
            )
    return summary

