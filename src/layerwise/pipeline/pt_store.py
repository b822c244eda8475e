"""pt_store@<model>-<task>: the PT half of every run's activation stores, computed once.

The pre-trained encoder does not depend on the fine-tuning seed or the control, so its token
activations of the SAE layers are stored once per (model, task), on the tokens every run's
store holds (:func:`layerwise.activations.plan_stores`), and each run's compare store links to
them. Three seeds and the shuffled-label control then run the PT encoder over the SAE training
texts once instead of four times, and store its activations once.
"""

from __future__ import annotations

import logging

from layerwise import io
from layerwise.activations import PairedEncoders, plan_stores, write_plan
from layerwise.cli import StageArgs, stage_run
from layerwise.data import model_splits
from layerwise.models import (
    check_layers,
    check_max_length,
    load_config,
    load_tokenizer,
    pick_device,
)
from layerwise.paths import Paths

logger = logging.getLogger("pt_store")


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    config, tokenizer = load_config(model_def.source), load_tokenizer(model_def.source)
    check_layers(model_def.layers, config, f"{p.model_key(args.model)}.layers")
    check_max_length(p.finetune.max_length, config, tokenizer, "finetune.max_length")
    # Looked up at call time, so the bad-input tests can make model loading fail loudly.
    from layerwise.models import load_encoder

    splits = model_splits(paths.prepared(args.task), model_def, p.seed)
    device = pick_device(p.device)
    used = {
        f"{p.model_key(args.model)}.layers": model_def.layers,
        "finetune.max_length": p.finetune.max_length,
        "compare.batch_size": p.compare.batch_size,
        "compare.token_budget": p.compare.token_budget,
        "seed": p.seed,
        "device": str(device),
    }
    with stage_run("pt_store", args, used) as tracked:
        plan = plan_stores(
            tokenizer,
            splits,
            p.finetune.max_length,
            p.compare.batch_size,
            p.compare.token_budget,
            p.seed,
        )
        encoders = PairedEncoders(load_encoder(model_def.source).to(device), None, device)
        with io.Staging() as staging:
            store = staging.dir(paths.pt_activations(args.model, args.task))
            n_analysis, n_train = write_plan(encoders, plan, model_def.layers, store, ("pt",))
            metrics = {"store/n_tokens_analysis": n_analysis, "store/n_tokens_train": n_train}
            io.write_json(staging.file(paths.pt_store_metrics(args.model, args.task)), metrics)
            # Logged before the outputs are committed: a tracking store that fails leaves them
            # as they were.
            tracked.log_metrics(metrics)
    logger.info("PT store: %d analysis and %d train tokens", n_analysis, n_train)
    return metrics
