"""Linear probes: how linearly decodable a text's label is from a layer's pooled representation.

A probe is a standardised L2 logistic regression whose strength is chosen by an inner
cross-validation on its own training texts (:func:`fit_probe`). :func:`probe_accuracy` scores
it out of fold on the analysis split; :func:`paired_difference` compares two probes (PT and FT
features) on the same texts and the same folds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from layerwise.runtime import single_threaded_blas
from layerwise.similarity.intervals import bootstrap_ratio_ci

if TYPE_CHECKING:
    from layerwise.config import CompareParams

logger = logging.getLogger(__name__)

DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse L2 strengths searched: from "almost the base rate" to "almost unregularised"."""

_TOL = 1e-3
"""lbfgs stopping tolerance. The search fits many models whose only use is to rank a handful of
strengths; at this tolerance the probes' out-of-fold predictions match those at sklearn's
default (1e-4) to within a text or two in a thousand, in far fewer iterations."""

_MAX_ITER = 1000
"""A cap on lbfgs iterations; at ``_TOL`` the fits stop well before it."""


@dataclass(frozen=True)
class ProbeSpec:
    """How a probe chooses its regularisation: the inverse strengths ``c_grid`` searched and the
    ``inner_folds`` of the search.

    Why a search: with a few hundred dimensions and under a thousand training texts a fixed
    C = 1 overfits (its accuracy is set by the dimension-to-text ratio, not by what the layer
    encodes), so two layers or two models would be compared through their overfitting.
    """

    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    inner_folds: int = 3

    def __post_init__(self) -> None:
        if not self.c_grid or not all(math.isfinite(c) and c > 0 for c in self.c_grid):
            raise ValueError(f"c_grid must be positive finite numbers, got {self.c_grid}")
        if self.inner_folds < 2:
            raise ValueError(f"inner_folds must be >= 2, got {self.inner_folds}")


def probe_spec(params: CompareParams) -> ProbeSpec:
    """The search ``compare.probe_c_grid`` / ``compare.probe_inner_folds`` ask for: one place, so
    the compare stage's probes and the fine-tune stage's PT-probe baseline search alike."""
    return ProbeSpec(tuple(params.probe_c_grid), params.probe_inner_folds)


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated probe accuracy with a text-bootstrap CI.

    ``correct[i]`` says whether text ``i``'s out-of-fold prediction was right and ``fold_of[i]``
    which outer fold held it out (kept so paired comparisons between layers/models can be made on
    the same texts and folds); ``folds`` is the number of outer folds actually used (it may have
    been reduced for a rare class); ``chosen_c`` is the inverse strength each outer fold's inner
    search picked.
    """

    accuracy: float
    lo: float
    hi: float
    correct: np.ndarray
    folds: int
    fold_of: np.ndarray
    chosen_c: tuple[float, ...]


@dataclass(frozen=True)
class ProbeDifference:
    """``diff`` = accuracy of the second probe minus the first's, with its paired CI."""

    diff: float
    lo: float
    hi: float


def fit_probe(
    features: np.ndarray, labels: np.ndarray, spec: ProbeSpec = ProbeSpec(), seed: int = 0
) -> Pipeline:
    """StandardScaler + LogisticRegression fitted on all of ``features`` at the C an inner
    cross-validation chose (``pipeline[-1].C``).

    Why standardise: the L2 penalty then treats all dimensions alike (hidden states have a few
    huge-magnitude dimensions). The inner search standardises within each inner fold, so nothing
    of a text it holds out leaks into the choice.
    """
    x, y = np.asarray(features), np.asarray(labels)
    with single_threaded_blas():
        c = _choose_c(x, y, spec, seed)
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, tol=_TOL, max_iter=_MAX_ITER)
        )
        return model.fit(x, y)


def _choose_c(x: np.ndarray, y: np.ndarray, spec: ProbeSpec, seed: int) -> float:
    """The C of ``spec.c_grid`` with the lowest held-out log loss over seeded stratified inner
    folds (ties: the strongest regularisation).

    Why log loss rather than accuracy: it is a proper score, so on a few hundred held-out texts
    it ranks strengths far less noisily than accuracy (a step function, often tied); on features
    without signal it favours predictions near the base rate (strong regularisation), on a clean
    signal confident ones (weak). The grid runs from strong to weak, each fit warm-started from
    the previous solution, which saves most of the solver's iterations.
    """
    grid = sorted(spec.c_grid)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    n_inner = min(spec.inner_folds, smallest)
    if n_inner < 2:
        raise ValueError(f"probe: a class has {smallest} training text(s); the search needs 2")
    if n_inner < spec.inner_folds:
        logger.warning("probe: smallest class has %d members; %d inner folds", smallest, n_inner)
    losses = np.zeros(len(grid))
    inner = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed)
    for train, val in inner.split(x, y):
        scaler = StandardScaler().fit(x[train])
        x_train, x_val = scaler.transform(x[train]), scaler.transform(x[val])
        model = LogisticRegression(tol=_TOL, max_iter=_MAX_ITER, warm_start=True)
        for i, c in enumerate(grid):
            model.set_params(C=c).fit(x_train, y[train])
            losses[i] += log_loss(y[val], model.predict_proba(x_val), labels=model.classes_)
    return float(grid[int(np.argmin(losses))])


def probe_accuracy(
    features: np.ndarray,
    labels: np.ndarray | Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    spec: ProbeSpec = ProbeSpec(),
) -> ProbeResult:
    """Out-of-fold accuracy of :func:`fit_probe` over seeded shuffled stratified outer folds.

    Why this design: a linear probe measures how linearly decodable the label is from a layer's
    pooled representation. Every text gets exactly one out-of-fold prediction, from a probe whose
    regularisation was chosen without it (nested cross-validation), so accuracy is a mean over
    texts and its CI is a percentile bootstrap over texts (seeded, deterministic). The outer folds
    depend only on the labels and ``seed``, so two probes on the same texts and seed share them.

    If the rarest class has fewer members than ``folds``, folds are reduced to that count (at
    least 2) with a logged warning. Raises ``ValueError`` for fewer than 2 classes, mismatched
    lengths, non-finite features or a class too small for the inner search.
    """
    x, y = np.asarray(features), np.asarray(labels)
    n_folds = _fold_count(x, y, folds)
    outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    pred = np.empty_like(y)
    fold_of = np.empty(y.shape[0], dtype=np.int64)
    chosen = []
    with single_threaded_blas():
        for k, (train, test) in enumerate(outer.split(x, y)):
            model = fit_probe(x[train], y[train], spec, seed)
            pred[test], fold_of[test] = model.predict(x[test]), k
            chosen.append(float(model[-1].C))
    correct = np.asarray(pred == y, dtype=bool)
    lo, hi = bootstrap_ratio_ci(
        correct.astype(np.float64), np.ones(correct.size), n_boot, seed, confidence
    )
    return ProbeResult(
        accuracy=float(correct.mean()),
        lo=float(lo),
        hi=float(hi),
        correct=correct,
        folds=n_folds,
        fold_of=fold_of,
        chosen_c=tuple(chosen),
    )


def paired_difference(
    first: ProbeResult,
    second: ProbeResult,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ProbeDifference:
    """``second``'s accuracy minus ``first``'s, with a paired percentile bootstrap CI over texts.

    Why paired: both probes predicted the same texts, so resampling texts once and applying the
    same draw to both correctness vectors (the bootstrap of the per-text difference) cancels
    what the texts share (easy and hard texts), giving a much narrower CI than two independent
    CIs would suggest. With the seed the probes' own CIs used, the draws are those same draws.
    Raises ``ValueError`` unless both probes held out the same texts in the same folds.
    """
    if first.fold_of.shape != second.fold_of.shape or not np.array_equal(
        first.fold_of, second.fold_of
    ):
        raise ValueError("paired_difference: the probes were not scored on the same folds")
    delta = second.correct.astype(np.float64) - first.correct.astype(np.float64)
    lo, hi = bootstrap_ratio_ci(delta, np.ones(delta.size), n_boot, seed, confidence)
    return ProbeDifference(diff=float(delta.mean()), lo=float(lo), hi=float(hi))


def _fold_count(x: np.ndarray, y: np.ndarray, folds: int) -> int:
    """Check the probe's inputs; the folds to use (fewer when the rarest class is smaller)."""
    if x.ndim != 2:
        raise ValueError(f"features must be [n, D], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [n] with n = {x.shape[0]}, got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN/inf (texts without tokens? filter them first)")
    classes, class_counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"probe needs at least 2 classes, got {classes.size} ({classes.tolist()})")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    smallest = int(class_counts.min())
    if smallest >= folds:
        return folds
    n_folds = max(2, smallest)
    logger.warning(
        "probe: smallest class has %d members < %d folds; using %d folds",
        smallest,
        folds,
        n_folds,
    )
    return n_folds
