"""The accumulator's fast paths, apart from its maths: reusable token workspaces, token-major
moment products (oneDNN's float32 linear on CPU), symmetric Gram halves, exact float32 on CUDA.

Each function here has a plain counterpart (``a @ b.T``, ``at @ at.T``, fancy indexing) that
gives the same numbers up to float rounding; the tests hold them to that. They exist because
the moment products are the accumulator's main cost beside the two forward passes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class Workspace:
    """Token buffers reused across layers and batches, grown by a quarter when too small.

    Why: fresh multi-MB allocations per layer cost page faults on CPU. Each ``slot`` names one
    buffer; a returned view is valid until the next call with the same slot.
    """

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim = dim
        self.dtype = dtype
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def gather(self, h: torch.Tensor, flat_idx: torch.Tensor, slot: str) -> torch.Tensor:
        """Rows ``flat_idx`` of ``h [B, T, D]`` flattened to tokens, as ``[N, D]`` in ``dtype``
        (plain form: ``h.reshape(-1, D)[flat_idx].to(dtype)``)."""
        n = flat_idx.numel()
        buf = self._buffers.get(slot)
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(n + n // 4, self.dim, dtype=self.dtype, device=self.device)
            self._buffers[slot] = buf
        out = buf[:n]
        tokens = h.reshape(-1, self.dim)
        if tokens.dtype == out.dtype and tokens.device == out.device:
            torch.index_select(tokens, 0, flat_idx, out=out)
        else:
            out.copy_(tokens.index_select(0, flat_idx))
        return out

    def transposed(self, rows: torch.Tensor, shift: torch.Tensor | None, slot: str) -> torch.Tensor:
        """``(rows - shift)^T`` as a contiguous token-major ``[D, n]`` view (shift fused in).

        Token-major because the moment products contract over tokens, and every matmul kernel
        wants the contracted axis contiguous.
        """
        n = rows.shape[0]
        buf = self._buffers.get(slot)
        if buf is None or buf.numel() < self.dim * n:
            buf = torch.empty(self.dim * (n + n // 4), dtype=rows.dtype, device=rows.device)
            self._buffers[slot] = buf
        out = buf[: self.dim * n].view(self.dim, n)
        if shift is None:
            out.copy_(rows.T)
        else:
            torch.sub(rows.T, shift[:, None], out=out)
        return out


def add_gram_upper(out: torch.Tensor, at: torch.Tensor) -> None:
    """``out += A^T A`` for the upper blocks only, from ``at = A^T`` (``[D, n]``);
    :func:`fill_lower` completes it.

    ``A^T A`` is symmetric, so with ``A = [A1 A2]`` (column halves) the row block
    ``A1^T [A1 A2]`` and the block ``A2^T A2`` suffice: 3/4 of the flops on the dominant cost of
    the accumulator's update. The lower-left block of ``out`` is left untouched (zero).
    """
    h = at.shape[0] // 2
    add_product(out[:h], at[:h], at)
    add_product(out[h:, h:], at[h:], at[h:])


def fill_lower(upper: torch.Tensor) -> torch.Tensor:
    """Full symmetric ``[..., D, D]`` matrices from the upper blocks of :func:`add_gram_upper`."""
    full = upper.clone()
    h = upper.shape[-1] // 2
    full[..., h:, :h] = upper[..., :h, h:].mT
    return full


def add_product(out: torch.Tensor, at: torch.Tensor, bt: torch.Tensor) -> None:
    """``out += A^T B`` from token-major ``at = A^T`` and ``bt = B^T`` (``[Da, n]``, ``[Db, n]``),
    ``out`` float64: in place for float64 inputs, else one float32 product added in float64."""
    if at.dtype == torch.float64:
        out.addmm_(at, bt.T)
    else:
        out.add_(matmul_nt(at, bt))


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for float32 ``[M, K]`` and ``[N, K]`` row-major tensors (K contiguous).

    Why not always ``a @ b.T``: on CPU, torch's float32 matmul is MKL's sgemm, which on
    non-Intel x86 CPUs runs a generic code path, slower than oneDNN's AVX-512 kernel. So CPU
    float32 products go through oneDNN's linear op (``input @ weight.T``, full float32: no
    reduced-precision math mode is set) when this torch build has it, and through ``@``
    everywhere else. The choice is fixed per process (no timing-based switching), so results are
    reproducible run to run.
    """
    op = onednn_linear() if a.device.type == "cpu" and a.dtype == torch.float32 else None
    if op is None:
        return a @ b.T
    return op(a, b, None, "none", [], "")


@functools.cache
def onednn_linear() -> Any:
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
def exact_fp32_matmul(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
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
