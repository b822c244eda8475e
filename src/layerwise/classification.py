"""Scores of a classifier's predictions against gold labels, as flat metric dicts.

One function per score family, shared by the fine-tuned model and both baselines, so the
three rows of a results table are always computed the same way and carry the same keys.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, names: list[str], prefix: str, ordinal: bool
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 as ``<prefix>/...`` keys; with ``ordinal`` also the
    within-one accuracy (a 4-star review called 5 stars is a near miss, not a plain error).

    Every class in ``names`` gets an F1 key even when absent from both arrays (then 0), so the
    key set depends on the task only, never on what a run happened to predict.
    """
    from sklearn.metrics import accuracy_score, f1_score

    ids = list(range(len(names)))
    out: dict[str, Any] = {
        f"{prefix}/accuracy": float(accuracy_score(labels, preds)),
        f"{prefix}/macro_f1": float(
            f1_score(labels, preds, labels=ids, average="macro", zero_division=0)
        ),
    }
    per_class = f1_score(labels, preds, labels=ids, average=None, zero_division=0)
    for name, f1 in zip(names, per_class, strict=True):
        out[f"{prefix}/f1/{name}"] = float(f1)
    if ordinal:
        out[f"{prefix}/within_one_accuracy"] = float(np.mean(np.abs(labels - preds) <= 1))
    return out


def confusion_counts(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[list[int]]:
    """``[true class][predicted class]`` counts over all ``n_classes`` (absent ones too), as
    plain lists ready for JSON."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, preds, labels=list(range(n_classes))).tolist()


def majority_accuracy(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class: the floor every classifier and
    baseline must beat to have learned anything."""
    return float(np.bincount(labels).max() / len(labels))
