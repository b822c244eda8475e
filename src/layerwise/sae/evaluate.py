"""Judging a trained SAE by the field's metrics, in raw (unscaled) activation space, so numbers
compare across scale factors.

Sums are accumulated in float64 over the whole eval set, and the variance in the explained
variance is about the *eval-set* mean, merged across chunks with Chan's update (exact, no
``E[x^2] - E[x]^2`` cancellation on BERT's large-mean outlier dims). Averaging a per-batch ratio
instead is the bug SAELens shipped twice.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.functional import cosine_similarity

from layerwise.sae._arrays import ArrayLike, raise_nonfinite, rows_numpy, shape2d
from layerwise.sae.model import SparseAutoencoder, on_device

logger = logging.getLogger(__name__)


class SAEEvaluation(NamedTuple):
    """Metrics and per-feature firing frequencies from one pass over an eval set."""

    metrics: dict[str, float]
    """Keys ``schema.SAE_METRIC_KEYS``, all in raw (unscaled) activation space."""
    feature_freq: np.ndarray
    """``[F]`` float64: fraction of eval tokens on which each feature is > 0."""


class _Sums:
    """Running float64 sums of one eval pass (errors, cosines, firing counts, Chan's moments)."""

    def __init__(self, d_in: int, d_sae: int, device: torch.device) -> None:
        self.sse = 0.0
        self.cos_sum = 0.0
        self.l0_sum = 0.0
        self.count_F = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.n_seen = 0
        self.mean_D = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.m2_D = torch.zeros(d_in, dtype=torch.float64, device=device)

    def add(self, x_BD: torch.Tensor, z_BF: torch.Tensor, x_hat_BD: torch.Tensor) -> None:
        self.sse += float((x_hat_BD - x_BD).pow(2).sum(-1).double().sum())
        self.cos_sum += float(cosine_similarity(x_hat_BD, x_BD, dim=-1).double().sum())
        fires_BF = z_BF > 0
        self.count_F += fires_BF.sum(0)
        self.l0_sum += float(fires_BF.sum(-1).double().sum())
        # Chan et al.'s parallel update of the per-dim mean and sum of squared deviations.
        x64 = x_BD.double()
        nb = x64.shape[0]
        mean_b = x64.mean(0)
        m2_b = (x64 - mean_b).pow(2).sum(0)
        delta = mean_b - self.mean_D
        total = self.n_seen + nb
        self.mean_D += delta * (nb / total)
        self.m2_D += m2_b + delta.pow(2) * (self.n_seen * nb / total)
        self.n_seen = total

    def result(self, n: int, d: int, dense_threshold: float) -> SAEEvaluation:
        total_var = float(self.m2_D.sum())
        if total_var > 0:
            explained_variance = 1.0 - self.sse / total_var
        else:
            logger.warning("eval activations have zero variance: explained variance is undefined")
            explained_variance = float("nan")
        freq_F = self.count_F.double().cpu().numpy() / n
        metrics = {
            "mse": self.sse / (n * d),
            "explained_variance": explained_variance,
            "fvu": 1.0 - explained_variance,
            "l0": self.l0_sum / n,
            "dead_frac": float(np.mean(freq_F == 0)),
            "dense_frac": float(np.mean(freq_F > dense_threshold)),
            "cos_sim": self.cos_sum / n,
        }
        return SAEEvaluation(metrics, freq_F)


@torch.no_grad()
def evaluate_sae_detailed(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> SAEEvaluation:
    """Evaluate ``sae`` on every row of ``acts`` in one streaming pass, in raw space.

    Metrics: ``mse`` (mean over tokens and dims of the squared error); ``explained_variance``
    ``= 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``; ``fvu = 1 - explained_variance``;
    ``l0`` (mean active features per token); ``dead_frac`` (features that never fire);
    ``dense_frac`` (features firing on more than ``dense_threshold`` of tokens); ``cos_sim``
    (mean cosine between x and x_hat).
    """
    n, d = shape2d(acts, "acts")
    if d != sae.cfg.d_in:
        raise ValueError(f"acts has D={d} but the SAE's d_in={sae.cfg.d_in}")
    if n == 0:
        raise ValueError("cannot evaluate an SAE on an empty activation array (N=0)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sae = on_device(sae, device)
    sums = _Sums(d, sae.cfg.d_sae, sae.device)
    for start in range(0, n, batch_size):
        chunk = rows_numpy(acts, start, min(start + batch_size, n))
        raise_nonfinite(chunk, start, "acts")
        x_BD = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(sae.device)
        z_BF = sae.encode(x_BD)
        sums.add(x_BD, z_BF, sae.decode(z_BF))
    return sums.result(n, d, dense_threshold)


def evaluate_sae(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> dict[str, float]:
    """Raw-space metrics of ``sae`` on ``acts`` (keys ``schema.SAE_METRIC_KEYS``); see
    :func:`evaluate_sae_detailed`, which also returns per-feature firing frequencies."""
    return evaluate_sae_detailed(
        sae, acts, batch_size=batch_size, device=device, dense_threshold=dense_threshold
    ).metrics


def feature_frequencies(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``[F]`` fraction of rows of ``acts`` on which each feature fires (> 0)."""
    return evaluate_sae_detailed(sae, acts, batch_size=batch_size, device=device).feature_freq
