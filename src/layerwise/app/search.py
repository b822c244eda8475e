"""Token search: which latents of an SAE fire on a word ("which features fire on `terrible`?").

A word is looked up as the tokenizer splits it: every place in the analysis split where its
pieces appear in a row (one place per occurrence), then each latent is ranked by its mean
activation over those occurrences (the max over the word's pieces at each one). Beside it,
how often the latent fires on the word versus on any token, so a latent that fires everywhere
does not pass for a word detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerwise.app.cards import unit_index
from layerwise.app.catalog import ExplorerError, RunKey
from layerwise.app.loaders import StoreIndex, Workspace


@dataclass(frozen=True)
class TokenHit:
    feature: int
    mean_activation: float
    """Mean over the word's occurrences of the latent's activation (max over its pieces)."""
    fire_frac: float
    """Fraction of the word's occurrences on which the latent fires."""
    base_rate: float
    """Fraction of all analysis tokens on which the latent fires."""


@dataclass(frozen=True)
class TokenSearch:
    word: str
    pieces: list[str]
    n_occurrences: int
    hits: list[TokenHit]


def word_pieces(tokenizer: object, word: str) -> list[int]:
    """The word's token ids without special tokens; an empty query is an error."""
    word = word.strip()
    if not word:
        raise ExplorerError("Type a word to search for.")
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ExplorerError(f"{word!r} gives no tokens with this model's tokenizer.")
    return list(ids)


def occurrences(index: StoreIndex, pieces: list[int]) -> np.ndarray:
    """``[n, len(pieces)]`` store rows of every place where ``pieces`` appear in a row within
    one text (rows of a text are consecutive, in position order)."""
    n, k = len(index.token_id), len(pieces)
    starts = np.flatnonzero(index.token_id[: n - k + 1] == pieces[0])
    for offset, piece in enumerate(pieces[1:], start=1):
        same_text = index.text_id[starts + offset] == index.text_id[starts]
        starts = starts[(index.token_id[starts + offset] == piece) & same_text]
    return starts[:, None] + np.arange(k)[None, :]


def search_token(ws: Workspace, key: RunKey, unit: str, word: str, n: int = 10) -> TokenSearch:
    """The ``n`` latents of ``unit`` most active on ``word`` in the run's analysis split."""
    tokenizer = ws.tokenizer(key.model)
    pieces = word_pieces(tokenizer, word)
    piece_names = tokenizer.convert_ids_to_tokens(pieces)
    rows = occurrences(ws.store_index(key), pieces)
    if rows.size == 0:
        raise ExplorerError(
            f"{word.strip()!r} (tokens {' '.join(piece_names)}) does not occur in the analysis "
            f"split of {key.label}: try another word."
        )
    index = unit_index(ws, key, unit)
    acts = index.token_acts[rows.ravel()].toarray().reshape(*rows.shape, -1).max(axis=1)
    mean = acts.mean(axis=0)
    fire = (acts > 0).mean(axis=0)
    order = [f for f in np.argsort(-mean, kind="stable")[:n] if mean[f] > 0]
    base = index.text_features.fire_rate
    hits = [TokenHit(int(f), float(mean[f]), float(fire[f]), float(base[f])) for f in order]
    return TokenSearch(word.strip(), piece_names, int(rows.shape[0]), hits)
