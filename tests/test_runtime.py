"""Tests for layerwise.runtime: the BLAS thread limit the probes run under."""

from __future__ import annotations

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
