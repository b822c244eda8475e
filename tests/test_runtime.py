"""Tests for layerwise.runtime: the BLAS thread limit the probes run under, CUDA determinism."""

from __future__ import annotations

import os

import numpy as np
from threadpoolctl import threadpool_info

from layerwise.runtime import single_threaded_blas


def _blas_threads() -> list[int]:
    np.ones((4, 4)) @ np.ones((4, 4))  # make sure NumPy's BLAS is loaded
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_single_threaded_blas_limits_inside_and_restores_after() -> None:
    before = _blas_threads()
    assert before, "no BLAS library found by threadpoolctl"
    with single_threaded_blas():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_cuda_device_turns_on_deterministic_kernels(monkeypatch) -> None:
    """On a CUDA device the stage seeding sets cuBLAS's workspace and deterministic algorithms
    (checked here on CPU: no kernel runs, only the switches are read back)."""
    import torch

    from layerwise.runtime import seed_everything

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        seed_everything(0, device="cpu")
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        seed_everything(0, device="cuda")
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
