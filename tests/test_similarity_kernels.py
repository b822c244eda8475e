"""Tests for layerwise.similarity._kernels: each fast path equals its plain counterpart
(``a @ b.T``, ``at @ at.T``, fancy indexing) to float rounding, on odd sizes that reach the
tails of every kernel."""

from __future__ import annotations

import pytest
import torch

from layerwise.similarity import _kernels
from layerwise.similarity._kernels import (
    Workspace,
    add_gram_upper,
    add_product,
    exact_fp32_matmul,
    fill_lower,
    matmul_nt,
)

# float32 products of ~300 unit-normal terms against the float64 product of the same inputs.
F32 = {"rtol": 1e-5, "atol": 1e-4}
F64 = {"rtol": 1e-12, "atol": 1e-12}


def token_major(rows: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A ``[rows, n]`` token-major matrix (features x tokens) with non-zero means."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, n, generator=gen, dtype=torch.float64) + 2.0).to(dtype)


def test_matmul_nt_equals_plain_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU float32 product (oneDNN when this torch has it) equals ``a @ b.T`` computed in
    float64; float64 inputs and the no-oneDNN fallback are ``a @ b.T`` itself."""
    a, b = token_major(24, 301, torch.float32, 0), token_major(17, 301, torch.float32, 1)
    exact = a.double() @ b.double().T
    torch.testing.assert_close(matmul_nt(a, b).double(), exact, **F32)
    torch.testing.assert_close((a @ b.T).double(), exact, **F32)
    a64, b64 = a.double(), b.double()
    assert torch.equal(matmul_nt(a64, b64), a64 @ b64.T)
    monkeypatch.setattr(_kernels, "onednn_linear", lambda: None)
    assert torch.equal(matmul_nt(a, b), a @ b.T)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_add_product_equals_plain_product(dtype: torch.dtype) -> None:
    """``out += A^T B`` from token-major inputs, accumulated into float64 ``out``."""
    at, bt = token_major(9, 301, dtype, 2), token_major(5, 301, dtype, 3)
    start = token_major(9, 5, torch.float64, 4)
    out = start.clone()
    add_product(out, at, bt)
    assert out.dtype == torch.float64
    tol = F64 if dtype == torch.float64 else F32
    torch.testing.assert_close(out, start + at.double() @ bt.double().T, **tol)


@pytest.mark.parametrize("dim", [6, 7], ids=["even", "odd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gram_upper_blocks_filled_equal_full_gram(dtype: torch.dtype, dim: int) -> None:
    """Upper blocks accumulated over two batches, completed by ``fill_lower``, equal the full
    ``sum A^T A``; until then the lower-left block stays zero."""
    batches = [token_major(dim, n, dtype, seed) for seed, n in ((5, 301), (6, 13))]
    out = torch.zeros(dim, dim, dtype=torch.float64)
    for at in batches:
        add_gram_upper(out, at)
    h = dim // 2
    assert torch.count_nonzero(out[h:, :h]) == 0
    exact = sum(at.double() @ at.double().T for at in batches)
    tol = F64 if dtype == torch.float64 else F32
    torch.testing.assert_close(fill_lower(out), exact, **tol)


def test_fill_lower_on_stacked_matrices() -> None:
    """Batched ``[..., D, D]`` input: every matrix is completed, the input is not modified."""
    a = torch.stack([token_major(7, 7, torch.float64, s) for s in range(6)])
    full = (a + a.mT).reshape(2, 3, 7, 7)  # exactly symmetric
    upper = full.clone()
    upper[..., 3:, :3] = 0.0
    before = upper.clone()
    assert torch.equal(fill_lower(upper), full)
    assert torch.equal(upper, before)


@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16, torch.float64])
def test_workspace_gather_equals_indexing(source: torch.dtype) -> None:
    """Gathered tokens equal ``h.reshape(-1, D)[idx].to(dtype)`` exactly, whether the buffer is
    reused or grown (small, large, small again)."""
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(4, 9, 5, generator=gen).to(source)
    ws = Workspace(5, torch.float32, torch.device("cpu"))
    for n in (3, 30, 11):
        idx = torch.randperm(36, generator=gen)[:n]
        got = ws.gather(h, idx, "x")
        assert got.shape == (n, 5) and got.dtype == torch.float32
        assert torch.equal(got, h.reshape(-1, 5)[idx].to(torch.float32))


def test_workspace_transposed_equals_plain_transpose() -> None:
    """Token-major copies equal ``(rows - shift).T`` exactly and are contiguous."""
    ws = Workspace(6, torch.float32, torch.device("cpu"))
    shift = token_major(6, 1, torch.float32, 8)[:, 0]
    for n in (4, 25, 9):
        rows = token_major(n, 6, torch.float32, n)
        plain = ws.transposed(rows, None, "xt")
        assert plain.is_contiguous() and torch.equal(plain, rows.T)
        shifted = ws.transposed(rows, shift, "yt")
        assert shifted.is_contiguous() and torch.equal(shifted, (rows - shift).T)


def test_exact_fp32_matmul_only_changes_cuda_float32() -> None:
    """Inside the context, float32 matmuls on CUDA run at "highest" precision (no TF32); the
    previous setting comes back after, and CPU or float64 work is left alone."""
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with exact_fp32_matmul(torch.device("cuda"), torch.float32):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
        for device, dtype in (("cpu", torch.float32), ("cuda", torch.float64)):
            with exact_fp32_matmul(torch.device(device), dtype):
                assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_products_are_full_float32() -> None:
    """With TF32 allowed outside, the moment products inside the context keep float32 accuracy
    (TF32's 10-bit mantissa would miss the float64 product by far more than this tolerance)."""
    at = token_major(64, 4096, torch.float32, 9).cuda()
    bt = token_major(48, 4096, torch.float32, 10).cuda()
    out = torch.zeros(64, 48, dtype=torch.float64, device="cuda")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with exact_fp32_matmul(at.device, torch.float32):
            add_product(out, at, bt)
    finally:
        torch.set_float32_matmul_precision(previous)
    exact = at.double() @ bt.double().T
    torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-2)
