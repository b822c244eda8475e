"""Crosscoders in the explorer (model diffing): one layer's latents by relative decoder norm
``r = |d_FT| / (|d_PT| + |d_FT|)``, and one latent's card.

Everything is computed by the crosscoder stage's own readout functions
(:mod:`layerwise.pipeline.crosscoder_readout`) with the params the crosscoder was read out
with, so the classes, the histogram of ``r`` and the selectivities on these pages are the ones
``crosscoder.json`` summarises: a latent is PT-only / FT-only by its norm *and* Latent Scaling,
and an "only" latent that Latent Scaling flags is shown as shared, with the flag.

The slow part, one pass of the crosscoder over the paired analysis store, is the SAE cards'
(:func:`layerwise.app.cards.encode_store`), cached per (run, layer); a card is then slicing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise.app.cards import LatentCard, UnitIndex, card_fields, encode_store, latent_card
from layerwise.app.catalog import RunKey
from layerwise.app.loaders import Workspace
from layerwise.app.results import crosscoder_result
from layerwise.config import CrosscoderParams
from layerwise.schema import CROSSCODER_HIST_BINS, unit_name

if TYPE_CHECKING:
    from layerwise.pipeline.crosscoder_readout import LatentClasses, LatentSelectivity

CLASS_NAMES = {"pt_only": "PT-only", "shared": "shared", "ft_only": "FT-only"}
"""How the pages name the readout's latent classes."""
SORTS = ("r, FT-only first", "r, PT-only first", "selectivity", "latent id")
"""Orders of a layer's latent list."""


def crosscoder_index(ws: Workspace, key: RunKey, layer: int) -> UnitIndex:
    """The layer's crosscoder applied to every paired analysis token, once per (run, layer)."""
    return ws.cached(
        ("crosscoder_index", key, layer), lambda: _build_crosscoder_index(ws, key, layer)
    )


def _build_crosscoder_index(ws: Workspace, key: RunKey, layer: int) -> UnitIndex:
    from layerwise.pipeline.crosscoder_readout import PairedRows, paired_encoder

    cc = ws.crosscoder(key, layer)
    rows = PairedRows(*paired_acts(ws, key, layer))
    return encode_store(ws, key, paired_encoder(cc), rows, cc.W_dec.detach().cpu().numpy())


def paired_acts(ws: Workspace, key: RunKey, layer: int) -> tuple[Any, Any]:
    """The (PT, FT) ``[N, D]`` analysis activations at ``layer``, row i the same token."""
    store = ws.store(key)
    return store.acts(unit_name("pt", layer)), store.acts(unit_name("ft", layer))


def training_seed(ws: Workspace, key: RunKey) -> int:
    """The seed the run's stages ran with: its own, or for a control run the first of
    ``seeds`` (as ``layerwise.cli`` gives control stages)."""
    if key.control is None:
        return int(key.seed)
    seeds = ws.params().get("seeds") or [0]
    return int(seeds[0]) if isinstance(seeds, list) else 0


def readout_params(ws: Workspace, key: RunKey, layer: int) -> CrosscoderParams:
    """The thresholds and Latent Scaling settings the layer's crosscoder was read out with.

    Most specific source last, each overriding the one before: ``params.yaml``'s crosscoder
    section (what a rerun would use), the run's ``crosscoder.json`` thresholds, and the params
    saved in the crosscoder's own ``cfg.json`` (what it was actually read out with). Unknown
    keys are dropped, so outputs of an older or newer params schema still open.
    """
    known = {f.name for f in fields(CrosscoderParams)}
    sources = (
        ws.params().get("crosscoder"),
        crosscoder_result(ws, key).get("thresholds"),
        ws.crosscoder_cfg(key, layer).get("params"),
    )
    merged: dict[str, Any] = {}
    for source in sources:
        if isinstance(source, dict):
            merged.update({k: v for k, v in source.items() if k in known})
    return CrosscoderParams(**merged)


# --------------------------------------------------------------------------------------------
# One layer


@dataclass(frozen=True)
class LayerDiff:
    """One layer's crosscoder latents as the crosscoder stage reads them."""

    key: RunKey
    layer: int
    params: CrosscoderParams
    norms: np.ndarray
    """``[F, 2]`` decoder norm per model (PT, FT), scaled space."""
    classes: LatentClasses
    """Relative norms, alive mask and final classes (Latent Scaling applied)."""
    norm_classes: np.ndarray
    """``[F]`` class by the thresholds alone, before Latent Scaling."""
    fire_rate: np.ndarray
    """``[F]`` share of analysis tokens each latent fires on."""
    selectivity: LatentSelectivity
    """Best one-vs-rest AUC per latent and its permutation null (NaN for dead latents)."""

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, bin edges) of ``r`` over alive latents: the stage's bins on [0, 1]."""
        edges = np.linspace(0.0, 1.0, CROSSCODER_HIST_BINS + 1)
        return np.asarray(self.classes.histogram(alive_only=True)), edges

    def rows(self, sort: str = SORTS[0]) -> list[dict[str, Any]]:
        """One row per alive latent, in the order ``sort`` (one of :data:`SORTS`)."""
        alive = np.flatnonzero(self.classes.alive)
        rows = [self.row(int(i)) for i in alive]
        order = {
            SORTS[0]: lambda r: (-r["r"], r["latent"]),
            SORTS[1]: lambda r: (r["r"], r["latent"]),
            SORTS[2]: lambda r: (-r["selectivity"], r["latent"]),
            SORTS[3]: lambda r: r["latent"],
        }
        return sorted(rows, key=order[sort])

    def row(self, latent: int) -> dict[str, Any]:
        """What the layer's latent list shows of one latent."""
        c = self.classes
        return {
            "latent": latent,
            "r": float(c.relative[latent]),
            "class": CLASS_NAMES[str(c.classes[latent])],
            "Latent Scaling artefact": bool(c.ft_artefact[latent] or c.pt_artefact[latent]),
            "fires on tokens": float(self.fire_rate[latent]),
            "selectivity": float(self.selectivity.auc[latent]),
            "selectivity null": float(self.selectivity.null[latent]),
        }


def layer_diff(ws: Workspace, key: RunKey, layer: int) -> LayerDiff:
    """The layer's :class:`LayerDiff`, once per (run, layer)."""
    return ws.cached(("layer_diff", key, layer), lambda: _build_layer_diff(ws, key, layer))


def _build_layer_diff(ws: Workspace, key: RunKey, layer: int) -> LayerDiff:
    """Classes by the stage's :func:`latent_classes` (norm thresholds, then Latent Scaling on
    the analysis rows) and selectivities by its :func:`latent_selectivity` with the run's seed,
    so they agree with what the stage wrote."""
    from layerwise.pipeline.crosscoder_readout import latent_classes, latent_selectivity
    from layerwise.sae.crosscoder_analysis import classify_latents, decoder_norms

    cc = ws.crosscoder(key, layer)
    params = readout_params(ws, key, layer)
    tf = crosscoder_index(ws, key, layer).text_features
    classes = latent_classes(cc, *paired_acts(ws, key, layer), tf.fire_count, params)
    analysis = ws.analysis(key)
    selectivity = latent_selectivity(
        tf.per_text,
        analysis.labels,
        len(analysis.label_names),
        classes.alive,
        params.n_permutations,
        training_seed(ws, key),
    )
    norm_classes = classify_latents(
        classes.relative, pt_only_below=params.pt_only_below, ft_only_above=params.ft_only_above
    )
    return LayerDiff(
        key, layer, params, decoder_norms(cc), classes, norm_classes, tf.fire_rate, selectivity
    )


# --------------------------------------------------------------------------------------------
# One latent


@dataclass(frozen=True)
class CrosscoderCard(LatentCard):
    """A crosscoder latent's card: where it sits between the two models, besides what every
    latent card shows."""

    layer: int
    norm_pt: float
    """``|d_PT|``, the latent's PT decoder norm (scaled space)."""
    norm_ft: float
    """``|d_FT|``."""
    relative_norm: float
    """``r = |d_FT| / (|d_PT| + |d_FT|)``."""
    norm_class: str
    """PT-only / shared / FT-only by ``r`` and the thresholds alone."""
    latent_class: str
    """The class the stage counts: ``norm_class``, unless Latent Scaling flagged an "only"
    latent as an artefact (then shared)."""
    alive: bool
    pt_only_below: float
    ft_only_above: float


def crosscoder_card(
    ws: Workspace, key: RunKey, layer: int, latent: int, n_texts: int = 8
) -> CrosscoderCard:
    """Everything about latent ``latent`` of the layer's crosscoder; an unknown id raises
    :class:`~layerwise.app.catalog.ExplorerError` naming the valid range."""
    index = crosscoder_index(ws, key, layer)
    card = latent_card(ws, key, index, latent, f"L{layer}", n_texts, kind="crosscoder")
    diff = layer_diff(ws, key, layer)
    c = diff.classes
    return CrosscoderCard(
        **card_fields(card),
        layer=layer,
        norm_pt=float(diff.norms[latent, 0]),
        norm_ft=float(diff.norms[latent, 1]),
        relative_norm=float(c.relative[latent]),
        norm_class=CLASS_NAMES[str(diff.norm_classes[latent])],
        latent_class=CLASS_NAMES[str(c.classes[latent])],
        alive=bool(c.alive[latent]),
        pt_only_below=diff.params.pt_only_below,
        ft_only_above=diff.params.ft_only_above,
    )
