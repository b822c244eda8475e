"""Layer-wise PT vs FT similarity: token cosine, linear CKA, mean-pooled features and probes.

The extraction loop streams batches of texts through a pre-trained (PT) and a fine-tuned (FT)
encoder. For every batch it has, per layer, hidden states of shape ``[B, T, D]``, a boolean token
mask ``[B, T]`` and the global indices of the batch rows. Holding every layer's tokens for the
whole corpus is out of the question (tens of GB), so :class:`LayerSimilarityAccumulator` keeps only
sufficient statistics:

* **Token cosine** (the paper's "mean over all non-padding tokens"): per text, the sum of
  ``cos(pt_token, ft_token)`` and the token count. The metric is ``sum(cos) / sum(count)``, and a
  percentile bootstrap over *texts* (tokens of one text are not independent) gives its CI.
* **Linear CKA** between the PT and FT token matrices, from feature-space moments (token count,
  column sums, ``X^T X``, ``Y^T Y``, ``X^T Y``) accumulated in float64. These are exactly what
  the direct formula needs after centring, so the streamed value equals :func:`linear_cka` on the
  concatenated tokens (to ~1e-12 with ``matmul_dtype=torch.float64``, ~1e-8 with the default
  float32 per-batch products; see the class docstring for why float32 is the default).
  A bootstrap would need the moments per resampled text, which is too big, so the CI is a
  leave-one-block-out (delete-a-group) jackknife over ``n_blocks`` contiguous blocks of text
  indices: the moments are kept per block and a block is removed by subtracting its moments
  from the total.
* **Mean-pooled text representations** (sum of token vectors / count) of PT and FT at every
  layer, ``[n_texts, D]`` float32, for the linear probes (:func:`probe_accuracy`).

Memory (float64 unless said otherwise, ``L`` = number of hidden-state layers):

* per-block moments: ``L * n_blocks * (3 D^2 + 2 D) * 8`` bytes. For ``D = 384``, ``L = 7``,
  ``n_blocks = 10`` this is about 248 MB; it grows with ``D^2``, so for ``D = 768`` it is ~1 GB
  and for ``D = 1024`` ~1.8 GB (lower ``n_blocks`` if that is a problem; 10 is plenty for an SE);
* per-text cosine sums and counts: ``(L + 1) * n_texts * 8`` bytes (small);
* pooled sums: ``2 * L * n_texts * D * 4`` bytes (float32), e.g. ~2.2 GB for 100k texts at
  ``D = 384``, ``L = 7``; they can live on another device (``pooled_device="cpu"``) than the
  moments;
* per-batch temporaries: one layer at a time, four reusable token workspaces (PT and FT tokens
  as ``[N_max, D]`` and token-major ``[D, N_max]``; ``N_max`` = most masked-in tokens in a
  batch) plus a few ``D x D`` products, e.g. ~50 MB for 32 x 128 tokens at ``D = 384`` in
  float64.

:meth:`LayerSimilarityAccumulator.estimate_memory_bytes` computes these numbers before allocating.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats

logger = logging.getLogger(__name__)

# Bound on the number of int64 draws materialised at once by the bootstrap (~16 MB per array).
_BOOT_CHUNK_ELEMS = 2_000_000
# Norm floor for token cosine: a zero vector gets cosine 0 instead of NaN (torch's convention).
_COS_EPS = 1e-12

__all__ = [
    "LayerSimilarityAccumulator",
    "ProbeResult",
    "bootstrap_ratio_ci",
    "cka_from_moments",
    "jackknife_ci",
    "linear_cka",
    "probe_accuracy",
]


# --------------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ratio_ci(
    num: np.ndarray,
    den: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of ``sum(num) / sum(den)`` resampling the units (texts).

    Why a ratio over texts: token metrics are means over tokens, but tokens within a text are
    correlated, so the independent units are texts; resampling texts with replacement and
    recomputing ``sum(num) / sum(den)`` (a ratio estimator) respects that and weights texts by their
    token count, exactly like the point estimate. A plain mean is the special case ``den = 1``.

    ``num`` is ``[n]`` or ``[k, n]`` (``k`` statistics sharing the denominator, e.g. layers: they
    get the *same* resamples, so their CIs are paired); ``den`` is ``[n]`` with non-negative
    entries and a positive sum. Resamples are drawn as per-unit multiplicities from
    ``numpy.random.default_rng(seed)`` in chunks (bounded memory), so a fixed seed gives identical
    CIs. Returns ``(lo, hi)`` with shape ``num.shape[:-1]`` (0-d arrays for 1-D ``num``; ``float()``
    them); NaN when there are no units.
    """
    _check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    num_arr = np.asarray(num, dtype=np.float64)
    den_arr = np.asarray(den, dtype=np.float64)
    squeeze = num_arr.ndim == 1
    num2 = np.atleast_2d(num_arr)
    if num2.ndim != 2 or den_arr.ndim != 1 or num2.shape[1] != den_arr.shape[0]:
        raise ValueError(f"bootstrap_ratio_ci: shapes {num_arr.shape} and {den_arr.shape} mismatch")
    n = den_arr.shape[0]
    out_shape = num_arr.shape[:-1]
    if n == 0:
        nan = np.full(out_shape, np.nan)
        return nan, nan.copy()
    if np.any(den_arr < 0) or not den_arr.sum() > 0:
        raise ValueError("bootstrap_ratio_ci: den must be non-negative with a positive sum")

    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMS // n)
    ratios = np.empty((n_boot, num2.shape[0]), dtype=np.float64)
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(c, n))
        idx += np.arange(c, dtype=idx.dtype)[:, None] * n
        weights = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios[done : done + c] = (weights @ num2.T) / (weights @ den_arr)[:, None]
        done += c
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(ratios, [alpha, 1.0 - alpha], axis=0)
    if squeeze:
        return lo.reshape(()), hi.reshape(())
    return lo.reshape(out_shape), hi.reshape(out_shape)


def jackknife_ci(
    full: float,
    leave_out_estimates: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Delete-a-group jackknife interval ``full ± t_{g-1} * SE`` around the full-data estimate.

    Why: for statistics like CKA that are smooth functions of additive moments, removing one of
    ``g`` groups at a time is cheap (subtract its moments) and gives
    ``SE^2 = (g - 1) / g * sum_j (theta_{-j} - mean(theta_{-j}))^2`` (Efron & Stein; for the mean
    it reduces to the usual ``s / sqrt(n)``). With few groups the Student ``t`` with ``g - 1``
    degrees of freedom is used instead of the normal quantile. The groups are treated as
    exchangeable (equal-weight formula); blocks of contiguous text indices of roughly equal size
    satisfy that well enough for an SE. ``bounds`` clips the interval to the statistic's range
    (CKA is in ``[0, 1]``). Returns ``(lo, hi, se)``; all NaN if fewer than 2 finite groups or a
    non-finite ``full``.
    """
    _check_confidence(confidence)
    theta = np.asarray(leave_out_estimates, dtype=np.float64).ravel()
    theta = theta[np.isfinite(theta)]
    g = theta.size
    if g < 2 or not math.isfinite(full):
        return math.nan, math.nan, math.nan
    se = math.sqrt((g - 1) / g * float(np.sum((theta - theta.mean()) ** 2)))
    q = float(stats.t.ppf(0.5 + confidence / 2.0, df=g - 1))
    lo, hi = full - q * se, full + q * se
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi, se


# --------------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------------


class LayerSimilarityAccumulator:
    """Streams PT/FT hidden states batch by batch into per-layer similarity statistics.

    Args:
        n_layers: number of hidden-state tensors per model and batch (``L + 1`` with embeddings,
            or fewer if the caller passes only the layers it analyses: cost is linear in it).
        dim: hidden size ``D``.
        n_texts: number of texts in the corpus; ``text_ids`` passed to :meth:`update` are global
            row indices in ``0 .. n_texts - 1``. A text may span several updates (its statistics
            add up).
        n_blocks: number of contiguous text-index blocks for the CKA jackknife; text ``i`` belongs
            to block ``i * n_blocks // n_texts`` unless ``block_of`` says otherwise. Memory grows
            linearly with it (module docstring).
            The jackknife treats blocks as exchangeable, so text indices should not be sorted by
            label, source or length (a shuffled split is fine); sorted indices make the SE
            conservative rather than wrong, since between-block differences inflate it.
        device: where the moments and per-text cosine sums live; use the model's device so the
            hot-path matmuls run there.
        pooled_device: where the pooled ``[n_texts, D]`` sums live (default: ``device``); ``"cpu"``
            saves accelerator memory for large corpora at the cost of a small copy per batch.
        matmul_dtype: dtype of the per-batch work (gathered tokens, cosines, cross-product
            matmuls); the accumulated moments are float64 either way. ``torch.float32`` (default)
            halves the cost of the dominant matmuls on CPU, which is what keeps the extraction
            loop near the forward pass's throughput (note below). It stays accurate because each
            batch's products are rounded once in float32 and summed across batches in float64,
            and the tokens are first shifted by a fixed per-layer reference point (the first
            batch's mean) so the later centring ``X^T X - n m m^T`` does not cancel: measured on
            all-MiniLM-L6-v2 hidden states (outlier dimensions with |mean| up to 24 std), CKA
            differs from the float64 direct formula by <= 2e-8 relative and cosine by <= 1e-8.
            ``torch.float64`` gives agreement to ~1e-12 at about twice the cost. TF32 is
            switched off for these matmuls on CUDA.

    Cost note: the floor is the ``D x D`` products, ~5 ``N D^2`` flops per layer (``X^T X`` and
    ``Y^T Y`` as upper blocks only) against ~24 ``N D^2`` per transformer layer and model, so
    the cost is linear in the number of layers passed (pass only the analysed layers to pay
    less). Measured (2-core AMD EPYC, all-MiniLM-L6-v2, 7 hidden states of both models, 1,000
    sentences in batches of 32): ``update`` costs ~7.5 % of the two forward passes with the
    products on oneDNN (:func:`_matmul_nt`), ~14 % with torch's default float32 matmul.

    All accumulated state is float64 except the pooled sums (float32, accumulated from per-batch
    row sums). Hidden states of any floating dtype/device are accepted.
    """

    def __init__(
        self,
        n_layers: int,
        dim: int,
        n_texts: int,
        n_blocks: int = 10,
        device: str | torch.device = "cpu",
        pooled_device: str | torch.device | None = None,
        matmul_dtype: torch.dtype = torch.float32,
        block_of: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        if n_layers < 1 or dim < 1 or n_texts < 1 or n_blocks < 1:
            raise ValueError(
                f"need positive sizes, got n_layers={n_layers} dim={dim} n_texts={n_texts} "
                f"n_blocks={n_blocks}"
            )
        if matmul_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64: {matmul_dtype}")
        self.n_layers = n_layers
        self.dim = dim
        self.n_texts = n_texts
        self.n_blocks = n_blocks
        if block_of is None:
            block_of = np.arange(n_texts) * n_blocks // n_texts
        block_of = np.asarray(block_of, dtype=np.int64)
        if block_of.shape != (n_texts,) or block_of.min() < 0 or block_of.max() >= n_blocks:
            raise ValueError(
                f"block_of must give a block in 0..{n_blocks - 1} for each of {n_texts} texts"
            )
        # Which jackknife block each text belongs to. Callers that batch texts block by block
        # (see compare) make every batch touch one block: one matmul per product and layer.
        self._block_of = torch.from_numpy(block_of)
        self.device = torch.device(device)
        self.pooled_device = (
            torch.device(pooled_device) if pooled_device is not None else self.device
        )
        self.matmul_dtype = matmul_dtype

        mem = self.estimate_memory_bytes(n_layers, dim, n_texts, n_blocks)
        logger.info(
            "LayerSimilarityAccumulator: %d layers, D=%d, %d texts, %d blocks, %s matmuls; "
            "state %.1f MB (moments %.1f MB, pooled %.1f MB on %s)",
            n_layers,
            dim,
            n_texts,
            n_blocks,
            matmul_dtype,
            mem["total"] / 1e6,
            mem["moments"] / 1e6,
            mem["pooled"] / 1e6,
            self.pooled_device,
        )

        f64 = {"dtype": torch.float64, "device": self.device}
        # Per-text token counts (shared by all layers: the mask is the same) and block counts are
        # tiny and updated from CPU-side indices, so they stay on the CPU (no device sync).
        self._text_count = torch.zeros(n_texts, dtype=torch.float64)
        self._block_n = torch.zeros(n_blocks, dtype=torch.float64)
        self._cos_sum = torch.zeros(n_layers, n_texts, **f64)
        # Moments are block-major so that one block's [layers, D, D] slab is contiguous and a
        # batched matmul can accumulate into it in place.
        self._block_sx = torch.zeros(n_blocks, n_layers, dim, **f64)
        self._block_sy = torch.zeros(n_blocks, n_layers, dim, **f64)
        self._block_xx = torch.zeros(n_blocks, n_layers, dim, dim, **f64)
        self._block_yy = torch.zeros(n_blocks, n_layers, dim, dim, **f64)
        self._block_xy = torch.zeros(n_blocks, n_layers, dim, dim, **f64)
        # Fixed per-layer reference points (mean of the first batch's tokens) subtracted before
        # the moments; CKA is shift invariant, and the shift keeps the moments well conditioned.
        self._shift_x: torch.Tensor | None = None
        self._shift_y: torch.Tensor | None = None
        self._workspace: dict[str, torch.Tensor] = {}
        f32p = {"dtype": torch.float32, "device": self.pooled_device}
        self._pool_pt = torch.zeros(n_layers, n_texts, dim, **f32p)
        self._pool_ft = torch.zeros(n_layers, n_texts, dim, **f32p)

    @staticmethod
    def estimate_memory_bytes(
        n_layers: int, dim: int, n_texts: int, n_blocks: int = 10
    ) -> dict[str, int]:
        """Bytes of state the accumulator allocates, by part, so callers can check before."""
        moments = n_blocks * n_layers * (3 * dim * dim + 2 * dim) * 8 + n_blocks * 8
        per_text = (n_layers + 1) * n_texts * 8
        pooled = 2 * n_layers * n_texts * dim * 4
        return {
            "moments": moments,
            "per_text": per_text,
            "pooled": pooled,
            "total": moments + per_text + pooled,
        }

    @property
    def n_tokens(self) -> int:
        """Total number of (masked-in) tokens seen so far."""
        return int(self._block_n.sum().item())

    def text_token_counts(self) -> np.ndarray:
        """Tokens seen per text, ``[n_texts]`` int64 (0 = text never seen or fully masked)."""
        return self._text_count.numpy().astype(np.int64)

    @torch.no_grad()
    def update(
        self,
        pt_layers: Sequence[torch.Tensor],
        ft_layers: Sequence[torch.Tensor],
        mask: torch.Tensor,
        text_ids: Sequence[int] | np.ndarray | torch.Tensor,
    ) -> None:
        """Add a batch: ``n_layers`` PT and FT tensors ``[B, T, D]``, mask ``[B, T]``, ids ``[B]``.

        Only masked-in tokens are gathered (so padding and its length have no effect). Per layer
        and per block present in the batch (usually one; a few at most when batches cover
        contiguous text ranges) there is one matmul per cross-product (``X^T X`` and ``Y^T Y`` as
        three half-size upper blocks), plus a few reductions and ``index_add_``; no Python loop
        over rows or tokens. Layers are processed one at a time so temporaries stay ``[N, D]``.
        Index bookkeeping is done on the CPU from the mask (one small device-to-host copy per
        batch). ``text_ids`` may repeat within or across batches: statistics of a text add up.
        """
        if len(pt_layers) != self.n_layers or len(ft_layers) != self.n_layers:
            raise ValueError(
                f"expected {self.n_layers} layers per model, got {len(pt_layers)} (PT) and "
                f"{len(ft_layers)} (FT)"
            )
        if mask.ndim != 2:
            raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
        b, t = mask.shape
        for name, layers in (("PT", pt_layers), ("FT", ft_layers)):
            for i, h in enumerate(layers):
                if tuple(h.shape) != (b, t, self.dim):
                    raise ValueError(
                        f"{name} layer {i} has shape {tuple(h.shape)}, expected {(b, t, self.dim)}"
                    )

        if isinstance(text_ids, torch.Tensor):
            ids = text_ids.detach().to("cpu", torch.long).reshape(-1)
        else:
            ids = torch.as_tensor(np.asarray(text_ids), dtype=torch.long).reshape(-1)
        if ids.numel() != b:
            raise ValueError(f"text_ids has {ids.numel()} entries for a batch of {b}")
        if b and (int(ids.min()) < 0 or int(ids.max()) >= self.n_texts):
            raise ValueError(f"text_ids must be in [0, {self.n_texts}), got {ids.tolist()}")

        mask_cpu = mask.detach().to("cpu").bool()
        row_counts = mask_cpu.sum(dim=1).to(torch.float64)
        row_block = self._block_of[ids]
        self._text_count.index_add_(0, ids, row_counts)
        self._block_n.index_add_(0, row_block, row_counts)

        flat = mask_cpu.reshape(-1).nonzero().squeeze(1)
        n_tok = flat.numel()
        if n_tok == 0:
            return
        rows = flat // t
        # Group tokens by block (stable: token order within a block is unchanged) so each block's
        # tokens are a contiguous slice of the gathered matrices.
        tok_block = row_block[rows]
        order = torch.argsort(tok_block, stable=True)
        flat, rows = flat[order], rows[order]
        blocks, sizes = torch.unique_consecutive(tok_block[order], return_counts=True)
        spans: list[tuple[int, int, int]] = []
        start = 0
        for blk, size in zip(blocks.tolist(), sizes.tolist(), strict=True):
            spans.append((blk, start, start + size))
            start += size

        flat_src = flat.to(pt_layers[0].device)
        rows_dev = rows.to(self.device)
        tok_text_dev = ids[rows].to(self.device)
        ids_pool = ids.to(self.pooled_device)

        dt = self.matmul_dtype
        shift = dt == torch.float32
        if shift and self._shift_x is None:
            self._shift_x = torch.empty(self.n_layers, self.dim, dtype=dt, device=self.device)
            self._shift_y = torch.empty_like(self._shift_x)
            init_shift = True
        else:
            init_shift = False

        # One layer at a time: temporaries stay at [N, D] (large fresh allocations cost page
        # faults on CPU, and peak memory stays small for big models).
        with _exact_fp32_matmul(self.device, dt):
            for layer in range(self.n_layers):
                x = self._gather(pt_layers[layer], flat_src, "x")  # [N, D] workspace views
                y = self._gather(ft_layers[layer], flat_src, "y")

                # Token cosine, summed per text in float64.
                dot = torch.linalg.vecdot(x, y)
                norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(y, dim=1)
                cos = dot / norms.clamp_min(_COS_EPS)
                self._cos_sum[layer].index_add_(0, tok_text_dev, cos.to(torch.float64))

                # Pooled sums: per batch row first (small), then into the per-text table.
                for pool, z in ((self._pool_pt, x), (self._pool_ft, y)):
                    row_sum = torch.zeros(b, self.dim, dtype=dt, device=self.device)
                    row_sum.index_add_(0, rows_dev, z)
                    pool[layer].index_add_(
                        0, ids_pool, row_sum.to(self.pooled_device, torch.float32)
                    )

                # Moments per block (of the shifted tokens in float32 mode).
                shift_x = shift_y = None
                if shift:
                    assert self._shift_x is not None and self._shift_y is not None
                    if init_shift:
                        self._shift_x[layer] = x.mean(dim=0)
                        self._shift_y[layer] = y.mean(dim=0)
                    shift_x, shift_y = self._shift_x[layer], self._shift_y[layer]
                for blk, lo, hi in spans:
                    # Token-major [D, n] copies (shift fused in): the products contract over
                    # tokens, and every matmul kernel wants the contracted axis contiguous.
                    xt = self._transposed(x[lo:hi], shift_x, "xt")
                    yt = self._transposed(y[lo:hi], shift_y, "yt")
                    self._block_sx[blk, layer].add_(xt.sum(dim=1))
                    self._block_sy[blk, layer].add_(yt.sum(dim=1))
                    _add_gram_upper(self._block_xx[blk, layer], xt)
                    _add_gram_upper(self._block_yy[blk, layer], yt)
                    _add_product(self._block_xy[blk, layer], xt, yt)

    def _transposed(
        self, rows: torch.Tensor, shift: torch.Tensor | None, slot: str
    ) -> torch.Tensor:
        """``(rows - shift)^T`` as a contiguous ``[D, n]`` view of a reusable workspace."""
        n = rows.shape[0]
        buf = self._workspace.get(slot)
        if buf is None or buf.numel() < self.dim * n:
            buf = torch.empty(self.dim * (n + n // 4), dtype=rows.dtype, device=rows.device)
            self._workspace[slot] = buf
        out = buf[: self.dim * n].view(self.dim, n)
        if shift is None:
            out.copy_(rows.T)
        else:
            torch.sub(rows.T, shift[:, None], out=out)
        return out

    def _gather(self, h: torch.Tensor, flat_idx: torch.Tensor, slot: str) -> torch.Tensor:
        """Masked-in tokens of ``h [B, T, D]`` as ``[N, D]`` in the matmul dtype.

        The result is a view of a reusable workspace (valid until the next call with the same
        ``slot``): fresh multi-MB allocations per layer cost page faults on CPU.
        """
        n = flat_idx.numel()
        buf = self._workspace.get(slot)
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(n + n // 4, self.dim, dtype=self.matmul_dtype, device=self.device)
            self._workspace[slot] = buf
        out = buf[:n]
        tokens = h.reshape(-1, self.dim)
        if tokens.dtype == out.dtype and tokens.device == out.device:
            torch.index_select(tokens, 0, flat_idx, out=out)
        else:
            out.copy_(tokens.index_select(0, flat_idx))
        return out

    def jackknife_cka(self, layer: int) -> tuple[float, np.ndarray]:
        """Full-data CKA of ``layer`` and its leave-one-block-out estimates (non-empty blocks).

        Each leave-out estimate is CKA of the moments ``total - block_j``, i.e. exactly
        :func:`linear_cka` on all tokens except those of texts in block ``j``.
        """
        self._check_layer(layer)
        nb = self._block_n.to(self.device)
        n = nb.sum()
        bsx, bsy = self._block_sx[:, layer], self._block_sy[:, layer]
        bxx = _fill_lower(self._block_xx[:, layer])
        byy = _fill_lower(self._block_yy[:, layer])
        bxy = self._block_xy[:, layer]
        sx, sy, xx, yy, xy = bsx.sum(0), bsy.sum(0), bxx.sum(0), byy.sum(0), bxy.sum(0)
        full = cka_from_moments(n, sx, sy, xx, yy, xy)
        leave_out = [
            cka_from_moments(
                n - nb[j], sx - bsx[j], sy - bsy[j], xx - bxx[j], yy - byy[j], xy - bxy[j]
            )
            for j in range(self.n_blocks)
            if self._block_n[j] > 0
        ]
        return full, np.asarray(leave_out, dtype=np.float64)

    def result(
        self, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
    ) -> list[dict[str, Any]]:
        """Per-layer metrics with CIs, one dict per layer (``layer`` = hidden-state index).

        Keys: ``layer``, ``cosine``, ``cosine_lo``, ``cosine_hi`` (token-weighted mean cosine and
        its text-bootstrap percentile CI; all layers share the resamples), ``cka``, ``cka_lo``,
        ``cka_hi``, ``cka_se`` (full-data linear CKA, block-jackknife SE and t interval clipped to
        [0, 1]), ``n_tokens``, ``n_texts`` (texts with at least one token). Values are NaN where
        undefined (no tokens, zero variance, fewer than 2 non-empty blocks).
        """
        _check_confidence(confidence)
        seen = (self._text_count > 0).numpy()
        cos_sum = self._cos_sum.cpu().numpy()[:, seen]
        counts = self._text_count.numpy()[seen]
        total = counts.sum()
        if total > 0:
            cosine = cos_sum.sum(axis=1) / total
            cos_lo, cos_hi = bootstrap_ratio_ci(cos_sum, counts, n_boot, seed, confidence)
        else:
            cosine = cos_lo = cos_hi = np.full(self.n_layers, np.nan)

        if self.n_blocks < 2 or int((self._block_n > 0).sum()) < 2:
            logger.warning(
                "CKA jackknife needs >= 2 non-empty blocks (have %d of %d): CKA CI is NaN",
                int((self._block_n > 0).sum()),
                self.n_blocks,
            )
        out = []
        for layer in range(self.n_layers):
            cka, leave_out = self.jackknife_cka(layer)
            lo, hi, se = jackknife_ci(cka, leave_out, confidence, bounds=(0.0, 1.0))
            out.append(
                {
                    "layer": layer,
                    "cosine": float(cosine[layer]),
                    "cosine_lo": float(cos_lo[layer]),
                    "cosine_hi": float(cos_hi[layer]),
                    "cka": cka,
                    "cka_lo": lo,
                    "cka_hi": hi,
                    "cka_se": se,
                    "n_tokens": int(total),
                    "n_texts": int(seen.sum()),
                }
            )
        return out

    def pooled(self, layer: int, which: Literal["pt", "ft"] = "pt") -> np.ndarray:
        """Mean-pooled representations ``[n_texts, D]`` float32 of ``which`` model at ``layer``.

        Row ``i`` is the mean of text ``i``'s masked-in token vectors; texts with no tokens are
        NaN rows (logged), so a probe over them fails loudly instead of learning from zeros —
        filter with :meth:`text_token_counts`.
        """
        self._check_layer(layer)
        if which not in ("pt", "ft"):
            raise ValueError(f"which must be 'pt' or 'ft', got {which!r}")
        sums = (self._pool_pt if which == "pt" else self._pool_ft)[layer]
        counts = self._text_count.to(self.pooled_device)
        with torch.no_grad():
            mean = (sums.to(torch.float64) / counts[:, None]).to(torch.float32)
        empty = int((counts == 0).sum())
        if empty:
            logger.warning(
                "pooled(%d, %r): %d texts have no tokens (NaN rows)", layer, which, empty
            )
        return mean.cpu().numpy()

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.n_layers})")


def _add_gram_upper(out: torch.Tensor, at: torch.Tensor) -> None:
    """``out += A^T A`` for the upper blocks only, from ``at = A^T`` (``[D, n]``);
    :func:`_fill_lower` completes it.

    ``A^T A`` is symmetric, so with ``A = [A1 A2]`` (column halves) the row block
    ``A1^T [A1 A2]`` and the block ``A2^T A2`` suffice: 3/4 of the flops on the dominant cost of
    :meth:`LayerSimilarityAccumulator.update`. The lower-left block of ``out`` is left untouched
    (zero).
    """
    h = at.shape[0] // 2
    _add_product(out[:h], at[:h], at)
    _add_product(out[h:, h:], at[h:], at[h:])


def _fill_lower(upper: torch.Tensor) -> torch.Tensor:
    """Full symmetric ``[..., D, D]`` matrices from the upper blocks of :func:`_add_gram_upper`."""
    full = upper.clone()
    h = upper.shape[-1] // 2
    full[..., h:, :h] = upper[..., :h, h:].mT
    return full


def _add_product(out: torch.Tensor, at: torch.Tensor, bt: torch.Tensor) -> None:
    """``out += A^T B`` from token-major ``at = A^T`` and ``bt = B^T`` (``[Da, n]``, ``[Db, n]``),
    ``out`` float64: in place for float64 inputs, else one float32 product added in float64."""
    if at.dtype == torch.float64:
        out.addmm_(at, bt.T)
    else:
        out.add_(_matmul_nt(at, bt))


def _matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for float32 ``[M, K]`` and ``[N, K]`` row-major tensors (K contiguous).

    Why not always ``a @ b.T``: on CPU, torch's float32 matmul is MKL's sgemm, which on
    non-Intel x86 CPUs (AMD EPYC here) runs a code path about 2x slower than oneDNN's
    AVX-512 kernel; these products are the accumulator's main cost beside the forward passes.
    So CPU float32 products go through oneDNN's linear op (``input @ weight.T``, full float32:
    no reduced-precision math mode is set) when this torch build has it, and through ``@``
    everywhere else. The choice is fixed per process (no timing-based switching), so results are
    reproducible run to run.
    """
    op = _onednn_linear() if a.device.type == "cpu" and a.dtype == torch.float32 else None
    if op is None:
        return a @ b.T
    return op(a, b, None, "none", [], "")


@functools.cache
def _onednn_linear() -> Any:
    """oneDNN's float32 linear op of this torch build, or None (no oneDNN, or a reduced-precision
    float32 math mode is set for it, which would change the numbers)."""
    if not torch.backends.mkldnn.is_available():
        return None
    matmul_backend = getattr(torch.backends.mkldnn, "matmul", None)
    precision = getattr(matmul_backend, "fp32_precision", "none")
    if precision not in ("none", "ieee"):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


@contextmanager
def _exact_fp32_matmul(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Disable TF32 (10-bit mantissa) for float32 moment matmuls on CUDA, restoring it after."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _as_float64_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype=torch.float64)
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Linear probes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated probe accuracy with a text-bootstrap CI.

    ``correct[i]`` says whether text ``i``'s out-of-fold prediction was right (kept so paired
    comparisons between layers/models can be made on the same texts); ``folds`` is the number of
    folds actually used (it may have been reduced for a rare class).
    """

    accuracy: float
    lo: float
    hi: float
    correct: np.ndarray
    folds: int


def probe_accuracy(
    features: np.ndarray,
    labels: np.ndarray | Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 1000,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> ProbeResult:
    """Accuracy of a linear probe (StandardScaler + LogisticRegression), out-of-fold predictions.

    Why this design: a linear probe measures how linearly decodable the label is from a layer's
    pooled representation; standardising first makes the L2 penalty treat all dimensions alike
    (hidden states have a few huge-magnitude dimensions). Every text gets exactly one out-of-fold
    prediction (``cross_val_predict`` over a seeded shuffled ``StratifiedKFold``), so accuracy is
    a mean over texts and its CI is a percentile bootstrap over texts (seeded, deterministic).

    If the rarest class has fewer members than ``folds``, folds are reduced to that count (at
    least 2) with a logged warning. Raises ``ValueError`` for fewer than 2 classes, mismatched
    lengths or non-finite features.
    """
    # Imported here: sklearn is only needed by the probe stage, not by the extraction loop.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from layerwise.runtime import single_threaded_blas

    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"features must be [n, D], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [n] with n = {x.shape[0]}, got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN/inf (texts without tokens? filter them first)")
    classes, class_counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"probe needs at least 2 classes, got {classes.size} ({classes.tolist()})")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    smallest = int(class_counts.min())
    n_folds = folds
    if smallest < folds:
        n_folds = max(2, smallest)
        logger.warning(
            "probe: smallest class has %d members < %d folds; using %d folds",
            smallest,
            folds,
            n_folds,
        )

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with single_threaded_blas():
        pred = cross_val_predict(model, x, y, cv=cv)
    correct = np.asarray(pred == y, dtype=bool)
    accuracy = float(correct.mean())
    lo, hi = bootstrap_ratio_ci(
        correct.astype(np.float64), np.ones(correct.size), n_boot, seed, confidence
    )
    return ProbeResult(
        accuracy=accuracy, lo=float(lo), hi=float(hi), correct=correct, folds=n_folds
    )
