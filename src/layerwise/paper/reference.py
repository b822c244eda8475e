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
PAPER_SIZES: dict[str, str] = {
    "base": "bert-base-uncased, 12 layers",
    "medium": "compact BERT, 8 layers",
    "small": "compact BERT, 4 layers",
    "tiny": "compact BERT, 2 layers",
}
"""The paper's four model sizes (its code's ``model_size``), largest first."""
PAPER_REPORTED_LAYER_SIMILARITY: dict[str, dict[str, tuple[float, ...]]] = {
    "IMDB": {
        "base": (
            0.9991,
            0.9916,
            0.9769,
            0.9619,
            0.9398,
            0.8997,
            0.8676,
            0.8364,
            0.8058,
            0.7512,
            0.7041,
            0.6539,
            0.4944,
        ),
        "medium": (0.9989, 0.9886, 0.9702, 0.9396, 0.8915, 0.8505, 0.8032, 0.7562, 0.5183),
        "small": (0.9986, 0.9771, 0.9139, 0.8285, 0.7123),
        "tiny": (0.9964, 0.9696, 0.9020),
    },
    "Spotify": {
        "base": (
            0.9993,
            0.9907,
            0.9706,
            0.9554,
            0.9318,
            0.9035,
            0.8733,
            0.8472,
            0.8219,
            0.7570,
            0.7042,
            0.6813,
            0.5064,
        ),
        "medium": (0.9988, 0.9825, 0.9616, 0.9323, 0.8875, 0.8466, 0.7965, 0.7163, 0.4929),
        "small": (0.9982, 0.9689, 0.9061, 0.8312, 0.6596),
        "tiny": (0.9956, 0.9421, 0.7684),
    },
    "News": {
        "base": (
            0.9993,
            0.9915,
            0.9710,
            0.9622,
            0.9487,
            0.9276,
            0.9039,
            0.8729,
            0.8412,
            0.7893,
            0.6925,
            0.5645,
            0.2751,
        ),
        "medium": (0.9991, 0.9833, 0.9589, 0.9258, 0.8869, 0.8562, 0.7870, 0.6132, 0.2685),
        "small": (0.9989, 0.9741, 0.8974, 0.7785, 0.3572),
        "tiny": (0.9954, 0.8946, 0.5272),
    },
}
"""Paper dataset -> model size -> PT-vs-FT token cosine per layer 0..L (0 = embeddings), as the
paper's public code logged it (``suneel-nadipalli/finetuning-xai``,
``results/logs/similarity_summary.csv``, MIT), rounded to 4 decimals. Constants, not a file the
stage reads: the stage's inputs are its DVC deps, and these numbers never change."""


def paper_layer_similarity(dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The paper's curves for one of its datasets: size -> (relative depth k/L, cosine), largest
    model first; empty for a dataset the paper did not use."""
    curves = PAPER_REPORTED_LAYER_SIMILARITY.get(dataset, {})
    out = {}
    for size in PAPER_SIZES:
        if size in curves:
            values = np.asarray(curves[size], dtype=float)
            out[size] = (np.arange(values.size) / (values.size - 1), values)
    return out


def paper_reference_cosine(depth: float | np.ndarray, task: str) -> np.ndarray | None:
    """The paper's bert-base cosine on the dataset ``task`` stands for, at relative depth
    ``layer / L`` (linear interpolation between its layers k/12), so models of any depth can
    be set beside it; ``None`` for a task with no paper counterpart."""
    curve = PAPER_REPORTED_LAYER_SIMILARITY.get(PAPER_DATASET_FOR_TASK.get(task, ""), {})
    if "base" not in curve:
        return None
    ref = np.asarray(curve["base"])
    n = len(ref) - 1
    return np.interp(np.asarray(depth, dtype=float) * n, np.arange(n + 1), ref)
