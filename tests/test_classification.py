"""Classification scores: exact values on hand-made predictions, a key set fixed by the task."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.classification import classification_metrics, confusion_counts, majority_accuracy


def test_within_one_accuracy_counts_near_misses() -> None:
    """Within-one accuracy counts predictions off by at most one class (ordinal labels)."""
    labels, preds = np.array([0, 1, 2, 2, 4]), np.array([2, 1, 1, 0, 3])
    names = ["1", "2", "3", "4", "5"]
    m = classification_metrics(labels, preds, names, "ft", ordinal=True)
    assert m["ft/within_one_accuracy"] == pytest.approx(3 / 5)
    assert m["ft/accuracy"] == pytest.approx(1 / 5)
    assert "ft/within_one_accuracy" not in classification_metrics(
        labels, preds, names, "ft", ordinal=False
    )


def test_every_class_gets_an_f1_key_even_when_never_seen() -> None:
    """A class absent from labels and predictions still has its F1 key (0), so the key set is
    the task's, not the run's; macro-F1 averages over every class."""
    labels, preds = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    m = classification_metrics(labels, preds, ["a", "b", "c"], "pt_head", ordinal=False)
    assert set(m) == {
        "pt_head/accuracy",
        "pt_head/macro_f1",
        "pt_head/f1/a",
        "pt_head/f1/b",
        "pt_head/f1/c",
    }
    assert m["pt_head/accuracy"] == pytest.approx(3 / 4)
    assert m["pt_head/f1/a"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert m["pt_head/f1/b"] == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert m["pt_head/f1/c"] == 0.0
    assert m["pt_head/macro_f1"] == pytest.approx((0.8 + 2 / 3) / 3)


def test_confusion_counts_rows_are_true_classes() -> None:
    """Rows are true classes, columns predictions, every class present; plain ints for JSON."""
    labels, preds = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    counts = confusion_counts(labels, preds, 3)
    assert counts == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert all(type(c) is int for row in counts for c in row)


def test_majority_accuracy_is_the_largest_class_share() -> None:
    assert majority_accuracy(np.array([0, 1, 1, 2, 1])) == pytest.approx(3 / 5)
    assert majority_accuracy(np.array([1, 1])) == 1.0
