"""BatchTopK sparsity (Bussmann et al. 2024): keep the ``k * B`` largest latent scores of a whole
batch of ``B`` rows, not ``k`` per row, so that a row may use more latents than another while the
batch averages ``k``; at inference, where there is no batch to rank against, a latent fires when
its score is above one fixed threshold.

A latent's *score* is its (ReLU) activation times a nonnegative per-latent weight: the sum of its
decoder norms for a crosscoder (Minder et al. 2025), so that ranking is by what a latent adds to
the reconstruction, not by a number whose scale the decoder can absorb. The selected activations
themselves are kept unweighted.

The threshold should be the batch cutoff (:func:`batch_topk`'s second value) of the *trained*
weights, averaged over a few batches: then inference keeps, on average, the ``k`` latents per
row that training did. Tracking it during training instead (dictionary_learning's moving
average) lags behind a cutoff that keeps drifting as the weights learn, and gives noticeably
fewer than ``k`` active latents per row at inference.

Shapes are suffixed in names: ``B`` batch, ``F`` latents.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def batch_topk(
    acts_BF: torch.Tensor, weight_F: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k * B`` activations of ``acts_BF`` with the largest scores ``acts * weight``, the
    rest zeroed, and the batch's cutoff (the smallest selected score, a 0-d float32 tensor).

    Exactly ``k * B`` entries are kept (by index, so ties in bfloat16 scores do not keep more);
    fewer are nonzero only when fewer than ``k * B`` activations are positive. Scores are ranked
    in the activations' dtype (under bfloat16 autocast, converting them to float32 first costs
    as much as the ranking). The selection passes no gradient; the kept activations pass theirs.
    """
    n_rows, n_latents = acts_BF.shape
    n_keep = min(k * n_rows, n_rows * n_latents)
    with torch.no_grad():
        scores = (acts_BF.detach() * weight_F.detach().to(acts_BF.dtype)).flatten()
        top_vals, top_idx = scores.topk(n_keep, sorted=False)
        cutoff = top_vals.min().float()
    flat = acts_BF.flatten()
    kept = torch.zeros_like(flat).scatter(0, top_idx, flat.gather(0, top_idx))
    return kept.view(n_rows, n_latents), cutoff


def threshold_select(
    acts_BF: torch.Tensor, weight_F: torch.Tensor, threshold: float | torch.Tensor
) -> torch.Tensor:
    """``acts_BF`` where the score ``acts * weight`` exceeds ``threshold``, zero elsewhere: the
    inference-time stand-in for :func:`batch_topk`, row by row and independent of the batch."""
    return acts_BF * (acts_BF * weight_F > threshold)
