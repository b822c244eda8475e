"""One token's hidden state per text and layer, for probes that read what a classifier reads.

The accumulator keeps token means (the paper's mean-pooled sentences); decoder-only classifiers
read the last real token instead, and BERT-style heads the first ([CLS]). This table holds the
chosen token of every analysis text at every layer, for PT and FT, filled batch by batch from
the same forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from layerwise.activations import pool_hidden


class PositionPool:
    """``[n_layers, n_texts, D]`` float32 tables of the ``first`` or ``last`` real token."""

    def __init__(
        self, n_layers: int, n_texts: int, dim: int, position: Literal["first", "last"]
    ) -> None:
        if position not in ("first", "last"):
            raise ValueError(f"position={position!r}; expected 'first' or 'last'")
        self.position = position
        self._tables = {w: np.full((n_layers, n_texts, dim), np.nan, np.float32) for w in "pf"}

    @torch.no_grad()
    def update(
        self,
        pt_layers: Sequence[torch.Tensor],
        ft_layers: Sequence[torch.Tensor],
        attention_mask: torch.Tensor,
        text_ids: Sequence[int] | np.ndarray,
    ) -> None:
        """Add a right-padded batch: per layer ``[B, T, D]`` states, mask ``[B, T]``."""
        ids = np.asarray(text_ids)
        for key, layers in (("p", pt_layers), ("f", ft_layers)):
            for layer, hidden in enumerate(layers):
                picked = pool_hidden(hidden, attention_mask, self.position)
                self._tables[key][layer, ids] = picked.float().cpu().numpy()

    def pooled(self, layer: int, which: Literal["pt", "ft"] = "pt") -> np.ndarray:
        """``[n_texts, D]``: the chosen token of every text at ``layer`` (NaN rows: not seen)."""
        return self._tables["p" if which == "pt" else "f"][layer]
