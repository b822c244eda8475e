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
    """Rows ``idx_B`` (sorted: sequential-ish memmap reads) as a float32 tensor ``[B, D]``, on
    the array's own device (CPU for numpy and memmaps; the GPU for a device-resident store)."""
    if isinstance(acts, torch.Tensor):
        return acts[torch.from_numpy(idx_B).to(acts.device)].detach().to(torch.float32)
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


def resident(
    datasets: list[ArrayLike], device: torch.device, share: float = 0.5
) -> list[ArrayLike]:
    """On CUDA, the training arrays copied once into GPU memory (in their stored dtype) when
    together they take at most ``share`` of the free memory; else (and on CPU) as given.

    Why: read batch by batch from a memmap, each step gathers rows in pageable host memory and
    copies them over, which keeps a GPU waiting on the CPU; resident, a step is an index on the
    device. The values are the same either way (float16 stays float16 until the batch is read).
    """
    if device.type != "cuda":
        return datasets
    need = sum(_nbytes(ds) for ds in datasets)
    free, _total = torch.cuda.mem_get_info(device)
    if need > share * free:
        return datasets
    return [
        torch.as_tensor(ds if isinstance(ds, torch.Tensor) else np.asarray(ds)).to(device)
        for ds in datasets
    ]


def _nbytes(acts: ArrayLike) -> int:
    n, d = shape2d(acts, "dataset")
    item = acts.element_size() if isinstance(acts, torch.Tensor) else np.dtype(acts.dtype).itemsize
    return n * d * item
