"""Unit tests of layerwise.activations: batching, the token budget and activation stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layerwise.activations import (
    INDEX_COLUMNS,
    PT_LINK,
    STORE_DTYPE,
    ActivationStore,
    StoreWriter,
    budget_texts,
    length_sorted_batches,
    pad_batch,
    store_name,
)
from layerwise.errors import StaleInputError


@pytest.mark.parametrize("batch_size", [1, 3, 4, 17, 100])
def test_length_sorted_batches_cover_every_index_once(batch_size: int) -> None:
    """Batches partition 0..n-1 (each index exactly once), hold at most batch_size indices,
    and come longest first."""
    lengths = np.random.default_rng(0).integers(1, 50, size=17)
    batches = length_sorted_batches(lengths, batch_size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(17))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-17 // batch_size)
    ordered = lengths[flat]
    assert np.all(np.diff(ordered) <= 0)


def test_length_sorted_batches_ties_keep_input_order() -> None:
    """Equal lengths keep their input order (a stable sort), so batches are reproducible."""
    batches = length_sorted_batches([3, 5, 3, 5, 3], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 2], [4]]


def test_pad_batch_right_pads_with_mask() -> None:
    """pad_batch right-pads to the longest text with pad_id and masks exactly the real tokens."""
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_budget_texts_deterministic_per_seed() -> None:
    """The same seed picks the same texts; another seed picks another subset; the total is the
    sum of the chosen lengths and reaches the budget, and dropping the longest chosen text
    would fall short of it (texts are added only until the budget is reached)."""
    lengths = list(np.random.default_rng(1).integers(5, 40, size=200))
    chosen, total = budget_texts(lengths, 500, seed=3)
    again, total_again = budget_texts(lengths, 500, seed=3)
    other, _ = budget_texts(lengths, 500, seed=4)
    np.testing.assert_array_equal(chosen, again)
    assert total == total_again
    assert not np.array_equal(chosen, other)
    assert np.all(np.diff(chosen) > 0)  # sorted, unique
    picked = [lengths[i] for i in chosen]
    assert total == sum(picked)
    assert total >= 500
    assert total - max(picked) < 500


def test_budget_texts_above_corpus_takes_all() -> None:
    """A budget above the corpus size takes every text (and reports their true total)."""
    chosen, total = budget_texts([4, 5, 6], 1000, seed=0)
    assert chosen.tolist() == [0, 1, 2]
    assert total == 15


def _index_rows(n: int, start: int = 0) -> np.ndarray:
    return np.stack([np.zeros(n), np.arange(start, start + n), np.arange(n) + 100], 1).astype(
        np.int32
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_store_writer_rejects_non_finite_naming_the_store(tmp_path: Path, bad: float) -> None:
    """A NaN/inf activation is refused with the store's name (nothing silently cast)."""
    writer = StoreWriter(tmp_path / "s", ["pt_L1", "ft_L1"], n_tokens=4, dim=3)
    good = np.ones((2, 3), dtype=np.float32)
    values = good.copy()
    values[1, 2] = bad
    with pytest.raises(ValueError, match=r"non-finite activations for store 'ft_L1'"):
        writer.write(0, {"pt_L1": good, "ft_L1": values}, _index_rows(2))


def test_store_writer_rejects_float16_overflow(tmp_path: Path) -> None:
    """A value beyond float16's range is refused naming the store, not stored as inf."""
    writer = StoreWriter(tmp_path / "s", ["pt_L2"], n_tokens=1, dim=2)
    with pytest.raises(ValueError, match=r"'pt_L2' overflow float16"):
        writer.write(0, {"pt_L2": np.array([[1.0, 1e6]], dtype=np.float32)}, _index_rows(1))


def test_store_round_trip_out_of_order_writes(tmp_path: Path) -> None:
    """Rows written in any order land at their offsets; close() records the stores and count,
    and ActivationStore reads back the same values (as float16) and index."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 4)).astype(np.float32)
    index = _index_rows(5)
    writer = StoreWriter(tmp_path / "analysis", ["pt_L1"], n_tokens=5, dim=4)
    writer.write(3, {"pt_L1": a[3:]}, index[3:])
    writer.write(0, {"pt_L1": a[:3]}, index[:3])
    writer.close({"n_texts": 1})
    store = ActivationStore.open(tmp_path, "analysis")
    assert store.names == ["pt_L1"]
    assert store.n_tokens == 5
    assert store.n_texts == 1
    acts = store.acts("pt_L1")
    assert acts.dtype == STORE_DTYPE
    np.testing.assert_array_equal(acts, a.astype(STORE_DTYPE))
    np.testing.assert_array_equal(store.index, index)
    np.testing.assert_array_equal(store.column("position"), index[:, 1])
    assert INDEX_COLUMNS == ("text_id", "position", "token_id")


def test_store_writer_refuses_overflow_and_short_close(tmp_path: Path) -> None:
    """Writing past the allocated rows fails, and closing with rows missing fails (no meta.json
    is written, so the half store cannot be opened)."""
    writer = StoreWriter(tmp_path / "s", ["pt_L1"], n_tokens=3, dim=2)
    with pytest.raises(ValueError, match=r"store overflow: 4 rows > 3 allocated"):
        writer.write(0, {"pt_L1": np.zeros((4, 2))}, _index_rows(4))
    writer.write(0, {"pt_L1": np.zeros((2, 2))}, _index_rows(2))
    with pytest.raises(ValueError, match=r"store has 2 rows, expected 3"):
        writer.close({})
    assert not (tmp_path / "s" / "meta.json").exists()


def test_open_missing_store_names_the_compare_stage(tmp_path: Path) -> None:
    """Opening a store that was never written points at the compare stage that makes it."""
    with pytest.raises(FileNotFoundError, match=r"made by the compare stage") as info:
        ActivationStore.open(tmp_path / "acts", "train")
    assert str(tmp_path / "acts" / "train") in str(info.value)


def test_unknown_layer_names_the_stores_present(tmp_path: Path) -> None:
    """Asking for a layer that was not stored lists the stores that were."""
    names = [store_name(w, layer) for w in ("pt", "ft") for layer in (1, 2)]
    writer = StoreWriter(tmp_path / "analysis", names, n_tokens=1, dim=2)
    writer.write(0, dict.fromkeys(names, np.zeros((1, 2))), _index_rows(1))
    writer.close({"n_texts": 1})
    assert json.loads((tmp_path / "analysis" / "meta.json").read_text())["stores"] == names
    store = ActivationStore.open(tmp_path, "analysis")
    with pytest.raises(KeyError, match=r"no 'pt_L5'.*\['pt_L1', 'pt_L2', 'ft_L1', 'ft_L2'\]"):
        store.acts("pt_L5")


def _write_half(folder: Path, which: str, values: np.ndarray, index: np.ndarray, **meta) -> None:
    name = store_name(which, 1)
    writer = StoreWriter(folder, [name], n_tokens=len(values), dim=values.shape[1])
    writer.write(0, {name: values}, index)
    writer.close({"n_texts": 1, **meta})


def test_linked_store_reads_both_halves_as_one(tmp_path: Path) -> None:
    """A run's FT store that links to the shared PT store (``meta[PT_LINK]``) reads as one
    store: both names, each half's own rows, the FT store's index; ``complete`` says so."""
    rng = np.random.default_rng(1)
    pt, ft = rng.normal(size=(2, 4, 3)).astype(np.float32)
    index = _index_rows(4)
    _write_half(tmp_path / "pt" / "train", "pt", pt, index)
    assert not ActivationStore.complete(tmp_path / "s0", "train")
    _write_half(tmp_path / "s0" / "train", "ft", ft, index, **{PT_LINK: "../pt"})
    store = ActivationStore.open(tmp_path / "s0", "train")
    assert store.names == ["ft_L1", "pt_L1"]
    np.testing.assert_array_equal(store.acts("pt_L1"), pt.astype(STORE_DTYPE))
    np.testing.assert_array_equal(store.acts("ft_L1"), ft.astype(STORE_DTYPE))
    assert ActivationStore.complete(tmp_path / "s0", "train")
    assert not ActivationStore.complete(tmp_path / "s0", "analysis")


def test_linked_store_missing_names_the_pt_store_stage(tmp_path: Path) -> None:
    """A run's store whose PT half is gone fails on open, naming the pt_store stage."""
    _write_half(tmp_path / "s0" / "train", "ft", np.zeros((2, 3)), _index_rows(2), pt_store="../pt")
    assert not ActivationStore.complete(tmp_path / "s0", "train")
    with pytest.raises(FileNotFoundError, match=r"PT half .* missing.*pt_store stage"):
        ActivationStore.open(tmp_path / "s0", "train")


@pytest.mark.parametrize("change", ["fewer rows", "other tokens"])
def test_linked_store_of_other_tokens_is_refused(tmp_path: Path, change: str) -> None:
    """A PT store that indexes other tokens than the run's (another token budget, another data
    seed) is refused on open rather than paired row by row with the wrong tokens."""
    index = _index_rows(4)
    pt_index = index[:3] if change == "fewer rows" else index + np.array([0, 0, 1], np.int32)
    _write_half(tmp_path / "pt" / "train", "pt", np.zeros((len(pt_index), 3)), pt_index)
    _write_half(tmp_path / "s0" / "train", "ft", np.zeros((4, 3)), index, pt_store="../pt")
    with pytest.raises(StaleInputError, match=r"holds other tokens than the FT store"):
        ActivationStore.open(tmp_path / "s0", "train")
