"""Token search: every occurrence of a word's pieces, in one text, and the latents most active
on it."""

from __future__ import annotations

import numpy as np
import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app.catalog import ExplorerError
from layerwise.app.loaders import StoreIndex, Workspace
from layerwise.app.search import occurrences, search_token


def test_occurrences_match_piece_sequences_within_one_text() -> None:
    index = StoreIndex(
        text_id=np.array([0, 0, 0, 1, 1, 2, 2]),
        position=np.array([0, 1, 2, 0, 1, 0, 1]),
        token_id=np.array([5, 7, 8, 5, 5, 7, 8]),
    )
    assert occurrences(index, [5]).tolist() == [[0], [3], [4]]
    assert occurrences(index, [7, 8]).tolist() == [[1, 2], [5, 6]]
    assert occurrences(index, [8, 5]).size == 0  # rows 2 and 3 belong to two texts


def test_search_ranks_the_latents_firing_on_a_word(app_tree: AppTree) -> None:  # noqa: F811
    ws = Workspace(app_tree.root)
    found = search_token(ws, KEY, "ft_L2", "  great ", n=5)
    great = ws.tokenizer(KEY.model).convert_tokens_to_ids("great")
    assert found.word == "great" and found.pieces == ["great"]
    assert found.n_occurrences == int(np.count_nonzero(ws.store_index(KEY).token_id == great))
    means = [h.mean_activation for h in found.hits]
    assert 0 < len(found.hits) <= 5 and means == sorted(means, reverse=True)
    assert all(0 <= h.fire_frac <= 1 and 0 <= h.base_rate <= 1 for h in found.hits)
    with pytest.raises(ExplorerError, match="does not occur in the analysis split"):
        search_token(ws, KEY, "ft_L2", "zebra")
    with pytest.raises(ExplorerError, match="Type a word"):
        search_token(ws, KEY, "ft_L2", " ")
