"""The paper's reported numbers, and the depth-matched reference curve built from them."""

from __future__ import annotations

import pytest

from layerwise.paper import reference


def test_paper_reference_is_interpolated_at_relative_depth() -> None:
    ref = reference.PAPER_REPORTED_COSINE_BERT_BASE_IMDB
    assert reference.paper_reference_cosine(0.0) == pytest.approx(ref[0])
    assert reference.paper_reference_cosine(0.5) == pytest.approx(ref[6])  # layer 3 of 6 ~ 6/12
    assert reference.paper_reference_cosine(1 / 8) == pytest.approx((ref[1] + ref[2]) / 2)
