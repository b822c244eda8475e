"""Streaming per-layer PT vs FT similarity statistics, in bounded memory.

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
  the direct formula needs after centring, so the streamed value equals ``linear_cka`` on the
  concatenated tokens (to ~1e-12 with ``matmul_dtype=torch.float64``, ~1e-8 with the default
  float32 per-batch products; see the class docstring for why float32 is the default).
  A bootstrap would need the moments per resampled text, which is too big, so the CI is a
  leave-one-block-out (delete-a-group) jackknife over ``n_blocks`` blocks of texts: the moments
  are kept per block and a block is removed by subtracting its moments from the total.
* **Mean-pooled text representations** (sum of token vectors / count) of PT and FT at every
  layer, ``[n_texts, D]`` float32, for the linear probes (``layerwise.similarity.probes``).

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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from layerwise.similarity._kernels import (
    Workspace,
    add_gram_upper,
    add_product,
    exact_fp32_matmul,
    fill_lower,
)
from layerwise.similarity.intervals import bootstrap_ratio_ci, check_confidence, jackknife_ci
from layerwise.similarity.metrics import cka_from_moments, token_cosine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _BatchTokens:
    """Where one batch's masked-in tokens go, worked out once on the CPU from the mask.

    Tokens are grouped by jackknife block (stably, so token order within a block is unchanged):
    each block's tokens are then one contiguous slice of the gathered matrices.
    """

    n_rows: int
    flat: torch.Tensor
    """Each token's index into the flattened ``[B * T]`` positions (hidden states' device)."""
    rows: torch.Tensor
    """Each token's batch row (on the accumulator's device)."""
    texts: torch.Tensor
    """Each token's text id (on the accumulator's device)."""
    row_texts: torch.Tensor
    """Each batch row's text id (on the pooled sums' device)."""
    spans: list[tuple[int, int, int]]
    """``(block, start, stop)``: the token slice of each block present in the batch."""


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
        block_of: the jackknife block of each text (``[n_texts]``, values in
            ``0 .. n_blocks - 1``), instead of contiguous index blocks.

    Cost note: the floor is the ``D x D`` products, ~5 ``N D^2`` flops per layer (``X^T X`` and
    ``Y^T Y`` as upper blocks only) against ~24 ``N D^2`` per transformer layer and model, so
    the update costs a fraction of the forward passes and grows linearly with the number of
    layers passed (pass only the analysed layers to pay less). The float32 products run on
    oneDNN on CPU where torch has it (``_kernels.matmul_nt``).

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
        # Which jackknife block each text belongs to. Callers that batch texts block by block
        # (see the compare stage) make every batch touch one block: one matmul per product.
        self._block_of = torch.from_numpy(_block_assignment(block_of, n_texts, n_blocks))
        self.device = torch.device(device)
        self.pooled_device = (
            torch.device(pooled_device) if pooled_device is not None else self.device
        )
        self.matmul_dtype = matmul_dtype
        self._log_state_size()
        self._allocate_state()

    def _log_state_size(self) -> None:
        mem = self.estimate_memory_bytes(self.n_layers, self.dim, self.n_texts, self.n_blocks)
        logger.info(
            "LayerSimilarityAccumulator: %d layers, D=%d, %d texts, %d blocks, %s matmuls; "
            "state %.1f MB (moments %.1f MB, pooled %.1f MB on %s)",
            self.n_layers,
            self.dim,
            self.n_texts,
            self.n_blocks,
            self.matmul_dtype,
            mem["total"] / 1e6,
            mem["moments"] / 1e6,
            mem["pooled"] / 1e6,
            self.pooled_device,
        )

    def _allocate_state(self) -> None:
        n_layers, dim, n_texts, n_blocks = self.n_layers, self.dim, self.n_texts, self.n_blocks
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
        self._workspace = Workspace(dim, self.matmul_dtype, self.device)
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

    # ----------------------------------------------------------------------------------------
    # Streaming
    # ----------------------------------------------------------------------------------------

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
        self._check_batch(pt_layers, ft_layers, mask)
        ids = self._text_ids(text_ids, mask.shape[0])
        mask_cpu = mask.detach().to("cpu").bool()
        row_block = self._count_tokens(mask_cpu, ids)
        tokens = self._index_tokens(mask_cpu, ids, row_block, pt_layers[0].device)
        if tokens is None:
            return
        init_shift = self._start_shift()
        # One layer at a time: temporaries stay at [N, D] (large fresh allocations cost page
        # faults on CPU, and peak memory stays small for big models).
        with exact_fp32_matmul(self.device, self.matmul_dtype):
            for layer in range(self.n_layers):
                x = self._workspace.gather(pt_layers[layer], tokens.flat, "x")  # [N, D] views
                y = self._workspace.gather(ft_layers[layer], tokens.flat, "y")
                self._add_cosines(layer, x, y, tokens)
                self._add_pooled(layer, x, y, tokens)
                self._add_moments(layer, x, y, tokens, init_shift)

    def _check_batch(
        self,
        pt_layers: Sequence[torch.Tensor],
        ft_layers: Sequence[torch.Tensor],
        mask: torch.Tensor,
    ) -> None:
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

    def _text_ids(
        self, text_ids: Sequence[int] | np.ndarray | torch.Tensor, b: int
    ) -> torch.Tensor:
        """The batch rows' text ids as a CPU int64 ``[B]``, checked against ``n_texts``."""
        if isinstance(text_ids, torch.Tensor):
            ids = text_ids.detach().to("cpu", torch.long).reshape(-1)
        else:
            ids = torch.as_tensor(np.asarray(text_ids), dtype=torch.long).reshape(-1)
        if ids.numel() != b:
            raise ValueError(f"text_ids has {ids.numel()} entries for a batch of {b}")
        if b and (int(ids.min()) < 0 or int(ids.max()) >= self.n_texts):
            raise ValueError(f"text_ids must be in [0, {self.n_texts}), got {ids.tolist()}")
        return ids

    def _count_tokens(self, mask_cpu: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Add the batch's token counts per text and per block; returns each row's block."""
        row_counts = mask_cpu.sum(dim=1).to(torch.float64)
        row_block = self._block_of[ids]
        self._text_count.index_add_(0, ids, row_counts)
        self._block_n.index_add_(0, row_block, row_counts)
        return row_block

    def _index_tokens(
        self,
        mask_cpu: torch.Tensor,
        ids: torch.Tensor,
        row_block: torch.Tensor,
        source_device: torch.device,
    ) -> _BatchTokens | None:
        """The masked-in tokens grouped by block (None when the batch has none)."""
        flat = mask_cpu.reshape(-1).nonzero().squeeze(1)
        if flat.numel() == 0:
            return None
        rows = flat // mask_cpu.shape[1]
        tok_block = row_block[rows]
        order = torch.argsort(tok_block, stable=True)
        flat, rows = flat[order], rows[order]
        return _BatchTokens(
            n_rows=mask_cpu.shape[0],
            flat=flat.to(source_device),
            rows=rows.to(self.device),
            texts=ids[rows].to(self.device),
            row_texts=ids.to(self.pooled_device),
            spans=_block_spans(tok_block[order]),
        )

    def _start_shift(self) -> bool:
        """Allocate the per-layer shifts at the first float32 batch with tokens; True if this
        batch sets them (float64 moments need no shift)."""
        if self.matmul_dtype != torch.float32 or self._shift_x is not None:
            return False
        self._shift_x = torch.empty(
            self.n_layers, self.dim, dtype=self.matmul_dtype, device=self.device
        )
        self._shift_y = torch.empty_like(self._shift_x)
        return True

    def _add_cosines(
        self, layer: int, x: torch.Tensor, y: torch.Tensor, tokens: _BatchTokens
    ) -> None:
        """Token cosines, summed per text in float64."""
        cos = token_cosine(x, y)
        self._cos_sum[layer].index_add_(0, tokens.texts, cos.to(torch.float64))

    def _add_pooled(
        self, layer: int, x: torch.Tensor, y: torch.Tensor, tokens: _BatchTokens
    ) -> None:
        """Pooled sums: per batch row first (small), then into the per-text table."""
        for pool, z in ((self._pool_pt, x), (self._pool_ft, y)):
            row_sum = torch.zeros(
                tokens.n_rows, self.dim, dtype=self.matmul_dtype, device=self.device
            )
            row_sum.index_add_(0, tokens.rows, z)
            pool[layer].index_add_(
                0, tokens.row_texts, row_sum.to(self.pooled_device, torch.float32)
            )

    def _add_moments(
        self,
        layer: int,
        x: torch.Tensor,
        y: torch.Tensor,
        tokens: _BatchTokens,
        init_shift: bool,
    ) -> None:
        """Moments per block present in the batch (of the shifted tokens in float32 mode)."""
        shift_x, shift_y = self._layer_shift(layer, x, y, init_shift)
        for blk, lo, hi in tokens.spans:
            xt = self._workspace.transposed(x[lo:hi], shift_x, "xt")  # [D, n]
            yt = self._workspace.transposed(y[lo:hi], shift_y, "yt")
            self._block_sx[blk, layer].add_(xt.sum(dim=1))
            self._block_sy[blk, layer].add_(yt.sum(dim=1))
            add_gram_upper(self._block_xx[blk, layer], xt)
            add_gram_upper(self._block_yy[blk, layer], yt)
            add_product(self._block_xy[blk, layer], xt, yt)

    def _layer_shift(
        self, layer: int, x: torch.Tensor, y: torch.Tensor, init_shift: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This layer's reference points (set from this batch if it is the first), or None."""
        if self._shift_x is None or self._shift_y is None:
            return None, None
        if init_shift:
            self._shift_x[layer] = x.mean(dim=0)
            self._shift_y[layer] = y.mean(dim=0)
        return self._shift_x[layer], self._shift_y[layer]

    # ----------------------------------------------------------------------------------------
    # Results
    # ----------------------------------------------------------------------------------------

    def jackknife_cka(self, layer: int) -> tuple[float, np.ndarray]:
        """Full-data CKA of ``layer`` and its leave-one-block-out estimates (non-empty blocks).

        Each leave-out estimate is CKA of the moments ``total - block_j``, i.e. exactly
        ``linear_cka`` on all tokens except those of texts in block ``j``.
        """
        self._check_layer(layer)
        nb = self._block_n.to(self.device)
        n = nb.sum()
        bsx, bsy = self._block_sx[:, layer], self._block_sy[:, layer]
        bxx = fill_lower(self._block_xx[:, layer])
        byy = fill_lower(self._block_yy[:, layer])
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
        check_confidence(confidence)
        seen = (self._text_count > 0).numpy()
        cosine, cos_lo, cos_hi = self._cosine_with_ci(seen, n_boot, seed, confidence)
        total = self._text_count.numpy()[seen].sum()
        self._warn_if_few_blocks()
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

    def _cosine_with_ci(
        self, seen: np.ndarray, n_boot: int, seed: int, confidence: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-layer token-weighted mean cosine and its text-bootstrap CI (NaN without tokens)."""
        cos_sum = self._cos_sum.cpu().numpy()[:, seen]
        counts = self._text_count.numpy()[seen]
        total = counts.sum()
        if not total > 0:
            nan = np.full(self.n_layers, np.nan)
            return nan, nan, nan
        cos_lo, cos_hi = bootstrap_ratio_ci(cos_sum, counts, n_boot, seed, confidence)
        return cos_sum.sum(axis=1) / total, cos_lo, cos_hi

    def _warn_if_few_blocks(self) -> None:
        non_empty = int((self._block_n > 0).sum())
        if self.n_blocks < 2 or non_empty < 2:
            logger.warning(
                "CKA jackknife needs >= 2 non-empty blocks (have %d of %d): CKA CI is NaN",
                non_empty,
                self.n_blocks,
            )

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


def batch_blocks(batches: Sequence[np.ndarray], n_texts: int, n_blocks: int) -> np.ndarray:
    """Each text's jackknife block (``block_of``): batch ``b`` (length-sorted) goes to block
    ``b mod n_blocks``.

    So every block spans all text lengths (contiguous text-index blocks would follow the source
    file's order, e.g. BBC's label folders) and every batch updates one block only (one matmul
    per product). Every stage that compares two models' passes over the same batches uses it, so
    their CIs are built the same way.
    """
    block_of = np.zeros(n_texts, dtype=np.int64)
    for b, idx in enumerate(batches):
        block_of[idx] = b % n_blocks
    return block_of


def _block_assignment(
    block_of: np.ndarray | Sequence[int] | None, n_texts: int, n_blocks: int
) -> np.ndarray:
    """Each text's jackknife block, ``[n_texts]`` int64: ``block_of`` checked, or contiguous
    index blocks."""
    if block_of is None:
        block_of = np.arange(n_texts) * n_blocks // n_texts
    out = np.asarray(block_of, dtype=np.int64)
    if out.shape != (n_texts,) or out.min() < 0 or out.max() >= n_blocks:
        raise ValueError(
            f"block_of must give a block in 0..{n_blocks - 1} for each of {n_texts} texts"
        )
    return out


def _block_spans(sorted_blocks: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(block, start, stop)`` runs of a sorted per-token block tensor."""
    blocks, sizes = torch.unique_consecutive(sorted_blocks, return_counts=True)
    spans: list[tuple[int, int, int]] = []
    start = 0
    for blk, size in zip(blocks.tolist(), sizes.tolist(), strict=True):
        spans.append((blk, start, start + size))
        start += size
    return spans
