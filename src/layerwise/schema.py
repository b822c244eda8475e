"""Every column list and metric-key set that one stage writes and another reads.

Writers and readers import these names from here, so a figure can never silently lose a column:
renaming one is a change in one place, and the tests assert each file's exact key set.
Nothing here imports another ``layerwise`` module, so depending on it costs a stage nothing.
"""

from __future__ import annotations

STAGES = ("prepare", "finetune", "compare", "sae", "features")
"""Stages that run per (model, task, seed) before ``paper`` (``prepare`` per task only)."""
CONTROLS = ("shuffled",)
"""Control runs: ``shuffled`` is a fine-tune on the same texts with labels permuted within the
train split (seeded by ``seed``), trained with the first of ``seeds``."""

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
)
"""features.csv: one row per SAE layer."""


def run_item(model: str, task: str, seed: int) -> str:
    """The DVC matrix suffix ``<model>-<task>-<seed>`` (as in ``compare@minilm-l6-topic-0``)."""
    return f"{model}-{task}-{seed}"


def stage_run_name(stage: str, model: str, task: str, seed: int) -> str:
    """DVC stage name == MLflow run name of one stage execution (prepare is per task only)."""
    return f"prepare@{task}" if stage == "prepare" else f"{stage}@{run_item(model, task, seed)}"


def unit_name(which: str, layer: int) -> str:
    """One SAE / store unit: ``pt_L4``, ``ft_L6``."""
    return f"{which}_L{layer}"
