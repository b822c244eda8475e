"""Every column list and metric-key set that one stage writes and another reads.

Writers and readers import these names from here, so a figure can never silently lose a column:
renaming one is a change in one place, and the tests assert each file's exact key set.
Nothing here imports another ``layerwise`` module, so depending on it costs a stage nothing.
"""

from __future__ import annotations

STAGES = ("prepare", "finetune", "compare", "sae", "crosscoder", "features")
"""Stages that run per (model, task, seed) before ``paper`` (``prepare`` per task only)."""
CONTROLS = ("shuffled",)
"""Control runs: ``shuffled`` is a fine-tune on the same texts with labels permuted within the
train split (seeded by ``seed``), trained with the model's first seed (``seeds``, or
``size_seeds`` for a size model)."""

# finetune@<model>-<task>-<seed>
FINETUNE_KEYS = (
    "ft/accuracy",
    "ft/macro_f1",
    "pt_head/accuracy",
    "pt_head/macro_f1",
    "pt_probe/accuracy",
    "pt_probe/macro_f1",
    "data/majority_accuracy",
)
"""Keys of the finetune metrics file that the paper reads (the file holds more)."""
FINETUNE_CURVE_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy")

# compare@<model>-<task>-<seed>
SIMILARITY_COLUMNS = (
    "layer",
    "depth",
    "cosine",
    "cosine_lo",
    "cosine_hi",
    "cka",
    "cka_lo",
    "cka_hi",
    "probe_pt",
    "probe_pt_lo",
    "probe_pt_hi",
    "probe_ft",
    "probe_ft_lo",
    "probe_ft_hi",
    "probe_diff",
    "probe_diff_lo",
    "probe_diff_hi",
    "n_tokens",
)
"""similarity.csv: one row per layer 0..L (``probe_diff`` = FT minus PT probe accuracy, paired
bootstrap CI over texts)."""
SIMILARITY_CI_METHODS = {
    "cosine": "percentile bootstrap over texts",
    "cka": "leave-one-block-out jackknife over text blocks (length-sorted batch b in block "
    "b mod n_blocks; t interval)",
    "probe": "percentile bootstrap over texts of out-of-fold correctness",
}
"""How each interval in similarity.csv was made (written into similarity.json)."""

# reset@<model>-<task>-<seed>
RESET_COLUMNS = (
    "direction",
    "k",
    "blocks",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "lost_gain",
)
"""reset.csv: one row per (direction, k): FT val accuracy with ``k`` blocks reset to the PT
weights, ``bottom_up`` (blocks 1..k) or ``top_down`` (blocks L-k+1..L), k = 0..L; ``blocks`` the
reset range as text (``"1-3"``, ``""`` for none); ``lost_gain`` = (FT acc - acc) / (FT acc -
majority acc)."""

# seed_floor@<model>-<task>
SEED_FLOOR_COLUMNS = (
    "layer",
    "depth",
    "cosine_mean",
    "cosine_min",
    "cosine_max",
    "cka_mean",
    "cka_min",
    "cka_max",
    "n_pairs",
)
"""seed_floor.csv: FT-vs-FT similarity between fine-tunes of different seeds (all pairs) on the
same analysis tokens, per layer 0..L: mean, min and max over pairs."""

# sae@<model>-<task>-<seed>
SAE_METRIC_KEYS = ("mse", "explained_variance", "fvu", "l0", "dead_frac", "dense_frac", "cos_sim")
"""Per-SAE evaluation metrics, all in raw (unscaled) activation space: ``<unit>/<key>``."""
SAE_CURVE_COLUMNS = ("step", "sae", "loss", "mse_loss", "sparsity_loss", "l0", "fvu", "lr")
"""The SAE training curve CSV (``sae`` = the SAE's position in the run's stack)."""
SAE_SPLICE_KEYS = (
    "ft_accuracy_spliced",
    "ft_accuracy_ablated",
    "ft_recovered_accuracy",
    "ft_recovered_accuracy_lo",
    "ft_recovered_accuracy_hi",
    "ft_loss_clean",
    "ft_loss_spliced",
    "ft_loss_ablated",
    "ft_recovered_loss",
    "ft_recovered_loss_lo",
    "ft_recovered_loss_hi",
)
"""Per FT unit ``<unit>/<key>``: val accuracy and loss of the FT classifier with the layer
replaced by its SAE reconstruction (spliced) or by its mean over val tokens (ablated), and the
share recovered, ``(spliced - ablated) / (clean - ablated)``, with a paired bootstrap CI over
val texts (``_lo``/``_hi``). Clean accuracy is ``ft/accuracy_clean``."""

# sae_baseline@<model>-<task>
SAE_BASELINE_COLUMNS = (
    "layer",
    "depth",
    "seed",
    "other_seed",
    "mmcs_pt_ft",
    "mmcs_pt_pt",
    "mmcs_ft_ft",
    "mmcs_floor",
    "overlap_rel",
    "l0_pt",
    "l0_ft",
)
"""sae_baseline.csv: one row per (SAE layer, seed). Symmetric MMCS (mean of both directions'
mean max signed cosine over alive decoder rows) of that seed's PT vs FT SAEs, of its PT SAE vs
the PT SAE of ``other_seed`` (the seed baseline: same PT model and train split, another SAE seed and
token sample), likewise FT vs FT, and of random directions of the same counts (the floor);
``overlap_rel = (mmcs_pt_ft - floor) / (mmcs_pt_pt - floor)`` (NaN with one seed)."""

# crosscoder@<model>-<task>-<seed> and crosscoder_shuffled@<model>-<task>
CROSSCODER_LAYER_COLUMNS = (
    "layer",
    "depth",
    "n_latents",
    "alive_frac",
    "pt_only_frac",
    "shared_frac",
    "ft_only_frac",
    "ft_only_artefact_frac",
    "fvu_pt",
    "fvu_ft",
    "l0",
    "dead_frac",
    "selectivity_shared",
    "selectivity_ft_only",
    "selectivity_null",
    "selectivity_excess_shared",
    "selectivity_excess_ft_only",
    "ft_recovered_accuracy",
)
"""crosscoder.csv: one row per SAE layer. Class fractions are over alive latents (latents that
fire on the analysis split), by relative FT decoder norm; an FT-only (PT-only) latent flagged by
Latent Scaling counts as shared and is counted in ``ft_only_artefact_frac``. Selectivity: mean
label selectivity of the class's alive latents over all analysis texts (latents are classed by
decoder norms, never by selectivity, so no split is needed); null: the same under label
permutations; excess = value - null (NaN when a class is empty). ``ft_recovered_accuracy``:
share of the FT classifier's val accuracy recovered by splicing the FT reconstruction, relative
to mean-ablating the layer."""
CROSSCODER_HIST_BINS = 20
"""Bins of the relative-decoder-norm histogram on [0, 1] in crosscoder.json."""
CROSSCODER_CURVE_COLUMNS = (
    "step",
    "layer",
    "loss",
    "mse_loss",
    "sparsity_loss",
    "l0",
    "fvu_pt",
    "fvu_ft",
    "lr",
)
"""The crosscoder training curve CSV, one block of rows per layer."""

# features@<model>-<task>-<seed>
FEATURE_LAYER_COLUMNS = (
    "layer",
    "depth",
    "mmcs",
    "kept_frac",
    "selectivity_top_pt",
    "selectivity_top_ft",
    "selective_frac_pt",
    "selective_frac_ft",
    "alive_pt",
    "alive_ft",
    "selectivity_null_pt",
    "selectivity_null_ft",
    "selectivity_excess_pt",
    "selectivity_excess_ft",
    "special_frac_pt",
    "special_frac_ft",
)
"""features.csv: one row per SAE layer. ``mmcs`` / ``kept_frac``: FT -> PT, alive features.
Calibrated columns: the top features are selected by variance on one half of the analysis
texts and scored on the other (split-half); ``selectivity_null_*`` is the mean selectivity of
the same features under label permutations, ``selectivity_excess_* = selectivity_top_* -
null``; ``special_frac_*``: share of the unit's alive features that are [CLS]/[SEP]-type
(``features.special_share``), excluded from selection when ``features.exclude_special``."""


def run_item(model: str, task: str, seed: int) -> str:
    """The DVC matrix suffix ``<model>-<task>-<seed>`` (as in ``compare@minilm-l6-topic-0``)."""
    return f"{model}-{task}-{seed}"


def stage_run_name(stage: str, model: str, task: str, seed: int) -> str:
    """MLflow run name of one stage execution, and the DVC stage name for a ``models`` entry
    (a size model's DVC stages carry ``_size``: ``finetune_size@...``; prepare is per task)."""
    return f"prepare@{task}" if stage == "prepare" else f"{stage}@{run_item(model, task, seed)}"


def unit_name(which: str, layer: int) -> str:
    """One SAE / store unit: ``pt_L4``, ``ft_L6``."""
    return f"{which}_L{layer}"
