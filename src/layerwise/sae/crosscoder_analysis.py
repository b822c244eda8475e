"""Reading a trained crosscoder (:mod:`layerwise.sae.crosscoder`) for model diffing: decoder
norms and the latent classes they give, Latent Scaling to tell a true model-only latent from a
sparsity artefact, and per-model reconstruction quality by the SAE definitions."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from layerwise.sae._arrays import ArrayLike, raise_nonfinite, rows_numpy
from layerwise.sae.crosscoder import (
    SIDES,
    Crosscoder,
    CrosscoderPass,
    crosscoder_forward,
    paired_rows,
    unscale,
)
from layerwise.sae.evaluate import _Sums
from layerwise.sae.model import on_device

LATENT_CLASSES = ("pt_only", "shared", "ft_only")
"""What :func:`classify_latents` returns, by relative norm low to high."""


def _side_index(side: str) -> int:
    if side not in SIDES:
        raise ValueError(f"side={side!r} must be one of {list(SIDES)}")
    return SIDES.index(side)


def decoder_norms(cc: Crosscoder) -> np.ndarray:
    """``[F, 2]`` float64 L2 norm of each latent's decoder row per model (columns
    :data:`SIDES`), in the scaled space both models were trained in."""
    return cc.decoders().detach().double().norm(dim=-1).cpu().numpy()


def relative_norms(cc: Crosscoder) -> np.ndarray:
    """``[F]`` relative decoder norm ``r = |d_FT| / (|d_PT| + |d_FT|)``: 0 for a latent only
    the PT model uses, 1 for FT-only, 0.5 for one used alike (and for an all-zero latent, which
    says nothing either way)."""
    norms = decoder_norms(cc)
    total = norms.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, norms[:, 1] / total, 0.5)


def classify_latents(
    relative: np.ndarray, *, pt_only_below: float = 0.1, ft_only_above: float = 0.9
) -> np.ndarray:
    """``[F]`` class of each latent by relative norm: ``"pt_only"`` (r < ``pt_only_below``),
    ``"ft_only"`` (r > ``ft_only_above``), else ``"shared"`` (see :data:`LATENT_CLASSES`)."""
    if not 0 <= pt_only_below < ft_only_above <= 1:
        raise ValueError(
            f"need 0 <= pt_only_below={pt_only_below} < ft_only_above={ft_only_above} <= 1"
        )
    relative = np.asarray(relative, dtype=np.float64)
    classes = np.full(relative.shape, "shared", dtype=object)
    classes[relative < pt_only_below] = "pt_only"
    classes[relative > ft_only_above] = "ft_only"
    return classes.astype(str)


class LatentScaling(NamedTuple):
    """Latent Scaling (Minder et al. 2025) of K latents said to live in model ``present`` only.

    For latent j with decoder row ``d`` in the present model and activations ``f_i`` over tokens
    i, each model m gets ``beta = sum_i f_i <d, y_i> / (|d|^2 sum_i f_i^2)``, the least-squares
    scale of ``f d`` that best explains a target ``y``: the *error* ``x_m - x_hat_m + f d_m``
    (what the crosscoder leaves unexplained in m once j's own contribution is removed) and the
    *reconstruction* ``x_hat_m - b_dec_m`` (what the latents carry; the decoder bias is left
    out, unlike Minder et al.'s code, because it is no latent, and with BERT's large-mean
    outlier dimensions its projection would swamp the latents'). The ratios absent / present
    are near 0 for a latent that truly exists in one model only; a large error ratio means the
    absent model holds the direction but the decoder dropped it (Complete Shrinkage), a large
    reconstruction ratio that other latents represent it there (Latent Decoupling).
    """

    latents: np.ndarray
    """``[K]`` latent indices."""
    present: str
    """The model the latents are said to live in (``"pt"`` or ``"ft"``)."""
    beta_error: np.ndarray
    """``[K, 2]`` beta of the error target per model (columns :data:`SIDES`)."""
    beta_reconstruction: np.ndarray
    """``[K, 2]`` beta of the reconstruction target per model."""
    ratio_error: np.ndarray
    """``[K]`` ``nu_error``: absent model's error beta / present model's."""
    ratio_reconstruction: np.ndarray
    """``[K]`` ``nu_reconstruction``: the same for the reconstruction betas."""
    n_active: np.ndarray
    """``[K]`` tokens on which the latent fired (betas are NaN where 0)."""


class _ScalingSums:
    """Float64 sums over tokens for :func:`latent_scaling`: per model ``(x - b_dec)^T f`` and
    ``(x_hat - b_dec)^T f`` (``[2, D, K]``), and ``sum f^2``, firing counts (``[K]``)."""

    def __init__(self, d_in: int, n_latents: int, device: torch.device) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.x_f = torch.zeros(2, d_in, n_latents, **kw)
        self.x_hat_f = torch.zeros(2, d_in, n_latents, **kw)
        self.f_sq = torch.zeros(n_latents, **kw)
        self.n_active = torch.zeros(n_latents, **kw)

    def add(
        self, x_BZ: torch.Tensor, out: CrosscoderPass, latents: torch.Tensor, b_dec_Z: torch.Tensor
    ) -> None:
        f_BK = out.latent_acts[:, latents]
        n_rows = x_BZ.shape[0]
        for total, rows_BZ in ((self.x_f, x_BZ), (self.x_hat_f, out.x_hat)):
            centred_BMD = (rows_BZ - b_dec_Z).view(n_rows, 2, -1)
            total += torch.einsum("bmd,bk->mdk", centred_BMD, f_BK).double()
        self.f_sq += f_BK.double().pow(2).sum(0)
        self.n_active += (f_BK > 0).sum(0).double()


@torch.no_grad()
def latent_scaling(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    latents: np.ndarray,
    *,
    present: str = "ft",
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> LatentScaling:
    """Latent Scaling of ``latents`` (said to live in model ``present`` only) over every paired
    row of ``acts_pt`` / ``acts_ft``, in one streaming pass, in scaled space; see
    :class:`LatentScaling`. The betas use the latents' decoder rows in the present model and
    their inference-time activations."""
    n = paired_rows(cc.cfg, acts_pt, acts_ft)
    p = _side_index(present)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    cc = on_device(cc, device)
    idx_K = torch.as_tensor(np.asarray(latents, dtype=np.int64), device=cc.device)
    sums = _ScalingSums(cc.cfg.d_in, len(idx_K), cc.device)
    for start in range(0, n, batch_size):
        x_BZ = cc.scale(*_checked_rows(acts_pt, acts_ft, start, min(start + batch_size, n)))
        sums.add(x_BZ, crosscoder_forward(cc, x_BZ, use_threshold=True), idx_K, cc.b_dec)
    W_dec_K2D = cc.decoders()[idx_K].double()
    d_KD = W_dec_K2D[:, p]
    denom_K = d_KD.pow(2).sum(-1) * sums.f_sq
    proj_x_K2 = torch.einsum("mdk,kd->km", sums.x_f, d_KD)
    proj_rec_K2 = torch.einsum("mdk,kd->km", sums.x_hat_f, d_KD)
    own_K2 = torch.einsum("kmd,kd->km", W_dec_K2D, d_KD) * sums.f_sq[:, None]
    beta_err = ((proj_x_K2 - proj_rec_K2 + own_K2) / denom_K[:, None]).cpu().numpy()
    beta_rec = (proj_rec_K2 / denom_K[:, None]).cpu().numpy()
    a = 1 - p
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_err = beta_err[:, a] / beta_err[:, p]
        ratio_rec = beta_rec[:, a] / beta_rec[:, p]
    return LatentScaling(
        np.asarray(latents, dtype=np.int64),
        present,
        beta_err,
        beta_rec,
        ratio_err,
        ratio_rec,
        sums.n_active.cpu().numpy().astype(np.int64),
    )


def flag_artefacts(scaling: LatentScaling, *, max_ratio: float = 0.3) -> np.ndarray:
    """``[K]`` True where a latent's "only" is not confirmed: its error or reconstruction ratio
    is above ``max_ratio`` (the absent model carries the latent's direction after all), or it
    never fired on the data (no evidence)."""
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise ValueError(f"max_ratio={max_ratio} must be finite and > 0")
    ratios = np.stack([scaling.ratio_error, scaling.ratio_reconstruction])
    confirmed = np.isfinite(ratios).all(0) & (np.abs(ratios) <= max_ratio).all(0)
    return ~confirmed


def _checked_rows(
    acts_pt: ArrayLike, acts_ft: ArrayLike, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows ``start:stop`` of both stores as float32 CPU tensors, checked finite."""
    chunks = []
    for acts, side in zip((acts_pt, acts_ft), SIDES, strict=True):
        chunk = rows_numpy(acts, start, stop)
        raise_nonfinite(chunk, start, f"acts_{side}")
        chunks.append(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)))
    return chunks[0], chunks[1]


class CrosscoderEvaluation(NamedTuple):
    """Per-model quality and per-latent firing frequencies from one pass over an eval set."""

    metrics: dict[str, dict[str, float]]
    """Per model (keys :data:`SIDES`): ``schema.SAE_METRIC_KEYS``, raw space. ``l0``,
    ``dead_frac`` and ``dense_frac`` count the shared latents, so they agree across models."""
    latent_freq: np.ndarray
    """``[F]`` float64 fraction of eval tokens on which each latent fires."""


@torch.no_grad()
def evaluate_crosscoder(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> CrosscoderEvaluation:
    """Raw-space FVU, MSE, cosine, L0, dead and dense fractions of each model's reconstruction,
    by the SAE definitions (:func:`layerwise.sae.evaluate.evaluate_sae_detailed`: float64 sums
    over the whole set, variance about the set's own mean), with inference-time latents."""
    n = paired_rows(cc.cfg, acts_pt, acts_ft)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    cc = on_device(cc, device)
    d, f = cc.cfg.d_in, cc.cfg.d_latent
    sums = [_Sums(d, f, cc.device) for _ in SIDES]
    for start in range(0, n, batch_size):
        rows = _checked_rows(acts_pt, acts_ft, start, min(start + batch_size, n))
        out = crosscoder_forward(cc, cc.scale(*rows), use_threshold=True)
        for side_sums, x, x_hat in zip(sums, rows, unscale(out.x_hat, cc.cfg), strict=True):
            side_sums.add(x.to(cc.device), out.latent_acts, x_hat)
    results = [s.result(n, d, dense_threshold) for s in sums]
    metrics = {side: r.metrics for side, r in zip(SIDES, results, strict=True)}
    return CrosscoderEvaluation(metrics, results[0].feature_freq)
