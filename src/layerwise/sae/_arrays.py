"""Reading ``[N, D]`` activation arrays (numpy arrays, ``np.memmap`` stores or CPU tensors, float16
or float32) a bounded chunk at a time, so a large store is never loaded whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

ArrayLike = Any
"""A ``[N, D]`` numpy array, ``np.memmap`` or CPU torch tensor (float16 or float32)."""

CHUNK_ROWS = 65_536
"""Rows read at a time when scanning a whole store (keeps memmap reads bounded)."""


def shape2d(acts: ArrayLike, name: str) -> tuple[int, int]:
    """``(N, D)`` of ``acts``; anything not 2-d fails naming ``name`` and the shape."""
    shape = tuple(getattr(acts, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-d [N, D] array, got shape {shape}")
    return int(shape[0]), int(shape[1])


def rows_numpy(acts: ArrayLike, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a numpy array (in the store's dtype)."""
    chunk = acts[start:stop]
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    return np.asarray(chunk)


def read_rows(acts: ArrayLike, idx_B: np.ndarray) -> torch.Tensor:
    """Rows ``idx_B`` (sorted: sequential-ish memmap reads) as a float32 CPU tensor ``[B, D]``."""
    if isinstance(acts, torch.Tensor):
        return acts[torch.from_numpy(idx_B).to(acts.device)].detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(acts[idx_B], dtype=np.float32))


def iter_chunks(acts: ArrayLike, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over the whole array, ``chunk_rows`` rows at a time."""
    n, _ = shape2d(acts, "acts")
    for start in range(0, n, chunk_rows):
        yield start, rows_numpy(acts, start, min(start + chunk_rows, n))


def raise_nonfinite(chunk: np.ndarray, offset: int, name: str) -> None:
    """Raise naming the first non-finite row of ``chunk`` (global index ``offset + row``)."""
    finite = np.isfinite(chunk)
    if finite.all():
        return
    row = int(np.argmin(finite.all(axis=1)))
    bad = chunk[row]
    kinds = [k for k, m in (("NaN", np.isnan(bad)), ("inf", np.isinf(bad))) if m.any()]
    raise ValueError(
        f"{name} has non-finite values: first bad row is {offset + row} "
        f"(contains {' and '.join(kinds)})"
    )
