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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise.errors import MissingInputError, StaleInputError

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


PT_LINK = "pt_store"
"""Meta key of a run's store naming the folder (relative to the run's store root) that holds
its PT half: the PT encoder does not depend on the fine-tuning seed, so one PT store per (model,
task) serves every seed and control (the ``pt_store`` stage)."""


@dataclass
class ActivationStore:
    """Token activations of one split: ``acts[name]`` is [N, D] (memmap), ``index`` [N, 3].

    A run's store holds the FT layers and links (``meta[PT_LINK]``) to the shared PT store of
    the same tokens; both halves read as one store, checked to index the same tokens."""

    root: Path
    split: str
    meta: dict[str, Any]
    linked: dict[str, Path] = field(default_factory=dict)
    """Store name -> folder, for the names read from a linked store."""

    @classmethod
    def open(cls, root: str | Path, split: str) -> ActivationStore:
        root = Path(root)
        meta = _read_meta(root / split)
        store = cls(root, split, meta)
        if PT_LINK in meta:
            store._link(root / meta[PT_LINK] / split)
        return store

    @staticmethod
    def complete(root: str | Path, split: str) -> bool:
        """Whether the split's store exists with the PT store it links to (files only)."""
        meta_path = Path(root) / split / "meta.json"
        if not meta_path.is_file():
            return False
        link = json.loads(meta_path.read_text()).get(PT_LINK)
        return link is None or (Path(root) / link / split / "meta.json").is_file()

    def _link(self, folder: Path) -> None:
        """Read ``folder``'s stores as this store's, after checking it indexes the same
        tokens (same texts, positions and token ids, row for row)."""
        folder = folder.resolve()
        if not (folder / "meta.json").is_file():
            raise MissingInputError(
                f"activation store {self.root / self.split} takes its PT half from "
                f"{folder}, which is missing: it is made by the pt_store stage "
                "(run `dvc repro pt_store@<model>-<task>`)"
            )
        other = json.loads((folder / "meta.json").read_text())
        same = other["n_tokens"] == self.n_tokens and np.array_equal(
            np.load(folder / "index.npy", mmap_mode="r"), self.index
        )
        if not same:
            raise StaleInputError(
                f"the PT store {folder} holds other tokens than the FT store "
                f"{self.root / self.split}: rerun pt_store and compare for this model and task"
            )
        self.linked = {name: folder for name in other["stores"] if name not in self.meta["stores"]}

    @property
    def names(self) -> list[str]:
        return list(self.meta["stores"]) + list(self.linked)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_texts(self) -> int:
        return int(self.meta["n_texts"])

    def acts(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(
                f"activation store {self.root / self.split} has no {name!r}; it holds "
                f"{self.names} (layers are set by models.<m>.layers; rerun compare for the FT "
                "layers, pt_store for the PT layers)"
            )
        folder = self.linked.get(name, self.root / self.split)
        return np.load(folder / f"{name}.npy", mmap_mode="r")

    @property
    def index(self) -> np.ndarray:
        return np.load(self.root / self.split / "index.npy", mmap_mode="r")

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.index[:, INDEX_COLUMNS.index(name)])


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise MissingInputError(
            f"no activation store at {folder}: it is made by the compare stage "
            "(run `dvc repro compare@<model>-<task>-<seed>`)"
        )
    return json.loads(meta_path.read_text())


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


SIDES = ("pt", "ft")


@dataclass
class PairedEncoders:
    """The PT encoder and the FT classifier's encoder, run on the same batches (``ft`` may be
    ``None`` where only the PT side is needed: the shared PT store)."""

    pt: Any
    ft: Any
    device: Any

    @property
    def config(self) -> Any:
        return self.pt.config

    def states(self, batch: dict[str, torch.Tensor], sides: tuple[str, ...]) -> dict[str, tuple]:
        """Every layer's hidden states of the ``sides`` encoders (``pt`` first)."""
        import torch

        with torch.inference_mode():
            return {
                side: getattr(self, side)(**batch, output_hidden_states=True).hidden_states
                for side in SIDES
                if side in sides
            }

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[tuple, tuple]:
        both = self.states(batch, SIDES)
        return both["pt"], both["ft"]


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
    sides: tuple[str, ...] = SIDES,
) -> int:
    """Store the ``sides`` (PT and/or FT) token activations of ``layers`` for every non-padding
    token of the given texts ([CLS]/[SEP] included: the classifier reads [CLS], so SAE splicing
    must cover it).

    ``text_ids`` are the texts' indices in their split (recorded in the index); ``on_batch(
    pt_states, ft_states, batch, idx)`` lets the caller reuse the same forward pass (the
    similarity statistics of the analysis split), so no text is run through a model twice: with
    it both encoders run, whatever ``sides`` stores; without it only the stored sides run.
    ``batches`` (text index arrays) default to :func:`length_sorted_batches`.
    """
    import torch
    from tqdm import tqdm

    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    n_tokens = int(lengths.sum())
    dim = encoders.config.hidden_size
    names = [store_name(w, layer) for w in sides for layer in layers]
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
        states = encoders.states(batch, SIDES if on_batch is not None else sides)
        if on_batch is not None:
            on_batch(states["pt"], states["ft"], batch, idx)
        # Row indices of the non-padding tokens, once per batch: one index_select per store
        # (rows come out text by text, in position order), then a slice copy per text into the
        # memmap.
        tokens = batch["attention_mask"].reshape(-1).nonzero().squeeze(1)
        bounds = np.concatenate([[0], np.cumsum(lengths[idx])])
        for which in sides:
            for layer in layers:
                name = store_name(which, layer)
                flat = states[which][layer].reshape(-1, dim).index_select(0, tokens)
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


# --------------------------------------------------------------------------------------------
# The stores of a (model, task): the same tokens for every run and for the shared PT half
# --------------------------------------------------------------------------------------------


@dataclass
class StorePlan:
    """Which tokens a (model, task)'s activation stores hold, in which batches.

    The plan depends on the tokenizer, the texts and the data seed only, never on the fine-tune:
    every seed's and control's FT store and the shared PT store follow it, so their rows align
    token for token (and batch for batch, so the PT rows are the same bytes whichever stage
    computed them)."""

    analysis_ids: list[list[int]]
    analysis_batches: list[np.ndarray]
    train_ids: list[list[int]]
    """The token ids of the train texts chosen for the store, in split order."""
    train_text_ids: np.ndarray
    """Their indices in the train split."""
    batch_size: int
    pad_id: int
    meta: dict[str, Any]
    """What every split's meta.json holds (tokenisation, special ids, the PT link)."""
    split_meta: dict[str, dict[str, Any]]
    """What each split's meta.json adds (labels, the token budget)."""

    def link(self, pt_folder: str) -> None:
        """Store the FT half only, linked to the PT store at ``pt_folder`` (relative to the
        run's store root)."""
        self.meta[PT_LINK] = pt_folder


def plan_stores(
    tokenizer: Any,
    splits: Any,
    max_length: int,
    batch_size: int,
    token_budget: int,
    token_seed: int,
) -> StorePlan:
    """Every analysis text, and a ``token_seed``-seeded subset of train texts within
    ``token_budget`` tokens (:func:`budget_texts`)."""
    analysis, train = splits["analysis"], splits["train"]
    ids = tokenize_texts(tokenizer, list(analysis["text"]), max_length)
    train_ids = tokenize_texts(tokenizer, list(train["text"]), max_length)
    chosen, _ = budget_texts([len(x) for x in train_ids], token_budget, token_seed)
    return StorePlan(
        analysis_ids=ids,
        analysis_batches=length_sorted_batches([len(x) for x in ids], batch_size),
        train_ids=[train_ids[i] for i in chosen],
        train_text_ids=chosen,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        meta={"max_length": max_length, "special_ids": sorted(set(tokenizer.all_special_ids))},
        split_meta={
            "analysis": {"split": "analysis", "labels": list(analysis["label"])},
            "train": {
                "split": "train",
                "labels": np.asarray(train["label"])[chosen].tolist(),
                "token_budget": token_budget,
            },
        },
    )


def write_plan(
    encoders: PairedEncoders,
    plan: StorePlan,
    layers: list[int],
    store_dir: Path,
    sides: tuple[str, ...],
    on_analysis_batch: Any = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Both splits' stores of ``sides`` under ``store_dir``; ``on_analysis_batch`` sees every
    analysis batch's PT and FT states (:func:`write_store`). Returns the token counts."""
    n_analysis = write_store(
        encoders,
        plan.analysis_ids,
        np.arange(len(plan.analysis_ids)),
        layers,
        store_dir / "analysis",
        plan.batch_size,
        plan.pad_id,
        {**plan.meta, **plan.split_meta["analysis"]},
        on_batch=on_analysis_batch,
        progress=f"analysis ({'+'.join(sides)})" if progress else None,
        batches=plan.analysis_batches,
        sides=sides,
    )
    n_train = write_store(
        encoders,
        plan.train_ids,
        plan.train_text_ids,
        layers,
        store_dir / "train",
        plan.batch_size,
        plan.pad_id,
        {**plan.meta, **plan.split_meta["train"]},
        progress=f"train ({'+'.join(sides)})" if progress else None,
        sides=sides,
    )
    return n_analysis, n_train
