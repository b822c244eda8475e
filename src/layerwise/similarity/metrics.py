"""Token cosine and linear CKA between PT and FT representations of the same tokens."""

from __future__ import annotations

import math

import numpy as np
import torch

COS_EPS = 1e-12
"""Norm floor for token cosine: a zero vector gets cosine 0 instead of NaN (torch's convention)."""


def token_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine of each row pair of ``x [N, D]`` and ``y [N, D]``, ``[N]``, in their dtype.

    Why not ``torch.nn.functional.cosine_similarity``: the paper's metric is the plain
    ``<x, y> / (|x| |y|)`` per token, and this keeps the exact arithmetic (and its rounding) that
    the streamed cosine sums were defined with.
    """
    dot = torch.linalg.vecdot(x, y)
    norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(y, dim=1)
    return dot / norms.clamp_min(COS_EPS)


def linear_cka(X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor) -> float:
    """Linear CKA of two token matrices ``X [N, D1]`` and ``Y [N, D2]`` (rows = same tokens).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``
    (Kornblith et al., 2019), in float64. The feature-space form costs ``O(N D^2)`` instead of the
    ``O(N^2)`` Gram form, which matters for many tokens. This is the reference the streaming
    accumulator is tested against. Returns NaN if either side has zero variance.
    """
    x = _as_float64_tensor(X)
    y = _as_float64_tensor(Y)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"linear_cka needs 2-D matrices, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: row counts differ ({x.shape[0]} vs {y.shape[0]})")
    xc = x - x.mean(dim=0, keepdim=True)
    yc = y - y.mean(dim=0, keepdim=True)
    num = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return float(num / den) if float(den) > 0 else math.nan


def cka_from_moments(
    n: float | torch.Tensor,
    sum_x: torch.Tensor,
    sum_y: torch.Tensor,
    xtx: torch.Tensor,
    yty: torch.Tensor,
    xty: torch.Tensor,
) -> float:
    """Linear CKA from the uncentred moments of ``X [n, Dx]`` and ``Y [n, Dy]``.

    Centring only needs the column sums: ``Xc^T Yc = X^T Y - sum_x sum_y^T / n``. So the moments,
    which add up over batches and can be subtracted per block, determine CKA exactly; this is what
    makes streaming and the leave-one-block-out jackknife possible. Use float64: the subtraction
    cancels when feature means are large (BERT has a few such outlier dimensions).
    Returns NaN for ``n < 1`` or zero variance on either side.
    """
    n = float(n)
    if n < 1:
        return math.nan
    cxx = xtx - torch.outer(sum_x, sum_x) / n
    cyy = yty - torch.outer(sum_y, sum_y) / n
    cxy = xty - torch.outer(sum_x, sum_y) / n
    den = torch.sqrt((cxx * cxx).sum() * (cyy * cyy).sum())
    if not float(den) > 0:
        return math.nan
    return float((cxy * cxy).sum() / den)


def _as_float64_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype=torch.float64)
    return torch.from_numpy(np.asarray(a, dtype=np.float64))
