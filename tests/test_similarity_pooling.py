"""PositionPool and pool_hidden: the probes read the token a classifier reads, whatever the
padding around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.activations import pad_batch, pool_hidden
from layerwise.architectures import probe_pooling
from layerwise.similarity.pooling import PositionPool


def _batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    hidden = torch.arange(3 * 3 * 2, dtype=torch.float32).reshape(3, 3, 2)
    return hidden, batch


def test_pool_hidden_picks_first_last_real_token_and_mean() -> None:
    hidden, batch = _batch()
    mask = batch["attention_mask"]
    last = pool_hidden(hidden, mask, "last")
    assert torch.equal(last, torch.stack([hidden[0, 2], hidden[1, 0], hidden[2, 1]]))
    assert torch.equal(pool_hidden(hidden, mask, "first"), hidden[:, 0])
    mean = pool_hidden(hidden, mask, "mean")
    torch.testing.assert_close(mean[2], hidden[2, :2].mean(0))
    with pytest.raises(ValueError, match="pooling='max'"):
        pool_hidden(hidden, mask, "max")


def test_position_pool_fills_rows_of_the_batch_texts_per_layer() -> None:
    hidden, batch = _batch()
    pool = PositionPool(n_layers=2, n_texts=5, dim=2, position="last")
    pool.update([hidden, hidden + 1], [hidden * 2, hidden * 3], batch["attention_mask"], [4, 0, 2])
    want = pool_hidden(hidden, batch["attention_mask"], "last").numpy()
    np.testing.assert_array_equal(pool.pooled(0, "pt")[[4, 0, 2]], want)
    np.testing.assert_array_equal(pool.pooled(1, "pt")[[4, 0, 2]], want + 1)
    np.testing.assert_array_equal(pool.pooled(1, "ft")[[4, 0, 2]], want * 3)
    assert np.isnan(pool.pooled(0, "pt")[[1, 3]]).all()  # texts not seen yet


def test_auto_pooling_reads_what_the_classifier_reads() -> None:
    import transformers as T

    assert probe_pooling("auto", T.GPT2Config()) == "last"
    assert probe_pooling("auto", T.LlamaConfig()) == "last"
    assert probe_pooling("auto", T.BertConfig()) == "mean"
    assert probe_pooling("first", T.GPT2Config()) == "first"
