"""Feature cards: one SAE latent on its run's analysis split, in the manner of the SAE
dashboards (sae-vis, SAEDashboard, Neuronpedia): the texts it fires on most with the firing
tokens, the histogram of its token activations, how well it separates the labels (against a
label-permutation null), and the closest latent of the other model's SAE at the same layer.

The card's "first load" is one pass of the unit's SAE over the whole analysis store
(:func:`unit_index`, cached per unit): it keeps every token's nonzero activations as a sparse
matrix (one column per latent), so a card for any latent of that unit is array slicing.
The per-text reduction is the features stage's own (:func:`layerwise.features.text_feature_matrix`),
so a card's top texts are the ones the stage reports. Crosscoder latents get the same card
(:class:`LatentCard`, built by :func:`latent_card` from :func:`encode_store`'s pass) plus their
model-diffing part (:mod:`layerwise.app.crosscoders`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from layerwise import features as F
from layerwise.app.catalog import ExplorerError, RunKey, other_unit
from layerwise.app.encode import check_feature
from layerwise.app.loaders import AnalysisTexts, Workspace
from layerwise.sae._arrays import ArrayLike

N_PERMUTATIONS = 200
"""Label permutations behind a card's selectivity null (p-values down to 1/201)."""
HISTOGRAM_BINS = 30


@dataclass(frozen=True)
class UnitIndex:
    """One SAE over the whole analysis store."""

    text_features: F.TextFeatures
    """Per-text max activation ``[n_texts, F]`` and token firing counts."""
    token_acts: object
    """``scipy.sparse.csc_matrix [n_tokens, F]``: every token's nonzero activations."""
    decoder: np.ndarray
    """``W_dec [F, D]`` (an SAE's unit-norm rows, for the nearest latent of the other SAE; a
    crosscoder's ``[F, 2D]``, both models' rows)."""

    @property
    def n_features(self) -> int:
        return int(self.decoder.shape[0])

    def column(self, feature: int) -> np.ndarray:
        """``[n_tokens]`` activations of one latent."""
        return self.token_acts[:, [feature]].toarray().ravel()


def unit_index(ws: Workspace, key: RunKey, unit: str) -> UnitIndex:
    """The unit's SAE applied to every analysis token, once per (run, unit)."""
    return ws.cached(("unit_index", key, unit), lambda: _build_unit_index(ws, key, unit))


def _build_unit_index(ws: Workspace, key: RunKey, unit: str) -> UnitIndex:
    from layerwise.sae.model import numpy_encoder

    sae = ws.sae(key, unit)
    decoder = sae.W_dec.detach().cpu().numpy()
    return encode_store(ws, key, numpy_encoder(sae), ws.store(key).acts(unit), decoder)


def encode_store(
    ws: Workspace, key: RunKey, encode: F.Encode, acts: ArrayLike, decoder: np.ndarray
) -> UnitIndex:
    """Any dictionary (an SAE, or a crosscoder over paired rows) applied to every analysis
    token of ``acts`` in one streaming pass, keeping every nonzero activation: the one pass a
    card of either kind is sliced from."""
    from scipy import sparse

    store = ws.store(key)
    analysis = ws.analysis(key)
    if store.n_texts != len(analysis.texts):
        raise ExplorerError(
            f"{key.label}: the activation store holds {store.n_texts} texts but the prepared "
            f"analysis split has {len(analysis.texts)}: rerun `dvc repro {key.stage('compare')}`"
        )
    chunks: list[object] = []

    def encode_and_keep(x: np.ndarray) -> np.ndarray:
        z = encode(x)
        chunks.append(sparse.csc_matrix(z))
        return z

    text_features = F.text_feature_matrix(
        encode_and_keep,
        acts,
        ws.store_index(key).text_id,
        store.n_texts,
        reduce="max",
        d_in=int(acts.shape[1]),
    )
    token_acts = sparse.vstack(chunks, format="csc")
    return UnitIndex(text_features, token_acts, decoder)


# --------------------------------------------------------------------------------------------
# The card


@dataclass(frozen=True)
class TopText:
    """One of the texts a latent fires on most, with its activation on every token."""

    text_index: int
    label: str
    activation: float
    tokens: list[str]
    token_acts: np.ndarray


@dataclass(frozen=True)
class SelectivityWithNull:
    """One-vs-rest ROC AUC of the latent's per-text activation for each label, and the
    distribution of the best AUC when the labels are shuffled (what chance gives: with several
    classes the best of several AUCs is above 0.5 by chance alone)."""

    auc_per_class: dict[str, float]
    best_label: str
    auc: float
    null_mean: float
    null_q95: float
    p_value: float
    n_permutations: int


@dataclass(frozen=True)
class Neighbour:
    """The other model's latent whose decoder direction is closest (same layer)."""

    unit: str
    feature: int
    cosine: float


@dataclass(frozen=True)
class LatentCard:
    """What a card shows of any dictionary latent (an SAE's or a crosscoder's) on the run's
    analysis split; the card kinds add what is particular to them."""

    key: RunKey
    feature: int
    n_features: int
    fire_rate: float
    """Fraction of analysis tokens on which the latent fires."""
    max_activation: float
    top_texts: list[TopText]
    histogram: tuple[np.ndarray, np.ndarray]
    """(counts, bin edges) of the latent's nonzero token activations."""
    selectivity: SelectivityWithNull


@dataclass(frozen=True)
class FeatureCard(LatentCard):
    """An SAE latent's card, with the nearest latent of the other model's SAE."""

    unit: str
    neighbour: Neighbour | None


def card_fields(card: LatentCard) -> dict[str, Any]:
    """The :class:`LatentCard` part of a card as keyword arguments (shallow: the arrays are
    shared, not copied), to build a card kind from :func:`latent_card`."""
    return {f.name: getattr(card, f.name) for f in fields(LatentCard)}


def latent_card(
    ws: Workspace,
    key: RunKey,
    index: UnitIndex,
    feature: int,
    name: str,
    n_texts: int = 8,
    kind: str = "SAE",
) -> LatentCard:
    """The card of latent ``feature`` of ``index`` (the ``kind`` dictionary ``name``); an
    unknown id raises :class:`ExplorerError` naming the valid range."""
    check_feature(feature, index.n_features, name, kind)
    analysis = ws.analysis(key)
    column = index.column(feature)
    fired = column[column > 0]
    histogram = np.histogram(fired, bins=HISTOGRAM_BINS) if fired.size else _empty_histogram()
    return LatentCard(
        key=key,
        feature=feature,
        n_features=index.n_features,
        fire_rate=float(index.text_features.fire_rate[feature]),
        max_activation=float(column.max(initial=0.0)),
        top_texts=_top_texts(ws, key, index, column, feature, analysis, n_texts),
        histogram=histogram,
        selectivity=selectivity_with_null(
            index.text_features.per_text[:, feature], analysis, seed=feature
        ),
    )


def feature_card(
    ws: Workspace, key: RunKey, unit: str, feature: int, n_texts: int = 8
) -> FeatureCard:
    """Everything about latent ``feature`` of ``unit``; an unknown id raises
    :class:`ExplorerError` naming the valid range."""
    index = unit_index(ws, key, unit)
    card = latent_card(ws, key, index, feature, unit, n_texts)
    neighbour = _neighbour(ws, key, unit, index.decoder[feature])
    return FeatureCard(**card_fields(card), unit=unit, neighbour=neighbour)


def _empty_histogram() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(1)


def _top_texts(
    ws: Workspace,
    key: RunKey,
    index: UnitIndex,
    column: np.ndarray,
    feature: int,
    analysis: AnalysisTexts,
    n: int,
) -> list[TopText]:
    """The texts with the highest max activation (the features stage's ranking), each with
    its tokens and per-token activations; texts where the latent is silent are left out."""
    rows_index = ws.store_index(key)
    tokenizer = ws.tokenizer(key.model)
    out = []
    for text_index, activation in F.top_texts(index.text_features.per_text, feature, n):
        if activation <= 0:
            break
        rows = rows_index.rows_of(text_index)
        out.append(
            TopText(
                text_index=text_index,
                label=analysis.label_names[int(analysis.labels[text_index])],
                activation=float(activation),
                tokens=tokenizer.convert_ids_to_tokens(rows_index.token_id[rows].tolist()),
                token_acts=column[rows],
            )
        )
    return out


def selectivity_with_null(
    values: np.ndarray, analysis: AnalysisTexts, seed: int, n_permutations: int = N_PERMUTATIONS
) -> SelectivityWithNull:
    """The selectivity of one latent on all analysis texts, and its label-permutation null
    (:func:`layerwise.features.selectivity_null`, the one the features stage uses)."""
    n_classes = len(analysis.label_names)
    observed = F.label_selectivity(values[:, None], analysis.labels, n_classes)
    null = F.selectivity_null(values[:, None], analysis.labels, n_classes, n_permutations, seed)
    auc = float(observed.auc[0])
    return SelectivityWithNull(
        auc_per_class={
            name: float(a)
            for name, a in zip(analysis.label_names, observed.auc_per_class[0], strict=True)
        },
        best_label=analysis.label_names[int(observed.best_class[0])],
        auc=auc,
        null_mean=float(null.mean[0]),
        null_q95=float(null.q95[0]),
        p_value=float(null.p_value(observed.auc)[0]),
        n_permutations=n_permutations,
    )


def _neighbour(ws: Workspace, key: RunKey, unit: str, direction: np.ndarray) -> Neighbour | None:
    """Nearest latent of the other model's SAE by decoder cosine (None without that SAE)."""
    other = other_unit(unit)
    if other not in ws.outputs(key).sae_units:
        return None
    decoder = ws.cached(
        ("decoder", key, other), lambda: ws.sae(key, other).W_dec.detach().cpu().numpy()
    )
    norms = np.linalg.norm(decoder, axis=1) * max(float(np.linalg.norm(direction)), 1e-12)
    cos = decoder @ direction / np.maximum(norms, 1e-12)
    best = int(np.argmax(cos))
    return Neighbour(other, best, float(cos[best]))
