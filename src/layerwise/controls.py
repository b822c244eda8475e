"""The layer-reset test: where the task lives, measured without any similarity metric.

The fine-tuned classifier's encoder blocks are reset to their pre-trained weights, bottom-up
(blocks 1..k) or top-down (blocks L-k+1..L), and its accuracy is measured for every k (the layer
ablation of Merchant et al. 2020). If fine-tuning put the task into the late blocks, resetting
the early ones costs little and resetting the late ones costs most of the gain.

Only the blocks are reset: the embeddings, any final norm and the classification head stay
fine-tuned, so k = 0 is the FT classifier itself and k = L is the PT blocks under the FT head.
Blocks are reached through :func:`layerwise.architectures.block_list` alone, so every supported
family works the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from layerwise.architectures import block_list, layout_of
from layerwise.models import ModelError

logger = logging.getLogger(__name__)

DIRECTIONS = ("bottom_up", "top_down")
"""``bottom_up`` resets blocks 1..k, ``top_down`` blocks L-k+1..L."""
MIDPOINT_LOST_GAIN = 0.5
"""A reset curve's midpoint is the smallest k whose reset loses at least this share of the gain."""


@dataclass(frozen=True)
class ResetConfig:
    """One configuration of the test: ``k`` blocks reset from one end of the encoder."""

    direction: str
    k: int
    blocks: tuple[int, ...]
    """The reset blocks, 1-based, ascending (block ``b`` makes hidden state ``b``)."""

    @property
    def label(self) -> str:
        """The reset range as text, always ``first-last`` (``"1-3"``, ``"6-6"``), so a reader
        splits it one way; ``""`` when nothing is reset."""
        return f"{self.blocks[0]}-{self.blocks[-1]}" if self.blocks else ""


def reset_schedule(n_blocks: int) -> list[ResetConfig]:
    """Every configuration of the test, direction by direction, k = 0..L. The two directions
    share k = 0 (nothing reset) and k = L (everything reset): a caller that caches by
    ``blocks`` evaluates those once."""
    if n_blocks < 1:
        raise ValueError(f"a reset schedule needs at least one block, got {n_blocks}")
    schedule = []
    for direction in DIRECTIONS:
        for k in range(n_blocks + 1):
            first = 1 if direction == "bottom_up" else n_blocks - k + 1
            schedule.append(ResetConfig(direction, k, tuple(range(first, first + k))))
    return schedule


def lost_gain(accuracy: float, ft_accuracy: float, majority_accuracy: float) -> float:
    """The share of fine-tuning's gain over the majority class that a reset loses:
    ``(FT acc - acc) / (FT acc - majority acc)``; 0 = nothing lost, 1 = back to the majority
    class. NaN when the fine-tune does not beat the majority class: there is no gain to lose,
    and the ratio would flip its meaning."""
    gain = ft_accuracy - majority_accuracy
    if not gain > 0:
        return math.nan
    return (ft_accuracy - accuracy) / gain


def midpoint(lost_gains: Sequence[float], threshold: float = MIDPOINT_LOST_GAIN) -> int | None:
    """The smallest k (the index into ``lost_gains``, one per k = 0..L) at which the reset loses
    at least ``threshold`` of the gain; None when no k does (or the gains are undefined)."""
    for k, lost in enumerate(lost_gains):
        if lost >= threshold:
            return k
    return None


def check_same_blocks(ft_config: Any, pt_config: Any) -> None:
    """The FT classifier and the PT model must be one architecture of one depth and width,
    else the PT weights cannot go into the FT blocks; checked from the configs, before any
    weights load."""
    layout_of(ft_config)
    layout_of(pt_config)
    for attr in ("model_type", "num_hidden_layers", "hidden_size"):
        ft, pt = getattr(ft_config, attr, None), getattr(pt_config, attr, None)
        if ft != pt:
            raise ModelError(
                f"the fine-tuned and pre-trained models differ in {attr} ({ft} vs {pt}): the "
                "FT model was not made from this source; rerun its finetune stage"
            )


def _paired_blocks(ft_model: Any, pt_model: Any) -> tuple[list[Any], list[Any]]:
    """The two models' blocks, after checking that each pair holds tensors of equal names and
    shapes (a mismatch would otherwise fail halfway through a reset)."""
    ft_blocks, pt_blocks = block_list(ft_model), block_list(pt_model)
    if len(ft_blocks) != len(pt_blocks):
        raise ModelError(f"FT model has {len(ft_blocks)} blocks, PT model {len(pt_blocks)}")
    for b, (ft, pt) in enumerate(zip(ft_blocks, pt_blocks, strict=True), start=1):
        ft_shapes = {k: tuple(v.shape) for k, v in ft.state_dict().items()}
        pt_shapes = {k: tuple(v.shape) for k, v in pt.state_dict().items()}
        if ft_shapes != pt_shapes:
            raise ModelError(f"block {b}: FT and PT tensors differ in names or shapes")
    return ft_blocks, pt_blocks


@contextmanager
def reset_blocks(ft_model: Any, pt_model: Any, blocks: Iterable[int]) -> Iterator[Any]:
    """Within the ``with`` body, ``ft_model`` (a classifier or a bare encoder) runs with its
    ``blocks`` (1-based) holding the PT weights of ``pt_model``; on exit, also on an error, the
    FT weights are back, bit for bit.

    In place rather than on a copy: only the reset blocks' FT tensors are saved and restored,
    so a whole schedule costs one model in memory and no reload. The PT model may live on
    another device (its tensors are copied across). Do not enter it inside
    ``torch.inference_mode``: the weights are written in place.
    """
    ft_blocks, pt_blocks = _paired_blocks(ft_model, pt_model)
    chosen = sorted(set(blocks))
    bad = [b for b in chosen if not 1 <= b <= len(ft_blocks)]
    if bad:
        raise ValueError(f"blocks {bad} outside 1..{len(ft_blocks)}")
    saved: dict[int, dict[str, Any]] = {}
    try:
        for b in chosen:
            block = ft_blocks[b - 1]
            saved[b] = {k: v.detach().clone() for k, v in block.state_dict().items()}
            block.load_state_dict(pt_blocks[b - 1].state_dict())
        yield ft_model
    finally:
        for b, state in saved.items():
            ft_blocks[b - 1].load_state_dict(state)
