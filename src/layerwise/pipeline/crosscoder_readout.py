"""The model-diffing readout of one trained crosscoder on the analysis split: latent classes by
relative decoder norm checked by Latent Scaling, label selectivity per class against a
permutation null, and the FT-only latents worth reading.

The crosscoder enters the :mod:`layerwise.features` functions as an ``encode`` callable over
*paired* rows: :class:`PairedRows` shows the PT and FT stores as one ``[N, 2D]`` array (read
lazily, chunk by chunk) and :func:`paired_encoder` splits each chunk back into the two models'
rows, so the token-streaming code written for SAEs serves the crosscoder unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from layerwise import features as F
from layerwise.config import CrosscoderParams
from layerwise.sae._arrays import ArrayLike
from layerwise.sae.crosscoder import Crosscoder
from layerwise.sae.crosscoder_analysis import (
    classify_latents,
    flag_artefacts,
    latent_scaling,
    relative_norms,
)
from layerwise.schema import CROSSCODER_HIST_BINS

TOP_TOKENS = 8
"""Token ids listed per top FT-only latent."""
TOKEN_MIN_COUNT = 5
"""A token id must occur this often in the analysis split to be listed."""
TOP_TEXTS = 3
"""Top-activating texts listed per top FT-only latent."""


# --------------------------------------------------------------------------------------------
# Paired rows as one array, and the crosscoder as an encode callable over them
# --------------------------------------------------------------------------------------------


class PairedRows:
    """Row-aligned PT and FT activations ``[N, D]`` seen as one ``[N, 2D]`` array (PT first):
    indexing reads the same rows of both and concatenates them as float32, so nothing the size
    of both stores is ever held in memory."""

    def __init__(self, acts_pt: ArrayLike, acts_ft: ArrayLike) -> None:
        if acts_pt.shape != acts_ft.shape or len(acts_pt.shape) != 2:
            raise ValueError(
                f"paired stores must have the same [N, D] shape, got PT {tuple(acts_pt.shape)} "
                f"and FT {tuple(acts_ft.shape)}"
            )
        self.pt, self.ft = acts_pt, acts_ft
        self.shape = (int(acts_pt.shape[0]), 2 * int(acts_pt.shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.concatenate(
            [np.asarray(self.pt[rows], np.float32), np.asarray(self.ft[rows], np.float32)], -1
        )


def paired_encoder(cc: Crosscoder) -> F.Encode:
    """``float32 [n, 2D] -> [n, F]`` inference-time latents of :class:`PairedRows` chunks."""
    d = cc.cfg.d_in

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return cc.encode(x_t[:, :d], x_t[:, d:]).float().cpu().numpy()

    return encode


# --------------------------------------------------------------------------------------------
# Latent classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentClasses:
    """Every latent's relative norm and final class."""

    relative: np.ndarray
    """``[F]`` relative FT decoder norm ``|d_FT| / (|d_PT| + |d_FT|)``."""
    alive: np.ndarray
    """``[F]`` bool: fires on at least one analysis token."""
    classes: np.ndarray
    """``[F]`` ``pt_only`` / ``shared`` / ``ft_only`` after Latent Scaling."""
    ft_artefact: np.ndarray
    """``[F]`` bool: FT-only by norm but flagged by Latent Scaling (so classed shared)."""
    pt_artefact: np.ndarray
    """``[F]`` bool: the same for PT-only."""

    def fractions(self) -> dict[str, float]:
        """Class shares over alive latents (NaN when none is alive): ``pt_only_frac``,
        ``shared_frac`` and ``ft_only_frac`` sum to 1; ``ft_only_artefact_frac`` is the share
        of alive latents moved from FT-only to shared."""
        n_alive = int(self.alive.sum())
        live = self.classes[self.alive]
        out = {
            f"{name}_frac": float(np.mean(live == name)) if n_alive else float("nan")
            for name in ("pt_only", "shared", "ft_only")
        }
        out["ft_only_artefact_frac"] = (
            float(self.ft_artefact[self.alive].mean()) if n_alive else float("nan")
        )
        return out

    def histogram(self, *, alive_only: bool) -> list[int]:
        """Counts of relative norms in :data:`CROSSCODER_HIST_BINS` equal bins on [0, 1]."""
        r = self.relative[self.alive] if alive_only else self.relative
        return np.histogram(r, bins=CROSSCODER_HIST_BINS, range=(0.0, 1.0))[0].tolist()


def latent_classes(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    latent_freq: np.ndarray,
    params: CrosscoderParams,
    device: Any = "cpu",
) -> LatentClasses:
    """Class every latent by relative decoder norm, then check each alive PT-only (FT-only)
    latent with Latent Scaling on the analysis rows, with the latent said to live in PT (FT).

    The rule: :func:`~layerwise.sae.crosscoder_analysis.flag_artefacts` flags a latent when
    either ratio of the absent model's beta to the present model's (on the error target or on
    the reconstruction target) is not finite (the latent never fired) or exceeds
    ``params.scaling_max_ratio`` in absolute value, i.e. the absent model carries the latent's
    direction after all. A flagged "only" latent is classed shared; flagged FT-only latents are
    also counted in ``ft_artefact``. Dead latents keep their norm class but are left out of
    every fraction.
    """
    relative = relative_norms(cc)
    alive = np.asarray(latent_freq) > 0
    by_norm = classify_latents(
        relative, pt_only_below=params.pt_only_below, ft_only_above=params.ft_only_above
    )
    classes = by_norm.copy()
    artefact = {}
    for side in ("pt", "ft"):
        flagged = np.zeros(len(relative), dtype=bool)
        candidates = np.flatnonzero(alive & (by_norm == f"{side}_only"))
        if candidates.size:
            scaling = latent_scaling(
                cc,
                acts_pt,
                acts_ft,
                candidates,
                present=side,
                batch_size=params.eval_batch_size,
                device=device,
            )
            flagged[candidates[flag_artefacts(scaling, max_ratio=params.scaling_max_ratio)]] = True
        classes[flagged] = "shared"
        artefact[side] = flagged
    return LatentClasses(relative, alive, classes, artefact["ft"], artefact["pt"])


# --------------------------------------------------------------------------------------------
# Label selectivity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentSelectivity:
    """Per latent (NaN for dead ones): best one-vs-rest AUC of its per-text max activation,
    the mean of that statistic under label permutations, and the class attaining the AUC."""

    auc: np.ndarray
    null: np.ndarray
    best_class: np.ndarray


def latent_selectivity(
    per_text: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    alive: np.ndarray,
    n_permutations: int,
    seed: int,
) -> LatentSelectivity:
    """Selectivity (:func:`layerwise.features.label_selectivity`) of every alive latent, and
    its permutation null: the same statistic with the labels permuted ``n_permutations`` times
    (seeded), averaged per latent.

    The best-class AUC is a maximum over classes, so its chance level is above 0.5 and grows
    with the class count; the null measures that level for each latent's own activation
    pattern. No split-half is needed: latents are grouped by decoder norm and Latent Scaling,
    never by the selectivity they are then scored on, so the class means carry no selection
    bias. One ``label_selectivity`` call per permutation: ranks are the costly part, and
    stacking the permutations into one wide matrix measured no faster.
    """
    n_latents = per_text.shape[1]
    auc = np.full(n_latents, np.nan)
    null = np.full(n_latents, np.nan)
    best = np.zeros(n_latents, dtype=np.int64)
    cols = np.flatnonzero(alive)
    if cols.size == 0:
        return LatentSelectivity(auc, null, best)
    live = np.ascontiguousarray(per_text[:, cols])
    sel = F.label_selectivity(live, labels, n_classes)
    rng = np.random.default_rng([seed, 2])
    null_sum = np.zeros(cols.size)
    for _ in range(n_permutations):
        null_sum += F.label_selectivity(live, rng.permutation(labels), n_classes).auc
    auc[cols], null[cols], best[cols] = sel.auc, null_sum / n_permutations, sel.best_class
    return LatentSelectivity(auc, null, best)


def class_selectivity(sel: LatentSelectivity, lc: LatentClasses) -> dict[str, float]:
    """``selectivity_<class>`` (mean AUC of the class's alive latents), ``selectivity_null``
    (mean null over all alive latents) and ``selectivity_excess_<class>`` (mean over the
    class's alive latents of AUC minus that latent's own null mean), for shared and FT-only;
    NaN for an empty class."""

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    out = {"selectivity_null": mean(sel.null[lc.alive])}
    for name in ("shared", "ft_only"):
        members = lc.alive & (lc.classes == name)
        out[f"selectivity_{name}"] = mean(sel.auc[members])
        out[f"selectivity_excess_{name}"] = mean(sel.auc[members] - sel.null[members])
    return out


# --------------------------------------------------------------------------------------------
# The FT-only latents worth reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitText:
    """What the top-latent entries show of the analysis split."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    tokenizer: Any


def top_ft_only(
    lc: LatentClasses,
    sel: LatentSelectivity,
    tf: F.TextFeatures,
    encode: F.Encode,
    rows: PairedRows,
    token_id: np.ndarray,
    split: SplitText,
    n_top: int,
) -> list[dict[str, Any]]:
    """Up to ``n_top`` FT-only latents (after Latent Scaling, so no artefacts) by selectivity,
    highest first (ties: lower index), each with its relative norm, firing rate, selectivity
    and null, best class, top tokens (mean activation per token id, one streaming pass for all
    of them) and top texts."""
    members = np.flatnonzero(lc.alive & (lc.classes == "ft_only"))
    if members.size == 0:
        return []
    order = np.lexsort((members, -sel.auc[members]))
    chosen = members[order[:n_top]]
    tokens = F.top_tokens(
        encode, rows, token_id, chosen, TOP_TOKENS, min_count=TOKEN_MIN_COUNT, d_in=rows.shape[1]
    )
    entries = []
    for latent in chosen.tolist():
        ids = [t for t, _, _ in tokens[latent]]
        entries.append(
            {
                "latent": latent,
                "relative_norm": float(lc.relative[latent]),
                "fire_rate": float(tf.fire_rate[latent]),
                "selectivity": float(sel.auc[latent]),
                "selectivity_null": float(sel.null[latent]),
                "best_class": split.label_names[int(sel.best_class[latent])],
                "top_tokens": split.tokenizer.convert_ids_to_tokens(ids) if ids else [],
                "top_texts": [
                    {
                        "text": split.texts[i],
                        "label": split.label_names[int(split.labels[i])],
                        "activation": round(a, 4),
                    }
                    for i, a in F.top_texts(tf.per_text, latent, TOP_TEXTS)
                ],
            }
        )
    return entries
