"""The paper's reported numbers, and the depth-matched reference curve built from them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from layerwise.paper import reference


def test_paper_reference_is_interpolated_at_relative_depth() -> None:
    ref = reference.PAPER_REPORTED_LAYER_SIMILARITY["IMDB"]["base"]
    cosine = reference.paper_reference_cosine
    assert cosine(0.0, "sentiment") == pytest.approx(ref[0])
    assert cosine(0.5, "sentiment") == pytest.approx(ref[6])  # layer 3 of 6 ~ 6/12
    assert cosine(1 / 8, "sentiment") == pytest.approx((ref[1] + ref[2]) / 2)


def test_paper_reference_is_the_curve_of_the_dataset_the_task_stands_for() -> None:
    """Each task is set beside the paper's bert-base curve on its own dataset (topic: news,
    whose last layer falls to 0.28, not IMDB's 0.49); a task the paper did not run has none."""
    for task, dataset in reference.PAPER_DATASET_FOR_TASK.items():
        last = reference.PAPER_REPORTED_LAYER_SIMILARITY[dataset]["base"][-1]
        assert reference.paper_reference_cosine(1.0, task) == pytest.approx(last)
    assert reference.paper_reference_cosine(1.0, "topic") == pytest.approx(0.2751)
    assert reference.paper_reference_cosine(np.linspace(0, 1, 7), "my_csv_task") is None


SHARED_CSV = Path(__file__).resolve().parents[2] / "shared/reference/paper_layer_similarity.csv"


def test_paper_size_curves_run_from_embeddings_to_the_last_layer() -> None:
    curves = reference.paper_layer_similarity("News")
    assert list(curves) == ["base", "medium", "small", "tiny"]
    depth, values = curves["small"]
    assert depth.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert values[-1] == pytest.approx(0.3572)
    assert reference.paper_layer_similarity("SST-2") == {}


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="the shared reference CSV is not here")
def test_paper_size_curves_equal_the_published_csv() -> None:
    names = {v.lower(): v for v in reference.PAPER_DATASET_FOR_TASK.values()}
    with SHARED_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(
        len(v) for d in reference.PAPER_REPORTED_LAYER_SIMILARITY.values() for v in d.values()
    )
    for r in rows:
        curve = reference.PAPER_REPORTED_LAYER_SIMILARITY[names[r["dataset"]]][r["model_size"]]
        assert curve[int(r["layer"])] == pytest.approx(float(r["similarity"]), abs=5e-5)
