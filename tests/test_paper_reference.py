"""The paper's reported numbers, and the depth-matched reference curve built from them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from layerwise.paper import reference


def test_paper_reference_is_interpolated_at_relative_depth() -> None:
    ref = reference.PAPER_REPORTED_COSINE_BERT_BASE_IMDB
    assert reference.paper_reference_cosine(0.0) == pytest.approx(ref[0])
    assert reference.paper_reference_cosine(0.5) == pytest.approx(ref[6])  # layer 3 of 6 ~ 6/12
    assert reference.paper_reference_cosine(1 / 8) == pytest.approx((ref[1] + ref[2]) / 2)


SHARED_CSV = Path(__file__).resolve().parents[2] / "shared/reference/paper_layer_similarity.csv"


def test_paper_size_curves_run_from_embeddings_to_the_last_layer() -> None:
    curves = reference.paper_layer_similarity("News")
    assert list(curves) == ["base", "medium", "small", "tiny"]
    depth, values = curves["small"]
    assert depth.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert values[-1] == pytest.approx(0.3572)
    assert reference.paper_layer_similarity("SST-2") == {}
    base = reference.PAPER_REPORTED_LAYER_SIMILARITY["IMDB"]["base"]
    assert base == pytest.approx(reference.PAPER_REPORTED_COSINE_BERT_BASE_IMDB, abs=6e-4)


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
