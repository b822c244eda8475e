"""Linear probes: how linearly decodable a text's label is from a layer's pooled representation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from layerwise.runtime import single_threaded_blas
from layerwise.similarity.intervals import bootstrap_ratio_ci

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated probe accuracy with a text-bootstrap CI.

    ``correct[i]`` says whether text ``i``'s out-of-fold prediction was right (kept so paired
    comparisons between layers/models can be made on the same texts); ``folds`` is the number of
    folds actually used (it may have been reduced for a rare class).
    """

    accuracy: float
    lo: float
    hi: float
    correct: np.ndarray
    folds: int


def probe_accuracy(
    features: np.ndarray,
    labels: np.ndarray | Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 1000,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> ProbeResult:
    """Accuracy of a linear probe (StandardScaler + LogisticRegression), out-of-fold predictions.

    Why this design: a linear probe measures how linearly decodable the label is from a layer's
    pooled representation; standardising first makes the L2 penalty treat all dimensions alike
    (hidden states have a few huge-magnitude dimensions). Every text gets exactly one out-of-fold
    prediction (``cross_val_predict`` over a seeded shuffled ``StratifiedKFold``), so accuracy is
    a mean over texts and its CI is a percentile bootstrap over texts (seeded, deterministic).

    If the rarest class has fewer members than ``folds``, folds are reduced to that count (at
    least 2) with a logged warning. Raises ``ValueError`` for fewer than 2 classes, mismatched
    lengths or non-finite features.
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    n_folds = _fold_count(x, y, folds)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with single_threaded_blas():
        pred = cross_val_predict(model, x, y, cv=cv)
    correct = np.asarray(pred == y, dtype=bool)
    accuracy = float(correct.mean())
    lo, hi = bootstrap_ratio_ci(
        correct.astype(np.float64), np.ones(correct.size), n_boot, seed, confidence
    )
    return ProbeResult(
        accuracy=accuracy, lo=float(lo), hi=float(hi), correct=correct, folds=n_folds
    )


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
