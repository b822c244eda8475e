"""The paper's own published numbers (Nadipalli 2025, arXiv 2502.16722).

They are constants named ``PAPER_REPORTED_*`` rather than params, so every comparison with the
paper is visibly a comparison with a reported value: changing them means the paper changed.
"""

from __future__ import annotations

import numpy as np

PAPER_MODEL = "bert-base-uncased"
"""The model behind the paper's headline numbers (12 layers, 768 wide)."""
PAPER_REPORTED_ACCURACY: dict[str, dict[str, float]] = {
    "IMDB": {"pt_head": 0.54, "ft": 0.93},
    "Spotify": {"pt_head": 0.12, "ft": 0.57},
    "News": {"pt_head": 0.12, "ft": 0.92},
}
"""The paper's reported accuracy, pre-trained head vs fine-tuned, per paper dataset."""
PAPER_DATASET_FOR_TASK: dict[str, str] = {
    "sentiment": "IMDB",
    "rating": "Spotify",
    "topic": "News",
}
"""Our task key -> the paper dataset it stands for: the paper's IMDB, Spotify reviews and news
set are not installable offline, so each task uses a packaged dataset of the same kind."""
PAPER_REPORTED_COSINE_BERT_BASE_IMDB: tuple[float, ...] = (
    0.999,
    0.992,
    0.977,
    0.962,
    0.940,
    0.900,
    0.868,
    0.836,
    0.806,
    0.751,
    0.704,
    0.654,
    0.494,
)
"""The paper's PT-vs-FT token cosine for bert-base on IMDB, layers 0..12."""


def paper_reference_cosine(depth: float | np.ndarray) -> np.ndarray:
    """The paper's bert-base IMDB cosine at relative depth ``layer / L`` (linear interpolation
    between its layers k/12), so models of any depth can be set beside it."""
    ref = np.asarray(PAPER_REPORTED_COSINE_BERT_BASE_IMDB)
    n = len(ref) - 1
    return np.interp(np.asarray(depth, dtype=float) * n, np.arange(n + 1), ref)
