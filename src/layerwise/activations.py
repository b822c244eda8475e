"""Batched forward passes over tokenised texts and on-disk activation stores.

Texts are processed in length-sorted batches with dynamic padding (far less padding than
random batches, and padding never changes a token's hidden state). Activation stores hold the
token activations of chosen layers as memory-mapped ``.npy`` arrays plus an index
(text id, position, token id) that maps every stored row back to its token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise.errors import MissingInputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

STORE_DTYPE = np.float16
"""Stored activations are float16: half the disk and page cache of float32, and hidden states
of these encoders stay far inside its range (checked when writing)."""


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (one tokenizer call for all texts)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def length_sorted_batches(lengths: list[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length, longest first (a memory spike shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-pad a batch of token id lists to its longest member."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def iterate_batches(
    token_ids: list[list[int]], batch_size: int, pad_id: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield (text indices, padded batch) in length-sorted order."""
    for idx in length_sorted_batches([len(t) for t in token_ids], batch_size):
        yield idx, pad_batch([token_ids[i] for i in idx], pad_id, device)


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per row of a right-padded ``[B, T, D]`` batch: the ``mean`` over real tokens,
    the ``first`` token, or the ``last`` real token (what decoder-only classifiers read)."""
    import torch

    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "first":
        return hidden[rows, 0]
    if pooling == "last":
        return hidden[rows, attention_mask.sum(1).clamp(min=1) - 1]
    raise ValueError(f"pooling={pooling!r}; expected mean, first or last")


def pooled_last_layer(
    encoder: Any,
    token_ids: list[list[int]],
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    pooling: str = "mean",
) -> np.ndarray:
    """The last hidden layer pooled per text (:func:`pool_hidden`), ``[n_texts, D]``."""
    import torch

    out = None
    with torch.inference_mode():
        for idx, batch in iterate_batches(token_ids, batch_size, pad_id, device):
            hidden = encoder(**batch).last_hidden_state
            pooled = pool_hidden(hidden, batch["attention_mask"], pooling)
            if out is None:
                out = np.zeros((len(token_ids), hidden.shape[-1]), dtype=np.float32)
            out[idx] = pooled.float().cpu().numpy()
    assert out is not None
    return out


# --------------------------------------------------------------------------------------------
# Activation stores
# --------------------------------------------------------------------------------------------

INDEX_COLUMNS = ("text_id", "position", "token_id")


def store_name(which: str, layer: int) -> str:
    """File stem of one store: ``pt_L2``, ``ft_L6``."""
    return f"{which}_L{layer}"


@dataclass
class ActivationStore:
    """Token activations of one split: ``acts[name]`` is [N, D] (memmap), ``index`` [N, 3]."""

    root: Path
    split: str
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path, split: str) -> ActivationStore:
        root = Path(root)
        meta_path = root / split / "meta.json"
        if not meta_path.is_file():
            raise MissingInputError(
                f"no activation store at {root / split}: it is made by the compare stage "
                "(run `dvc repro compare@<model>-<task>-<seed>`)"
            )
        return cls(root, split, json.loads(meta_path.read_text()))

    @property
    def names(self) -> list[str]:
        return list(self.meta["stores"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_texts(self) -> int:
        return int(self.meta["n_texts"])

    def acts(self, name: str) -> np.ndarray:
        if name not in self.meta["stores"]:
            raise KeyError(
                f"activation store {self.root / self.split} has no {name!r}; it holds "
                f"{self.names} (layers are set by models.<m>.layers; rerun compare)"
            )
        return np.load(self.root / self.split / f"{name}.npy", mmap_mode="r")

    @property
    def index(self) -> np.ndarray:
        return np.load(self.root / self.split / "index.npy", mmap_mode="r")

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.index[:, INDEX_COLUMNS.index(name)])


class StoreWriter:
    """Writes the rows of several [N, D] stores into preallocated ``.npy`` memmaps."""

    def __init__(self, directory: Path, names: list[str], n_tokens: int, dim: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.n_tokens = n_tokens
        self.arrays = {
            name: np.lib.format.open_memmap(
                directory / f"{name}.npy", mode="w+", dtype=STORE_DTYPE, shape=(n_tokens, dim)
            )
            for name in names
        }
        self.index = np.lib.format.open_memmap(
            directory / "index.npy", mode="w+", dtype=np.int32, shape=(n_tokens, 3)
        )
        self.written = 0

    def write(self, start: int, rows: dict[str, np.ndarray], index_rows: np.ndarray) -> None:
        """Write rows ``start..start+n`` of every store (batches may arrive in any order)."""
        n = len(index_rows)
        end = start + n
        if end > self.n_tokens:
            raise ValueError(f"store overflow: {end} rows > {self.n_tokens} allocated")
        for name, values in rows.items():
            if not np.isfinite(values).all():
                raise ValueError(f"non-finite activations for store {name!r} at rows {start}..")
            if np.abs(values).max(initial=0) > np.finfo(STORE_DTYPE).max:
                raise ValueError(f"activations of {name!r} overflow {STORE_DTYPE.__name__}")
            self.arrays[name][start:end] = values
        self.index[start:end] = index_rows
        self.written += n

    def close(self, meta: dict[str, Any]) -> None:
        if self.written != self.n_tokens:
            raise ValueError(f"store has {self.written} rows, expected {self.n_tokens}")
        # No msync (``flush``): written pages are in the page cache, which every reader sees and
        # the kernel writes back on its own; a killed process loses none of them. Forcing the
        # writeback here cost ~8 % of the compare stage's overhead over its forward passes.
        names = list(self.arrays)
        self.arrays.clear()  # unmap
        meta = {**meta, "stores": names, "n_tokens": self.n_tokens}
        (self.directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------------
# One streaming pass: PT and FT forward together, similarity statistics, activation stores
# --------------------------------------------------------------------------------------------


def special_token_mask(input_ids: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """True where a token is [CLS]/[SEP]/[PAD]-like (optionally excluded from similarity)."""
    import torch

    return torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))


def budget_texts(lengths: list[int], budget: int, seed: int) -> tuple[np.ndarray, int]:
    """A seeded random subset of texts whose token count reaches ``budget`` (the last text is
    kept whole, so the store holds whole texts), and the total token count."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    total, chosen = 0, []
    for i in order:
        if total >= budget:
            break
        chosen.append(i)
        total += lengths[i]
    return np.sort(np.asarray(chosen, dtype=np.int64)), total


@dataclass
class PairedEncoders:
    """The PT encoder and the FT classifier's encoder, run on the same batches."""

    pt: Any
    ft: Any
    device: Any

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[tuple, tuple]:
        import torch

        with torch.inference_mode():
            pt = self.pt(**batch, output_hidden_states=True).hidden_states
            ft = self.ft(**batch, output_hidden_states=True).hidden_states
        return pt, ft


def write_store(
    encoders: PairedEncoders,
    token_ids: list[list[int]],
    text_ids: np.ndarray,
    layers: list[int],
    directory: Path,
    batch_size: int,
    pad_id: int,
    meta: dict[str, Any],
    on_batch: Any = None,
    progress: str | None = None,
    batches: list[np.ndarray] | None = None,
) -> int:
    """Store PT and FT token activations of ``layers`` for every non-padding token of the
    given texts ([CLS]/[SEP] included: the classifier reads [CLS], so SAE splicing must cover it).

    ``text_ids`` are the texts' indices in their split (recorded in the index); ``on_batch(
    pt_states, ft_states, batch, idx)`` lets the caller reuse the same forward pass (the
    similarity statistics of the analysis split), so no text is run through a model twice.
    ``batches`` (text index arrays) default to :func:`length_sorted_batches`.
    """
    import torch
    from tqdm import tqdm

    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    n_tokens = int(lengths.sum())
    dim = encoders.pt.config.hidden_size
    names = [store_name(w, layer) for w in ("pt", "ft") for layer in layers]
    writer = StoreWriter(directory, names, n_tokens, dim)
    # Rows are grouped by text in split order, whatever order the batches come in: each text's
    # row offset is known up front, and so is the whole index.
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    writer.index[:] = np.stack(
        [
            np.repeat(np.asarray(text_ids), lengths),
            np.concatenate([np.arange(n) for n in lengths]),
            np.concatenate([np.asarray(ids) for ids in token_ids]),
        ],
        axis=1,
    ).astype(np.int32)
    fp16_max = float(np.finfo(STORE_DTYPE).max)
    if batches is None:
        batches = length_sorted_batches(lengths, batch_size)
    for idx in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        batch = pad_batch([token_ids[i] for i in idx], pad_id, encoders.device)
        pt, ft = encoders.hidden_states(batch)
        if on_batch is not None:
            on_batch(pt, ft, batch, idx)
        # Row indices of the non-padding tokens, once per batch: one index_select per store
        # (rows come out text by text, in position order), then a slice copy per text into the
        # memmap.
        tokens = batch["attention_mask"].reshape(-1).nonzero().squeeze(1)
        bounds = np.concatenate([[0], np.cumsum(lengths[idx])])
        for which, states in (("pt", pt), ("ft", ft)):
            for layer in layers:
                name = store_name(which, layer)
                flat = states[layer].reshape(-1, dim).index_select(0, tokens)
                # One reduction checks both: NaN propagates through amax, inf exceeds the max.
                peak = float(flat.abs().amax())
                if not peak <= fp16_max:
                    if not bool(torch.isfinite(flat).all()):
                        raise ValueError(f"non-finite activations for store {name!r}")
                    raise ValueError(
                        f"activations of {name!r} overflow float16 (|max| {peak:g} > {fp16_max:g})"
                    )
                values = flat.to(torch.float16).cpu().numpy()
                target = writer.arrays[name]
                for j, i in enumerate(idx):
                    target[offsets[i] : offsets[i + 1]] = values[bounds[j] : bounds[j + 1]]
        writer.written += int(bounds[-1])
    writer.close({**meta, "n_texts": len(token_ids), "layers": layers, "dim": dim})
    return n_tokens
