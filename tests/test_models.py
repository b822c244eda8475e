"""Device and precision choice: CUDA when present, bf16 only where the chosen device has it in
hardware (checked with torch.cuda patched, so it runs on any machine)."""

from __future__ import annotations

import pytest
import torch

from layerwise import models


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_precision_on_cuda_needs_native_bf16(monkeypatch, capability, expected) -> None:
    """V100 (7.0) and T4 (7.5) emulate bf16: auto keeps float32 there; A100/H100 get bf16."""
    asked = []

    def capability_of(device):
        asked.append(torch.device(device))
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation: yes
    assert models.autocast_dtype("auto", "cuda:1") is expected
    assert asked == [torch.device("cuda:1")]  # the chosen device, not the current one
    assert models.autocast_dtype("bfloat16", "cuda:1") is torch.bfloat16
    assert models.autocast_dtype("float32", "cuda:1") is None


def test_pick_device_takes_strings_and_auto(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.pick_device() == torch.device("cpu")
    assert models.pick_device("auto") == torch.device("cpu")
    assert models.pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.pick_device("auto") == torch.device("cuda")
