"""Inputs shared by the SAE tests: realistic activations and a hand-built exact SAE."""

from __future__ import annotations

import numpy as np
import torch

from layerwise.sae.model import SAEConfig, SparseAutoencoder


def acts(n: int = 512, d: int = 16, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Anisotropic activations with a nonzero mean (like real hidden states)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d) + rng.normal(0, 2.0, d)
    return x.astype(dtype)


def identity_sae(d: int, scale_factor: float = 1.0) -> SparseAutoencoder:
    """d_sae = 2d, W_enc = [I, -I], W_dec = [I; -I]: ReLU(x) - ReLU(-x) = x exactly."""
    eye = torch.eye(d)
    cfg = SAEConfig(d_in=d, d_sae=2 * d, scale_factor=scale_factor)
    return SparseAutoencoder.from_weights(
        cfg,
        torch.cat([eye, -eye], 1),
        torch.zeros(2 * d),
        torch.cat([eye, -eye], 0),
        torch.zeros(d),
    )
