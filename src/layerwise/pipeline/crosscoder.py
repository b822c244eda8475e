"""crosscoder@<model>-<task>-<seed> (and crosscoder_shuffled@<model>-<task>): model diffing with
one crosscoder per SAE layer on the paired PT / FT activation stores of the same tokens.

Per layer: train the crosscoder on the train store's paired rows, evaluate it on the analysis
store (FVU per model, L0, dead latents), class the latents PT-only / shared / FT-only by relative
decoder norm with Latent Scaling as the check on every "only", score each class's label
selectivity against a permutation null, and splice the FT reconstruction into the fine-tuned
classifier. The readout itself lives in :mod:`layerwise.pipeline.crosscoder_readout`; the
crosscoder library in :mod:`layerwise.sae.crosscoder`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise import io, splice
from layerwise.activations import ActivationStore
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import ConfigError, CrosscoderParams, ModelDef, section_dict
from layerwise.data import DataError, model_splits
from layerwise.features import text_feature_matrix
from layerwise.models import (
    autocast_dtype,
    check_layers,
    load_config,
    load_encoder,
    load_tokenizer,
    num_layers,
    pick_device,
)
from layerwise.paths import Paths
from layerwise.pipeline.crosscoder_readout import (
    PairedRows,
    SplitText,
    class_selectivity,
    latent_classes,
    latent_selectivity,
    paired_encoder,
    top_ft_only,
)
from layerwise.runtime import seed_everything
from layerwise.sae.crosscoder import Crosscoder, CrosscoderConfig, save_crosscoder
from layerwise.sae.crosscoder_analysis import evaluate_crosscoder
from layerwise.sae.crosscoder_train import CrosscoderTrainer, OnLog
from layerwise.sae.train import TrainConfig, estimate_scale_factor
from layerwise.schema import (
    CROSSCODER_CURVE_COLUMNS,
    CROSSCODER_HIST_BINS,
    CROSSCODER_LAYER_COLUMNS,
    unit_name,
)
from layerwise.tracking import StageRun

logger = logging.getLogger("crosscoder")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def crosscoder_width(params: CrosscoderParams, d_in: int) -> int:
    """Latents F for activations of width ``d_in``."""
    return max(1, round(params.expansion * d_in))


def check_crosscoder_params(params: CrosscoderParams, d_in: int) -> int:
    """The params against the store width (what params validation cannot know): fail before
    training, naming the value."""
    d_latent = crosscoder_width(params, d_in)
    if params.sparsity == "batchtopk" and params.k > d_latent:
        raise ConfigError(
            f"crosscoder.k={params.k} is above the number of latents {d_latent} "
            f"(crosscoder.expansion={params.expansion} x width {d_in})"
        )
    return d_latent


@dataclass(frozen=True)
class PairedStores:
    """The train and analysis activation stores of one run, and the analysis index."""

    train: ActivationStore
    analysis: ActivationStore

    @classmethod
    def open(cls, root: Path, layers: list[int]) -> PairedStores:
        """Both splits, every (PT|FT, layer) unit checked present before any is read."""
        stores = cls(*(ActivationStore.open(root, s) for s in ("train", "analysis")))
        for store in stores:
            for layer in layers:
                for which in ("pt", "ft"):
                    store.acts(unit_name(which, layer))
        return stores

    def __iter__(self):
        return iter((self.train, self.analysis))

    @property
    def dim(self) -> int:
        return int(self.train.meta["dim"])

    def pair(self, split: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The (PT, FT) ``[N, D]`` memmaps of ``split`` at ``layer``, row i the same token."""
        store = self.train if split == "train" else self.analysis
        return store.acts(unit_name("pt", layer)), store.acts(unit_name("ft", layer))


def analysis_split(
    prepared: Path, model: ModelDef, data_seed: int, n_store_texts: int
) -> SplitText:
    """The analysis split's texts and labels, and the PT tokenizer (same vocabulary as the
    stores' token ids); fails if the store was made from another split."""
    analysis = model_splits(prepared, model, data_seed)["analysis"]
    split = SplitText(
        texts=list(analysis["text"]),
        labels=np.asarray(analysis["label"]),
        label_names=list(analysis.features["label"].names),
        tokenizer=load_tokenizer(model.source),
    )
    if len(split.labels) != n_store_texts:
        raise DataError(
            f"analysis split has {len(split.labels)} texts but the activation store holds "
            f"{n_store_texts}: rerun compare"
        )
    return split


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


@dataclass
class LayerResult:
    """One layer's crosscoder and everything the outputs say about it."""

    layer: int
    crosscoder: Crosscoder
    row: dict[str, float]
    """The ``CROSSCODER_LAYER_COLUMNS`` row."""
    evaluation: dict[str, dict[str, float]]
    """Per model, the SAE metric keys on the analysis split."""
    hist: list[int]
    hist_all: list[int]
    top: list[dict[str, Any]]
    curve: list[dict[str, Any]]


def train_config(params: CrosscoderParams, seed: int, layer: int, device: Any) -> TrainConfig:
    """The trainer's settings from the ``crosscoder`` section; each layer's initial weights
    from its own seed, batch order from the run's."""
    init_seed = int(np.random.SeedSequence([seed, layer]).generate_state(1)[0])
    return TrainConfig(
        lr=params.learning_rate,
        batch_size=params.batch_size,
        max_tokens=params.train_tokens,
        warmup_steps=params.warmup_steps,
        lr_decay_ratio=params.lr_decay_ratio,
        seed=seed,
        init_seeds=[init_seed],
        device=device,
        progress=True,
        autocast_dtype=autocast_dtype(params.precision, device),
    )


def train_layer(
    stores: PairedStores,
    layer: int,
    params: CrosscoderParams,
    seed: int,
    device: Any,
    meta: dict[str, Any],
    on_log: OnLog | None = None,
) -> tuple[Crosscoder, list[dict[str, Any]]]:
    """The layer's crosscoder on the paired train rows (scale factors per model) and its
    training curve (``CROSSCODER_CURVE_COLUMNS`` rows)."""
    x_pt, x_ft = stores.pair("train", layer)
    cfg = CrosscoderConfig(
        d_in=x_pt.shape[1],
        d_latent=check_crosscoder_params(params, x_pt.shape[1]),
        sparsity=params.sparsity,
        k=params.k,
        l1_coefficient=params.l1_coefficient,
        scale_factor_pt=estimate_scale_factor(x_pt, seed=seed),
        scale_factor_ft=estimate_scale_factor(x_ft, seed=seed),
        metadata={**meta, "layer": layer},
    )
    config = train_config(params, seed, layer, device)
    cc, curve = CrosscoderTrainer(cfg, x_pt, x_ft, config, on_log=on_log).fit()
    return cc, [{**row, "layer": layer} for row in curve]


def analyse_layer(
    cc: Crosscoder,
    stores: PairedStores,
    layer: int,
    split: SplitText,
    params: CrosscoderParams,
    seed: int,
    device: Any,
) -> tuple[dict[str, Any], dict[str, dict[str, float]], Any]:
    """Quality, classes and selectivity of a trained crosscoder on the analysis split: the
    layer row's readout columns, the per-model evaluation, and (hist, hist_all, top)."""
    a_pt, a_ft = stores.pair("analysis", layer)
    ev = evaluate_crosscoder(cc, a_pt, a_ft, batch_size=params.eval_batch_size, device=device)
    lc = latent_classes(cc, a_pt, a_ft, ev.latent_freq, params, device)
    rows, encode = PairedRows(a_pt, a_ft), paired_encoder(cc)
    index = stores.analysis
    tf = text_feature_matrix(
        encode, rows, index.column("text_id"), index.n_texts, d_in=rows.shape[1]
    )
    n_classes = len(split.label_names)
    sel = latent_selectivity(
        tf.per_text, split.labels, n_classes, lc.alive, params.n_permutations, seed
    )
    top = top_ft_only(
        lc, sel, tf, encode, rows, index.column("token_id"), split, params.top_latents
    )
    readout = {
        "n_latents": cc.cfg.d_latent,
        "alive_frac": float(lc.alive.mean()),
        **lc.fractions(),
        "fvu_pt": ev.metrics["pt"]["fvu"],
        "fvu_ft": ev.metrics["ft"]["fvu"],
        "l0": ev.metrics["pt"]["l0"],
        "dead_frac": ev.metrics["pt"]["dead_frac"],
        **class_selectivity(sel, lc),
    }
    extras = (lc.histogram(alive_only=True), lc.histogram(alive_only=False), top)
    return readout, ev.metrics, extras


def run_layer(
    stores: PairedStores,
    layer: int,
    n_model_layers: int,
    split: SplitText,
    params: CrosscoderParams,
    seed: int,
    device: Any,
    meta: dict[str, Any],
    on_log: OnLog | None = None,
) -> LayerResult:
    """Train, evaluate and read one layer's crosscoder (``ft_recovered_accuracy`` still NaN:
    the splice runs after every layer is trained)."""
    cc, curve = train_layer(stores, layer, params, seed, device, meta, on_log)
    readout, evaluation, (hist, hist_all, top) = analyse_layer(
        cc, stores, layer, split, params, seed, device
    )
    row = {
        "layer": layer,
        "depth": layer / n_model_layers,
        **readout,
        "ft_recovered_accuracy": float("nan"),
    }
    return LayerResult(layer, cc.cpu(), row, evaluation, hist, hist_all, top, curve)


# --------------------------------------------------------------------------------------------
# FT-side splice
# --------------------------------------------------------------------------------------------


def crosscoder_replace(
    cc: Crosscoder, pt_states: list[dict[int, torch.Tensor]], layer: int
) -> splice.MakeReplace:
    """Per batch: replace the FT hidden state of every token by the crosscoder's FT
    reconstruction of the (PT, FT) pair, the PT state read from ``pt_states`` (the PT encoder's
    states of the same batch, :func:`layerwise.splice.record_states`); the crosscoder reads both
    models, so the FT side alone cannot be spliced."""

    def make(number: int, _batch: dict[str, torch.Tensor]) -> splice.Replace:
        pt_hidden = pt_states[number][layer]

        def replace(ft_hidden: torch.Tensor) -> torch.Tensor:
            shape, d = ft_hidden.shape, ft_hidden.shape[-1]
            latents = cc.encode(pt_hidden.reshape(-1, d), ft_hidden.reshape(-1, d))
            return cc.decode(latents)[1].reshape(shape)

        return replace

    return make


def splice_layers(
    args: StageArgs, ft_dir: Path, results: list[LayerResult], device: Any
) -> dict[str, Any]:
    """Fill each row's ``ft_recovered_accuracy``: the share of the FT classifier's val accuracy
    kept when the layer's FT hidden state is replaced by the crosscoder's FT reconstruction,
    relative to mean-ablating the layer (:mod:`layerwise.splice`), scored under the fine-tune
    stage's autocast. Returns the clean accuracy and every layer's ``schema.SAE_SPLICE_KEYS``
    (with the bootstrap CIs) for the JSON."""
    p = args.params
    val_split = model_splits(Paths(args.root).prepared(args.task), p.model(args.model), p.seed)[
        "val"
    ]
    layers = [r.layer for r in results]
    base = splice.CleanRun.load(ft_dir, val_split, p.finetune, layers, device)
    pt_encoder = load_encoder(p.model(args.model).source).to(device).eval()
    pt_states = splice.record_states(pt_encoder, base.val, layers, base.dtype)
    del pt_encoder
    out: dict[str, Any] = {"ft_accuracy_clean": base.scores.accuracy, "layers": {}}
    for r in results:
        cc = r.crosscoder.to(device)
        spliced = base.scores_with(r.layer, crosscoder_replace(cc, pt_states, r.layer))
        r.crosscoder = cc.cpu()
        m = splice.splice_metrics(
            base.scores,
            spliced,
            base.ablated(r.layer),
            p.compare.n_boot,
            args.seed,
            p.compare.confidence,
        )
        r.row["ft_recovered_accuracy"] = m["ft_recovered_accuracy"]
        out["layers"][str(r.layer)] = m
    return out


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def result_json(results: list[LayerResult], params: CrosscoderParams) -> dict[str, Any]:
    """``crosscoder.json``: the layer rows, relative-norm histograms (alive latents and all),
    the top FT-only latents per layer and the thresholds behind the classes."""
    return {
        "layers": [r.row for r in results],
        "hist": {str(r.layer): r.hist for r in results},
        "hist_all": {str(r.layer): r.hist_all for r in results},
        "top_ft_only": {str(r.layer): r.top for r in results},
        "thresholds": {
            "pt_only_below": params.pt_only_below,
            "ft_only_above": params.ft_only_above,
            "scaling_max_ratio": params.scaling_max_ratio,
            "hist_bins": CROSSCODER_HIST_BINS,
            "n_permutations": params.n_permutations,
        },
    }


def summary_metrics(results: list[LayerResult]) -> dict[str, float]:
    """Flat ``L<layer>/<column>`` keys for DVC metrics and MLflow."""
    return {
        f"L{r.layer}/{key}": float(r.row[key])
        for r in results
        for key in CROSSCODER_LAYER_COLUMNS[2:]
    }


def write_outputs(
    run: StageRun, args: StageArgs, results: list[LayerResult], spliced: dict[str, Any]
) -> dict:
    """Every crosscoder folder, the result JSON and CSV, the metrics and the curve, staged and
    committed together; metrics and curve go to MLflow before the commit."""
    paths, params = Paths(args.root), args.params.crosscoder
    metrics = summary_metrics(results)
    with io.Staging() as staging:
        root = staging.dir(paths.crosscoders(*args.key))
        for r in results:
            extra = {
                "params": section_dict(params),
                "eval": r.evaluation,
                "readout": r.row,
                "splice": spliced["layers"][str(r.layer)],
            }
            save_crosscoder(r.crosscoder, root / f"L{r.layer}", extra=extra)
        result = {**result_json(results, params), "splice": spliced}
        io.write_json(staging.file(paths.crosscoder_json(*args.key)), result)
        rows = [r.row for r in results]
        io.write_csv(staging.file(paths.crosscoder_csv(*args.key)), rows, CROSSCODER_LAYER_COLUMNS)
        io.write_json(staging.file(paths.crosscoder_metrics(*args.key)), metrics)
        curve = staging.file(paths.crosscoder_curve(*args.key))
        io.write_csv(curve, [c for r in results for c in r.curve], list(CROSSCODER_CURVE_COLUMNS))
        run.log_metrics(metrics)
        run.log_artifact(curve, "plots", name=paths.crosscoder_curve(*args.key).name)
    return metrics


def log_summary(results: list[LayerResult]) -> None:
    for r in results:
        row = r.row
        logger.info(
            "layer %d: FVU PT %.3f FT %.3f  L0 %.1f  alive %.0f%%  PT-only %.3f shared %.3f "
            "FT-only %.3f (artefacts %.3f)  selectivity excess shared %.3f FT-only %.3f  "
            "recovered acc %.3f",
            r.layer,
            *(row[k] for k in ("fvu_pt", "fvu_ft", "l0")),
            100 * row["alive_frac"],
            *(
                row[k]
                for k in (
                    "pt_only_frac",
                    "shared_frac",
                    "ft_only_frac",
                    "ft_only_artefact_frac",
                    "selectivity_excess_shared",
                    "selectivity_excess_ft_only",
                    "ft_recovered_accuracy",
                )
            ),
        )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def curve_logger(run: StageRun, layer: int) -> OnLog:
    """``on_log`` for the trainer: the layer's loss, MSE and L0 as MLflow step metrics."""

    def log_curve(step: int, row: dict[str, float]) -> None:
        run.log_metrics(
            {f"train/L{layer}/{k}": row[k] for k in ("loss", "mse_loss", "l0")}, step=step
        )

    return log_curve


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    layers = model_def.layers
    store_root = args.require_store()
    ft_dir = io.require(paths.finetuned(*args.key), args.stage_name("finetune"))
    stores = PairedStores.open(store_root, layers)
    check_crosscoder_params(p.crosscoder, stores.dim)
    pt_config = load_config(model_def.source)
    check_layers(layers, pt_config, f"{p.model_key(args.model)}.layers")
    split = analysis_split(paths.prepared(args.task), model_def, p.seed, stores.analysis.n_texts)
    device = pick_device(p.device)
    used = {
        **prefixed("crosscoder", p.crosscoder),
        f"{p.model_key(args.model)}.layers": layers,
        f"{p.model_key(args.model)}.source": model_def.source,
        "finetune.max_length": p.finetune.max_length,
        "finetune.eval_batch_size": p.finetune.eval_batch_size,
        "finetune.precision": p.finetune.precision,
        "compare.n_boot": p.compare.n_boot,
        "compare.confidence": p.compare.confidence,
        "seed": args.seed,
        "device": str(device),
    }
    with stage_run("crosscoder", args, used) as run:
        seed_everything(args.seed, device)
        meta = {"model": args.model, "task": args.task, "run": args.run}
        results = [
            run_layer(
                stores,
                layer,
                num_layers(pt_config),
                split,
                p.crosscoder,
                args.seed,
                device,
                meta,
                on_log=curve_logger(run, layer),
            )
            for layer in layers
        ]
        spliced = splice_layers(args, ft_dir, results, device)
        metrics = write_outputs(run, args, results, spliced)
        log_summary(results)
    return metrics
