"""Feature-level analysis of trained SAEs on the analysis split.

Everything here is plain numpy/scipy. An SAE enters only as an ``encode`` callable
(``float32 [n, D] -> [n, F]``, nonnegative) or as its decoder matrix ``W_dec [F, D]``, so this
module can be tested with synthetic encoders and never imports the SAE class or torch.

Token activations are a ``[N_tokens, D]`` array (usually an ``np.memmap`` of float16) with a
per-row index (``text_id``, ``position``, ``token_id``). Functions that need feature activations
stream over row chunks so the ``[N_tokens, F]`` feature matrix never exists in memory.

Argument rules shared by all functions:

* A count ``n``/``k`` <= 0 raises ``ValueError`` naming the value; a count larger than what
  exists is clipped to what exists, with a ``logger.warning`` naming both numbers, so a config
  written for a wide SAE still runs on a narrow one.
* ``d_in`` (pass ``W_dec.shape[1]``) is checked against the activation width; a mismatch raises
  ``ValueError`` naming both widths. The encoder output must have one row per input row and the
  same width on every chunk.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata

logger = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], Any]
"""SAE encoder: float32 ``[n, D]`` -> nonnegative ``[n, F]`` (array-like)."""

DEFAULT_CHUNK = 8192


# --------------------------------------------------------------------------------------------
# Shared validation helpers
# --------------------------------------------------------------------------------------------


def _as_count(name: str, value: int) -> int:
    """Return ``value`` as an int, raising ``ValueError`` naming it when it is not positive."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    try:
        v = operator.index(value)
    except TypeError as err:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}") from err
    if v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name}={v}")
    return v


def _clip_count(name: str, value: int, available: int, what: str) -> int:
    """Validate a requested count and clip it to ``available`` with a warning.

    Clipping (rather than raising) lets one analysis config run on SAEs of different widths and
    splits of different sizes; the warning keeps the shortfall visible in the logs.
    """
    v = _as_count(name, value)
    if v > available:
        logger.warning(
            "%s=%d requested but only %d %s available; clipping to %d",
            name,
            v,
            available,
            what,
            available,
        )
        return available
    return v


def _check_acts(acts: np.ndarray, d_in: int | None) -> tuple[int, int]:
    """Check that ``acts`` is ``[N, D]`` and, if given, that ``d_in == D``."""
    if acts.ndim != 2:
        raise ValueError(f"activations must be 2-D [N_tokens, D], got shape {acts.shape}")
    n, d = acts.shape
    if d_in is not None and int(d_in) != d:
        raise ValueError(
            f"width mismatch: SAE input width d_in={int(d_in)} but activations have width D={d}"
        )
    return n, d


def _check_index(name: str, arr: np.ndarray, n_rows: int) -> np.ndarray:
    """Check that a per-row index array has one entry per activation row."""
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise ValueError(
            f"{name} must be 1-D with one entry per activation row ({n_rows}), "
            f"got shape {arr.shape}"
        )
    return arr


def _encode_rows(encode: Encode, x: np.ndarray, n_features: int | None) -> np.ndarray:
    """Run ``encode`` on one chunk and check its output shape.

    The encoder is user code (an SAE wrapper); checking here turns a silent broadcast or a
    transposed output into an error that names the widths.
    """
    out = np.asarray(encode(x))
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"encode returned shape {out.shape} for input of shape {x.shape}; "
            f"expected [{x.shape[0]}, F]"
        )
    if n_features is not None and out.shape[1] != n_features:
        raise ValueError(
            f"width mismatch: encode returned F={out.shape[1]} features, expected {n_features}"
        )
    return out.astype(np.float32, copy=False)


def _encoded_chunks(
    encode: Encode, acts: np.ndarray, chunk: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, features)`` for each run of ``chunk`` rows of ``acts``, read as float32
    and encoded; every chunk must have the first chunk's feature width."""
    n_features: int | None = None
    n_rows = acts.shape[0]
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        f = _encode_rows(encode, np.asarray(acts[start:stop], dtype=np.float32), n_features)
        n_features = f.shape[1]
        yield start, stop, f


def _check_features(features: Sequence[int] | np.ndarray, n_features: int) -> np.ndarray:
    """Return requested feature indices as int64, checking they exist in an ``F``-wide SAE."""
    f = np.asarray(features)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.size == 0:
        raise ValueError("features must name at least one feature, got an empty list")
    if f.ndim != 1 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"features must be a 1-D list of integers, got {features!r}")
    bad = f[(f < 0) | (f >= n_features)]
    if bad.size:
        raise ValueError(
            f"feature index {int(bad[0])} out of range for an SAE with F={n_features} features"
        )
    return f.astype(np.int64)


def _check_labels(labels: np.ndarray, n_classes: int, n_texts: int | None) -> np.ndarray:
    """Check per-text labels are integers in ``[0, n_classes)`` (one per text if ``n_texts``)."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if n_texts is not None and lab.shape[0] != n_texts:
        raise ValueError(f"got {lab.shape[0]} labels for {n_texts} texts")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got range [{lab.min()}, {lab.max()}]"
        )
    return lab


def _check_per_text(per_text: np.ndarray) -> np.ndarray:
    p = np.asarray(per_text)
    if p.ndim != 2:
        raise ValueError(f"per_text must be 2-D [n_texts, F], got shape {p.shape}")
    return p


# --------------------------------------------------------------------------------------------
# 1. Per-text feature activations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextFeatures:
    """Per-text feature activations and token-level firing statistics.

    Attributes:
        per_text: ``[n_texts, F]`` float32, each feature's max (or mean) over the text's tokens.
        fire_count: ``[F]`` int64, number of tokens on which each feature is > 0.
        n_tokens: total number of tokens encoded.
        tokens_per_text: ``[n_texts]`` int64, tokens per text (0 marks a text with no rows).
        reduce: ``"max"`` or ``"mean"``.
        mass: ``[F]`` float64, each feature's activation summed over all tokens (``None`` unless
            ``text_feature_matrix`` got a ``special`` mask).
        special_mass: ``[F]`` float64, the same sum over special-token rows only (or ``None``).
    """

    per_text: np.ndarray
    fire_count: np.ndarray
    n_tokens: int
    tokens_per_text: np.ndarray
    reduce: str
    mass: np.ndarray | None = None
    special_mass: np.ndarray | None = None

    @property
    def alive(self) -> np.ndarray:
        """``[F]`` bool: features that fire on at least one token of the split.

        Dead features carry no information and would otherwise distort overlap and selectivity
        averages, so callers use this mask to drop them.
        """
        return self.fire_count > 0

    @property
    def fire_rate(self) -> np.ndarray:
        """``[F]`` float64: fraction of tokens on which each feature fires."""
        return self.fire_count / max(self.n_tokens, 1)

    @property
    def special_share(self) -> np.ndarray:
        """``[F]`` float64: share of each feature's activation mass that sits on special tokens
        ([CLS], [SEP], ...); 0 for a feature that never fires.

        A feature living on [CLS] reads the token the classifier reads, so it looks label-
        selective after fine-tuning almost by construction; this share lets callers report such
        features apart instead of counting them as evidence that a layer specialised.
        """
        if self.mass is None or self.special_mass is None:
            raise ValueError(
                "special_share needs text_feature_matrix(..., special=mask); none was given"
            )
        return np.divide(
            self.special_mass, self.mass, out=np.zeros_like(self.mass), where=self.mass > 0
        )


def text_feature_matrix(
    encode: Encode,
    acts: np.ndarray,
    text_id: np.ndarray,
    n_texts: int,
    reduce: str = "max",
    chunk: int = DEFAULT_CHUNK,
    d_in: int | None = None,
    special: np.ndarray | None = None,
) -> TextFeatures:
    """Reduce token-level SAE activations to one vector per text, in one streaming pass.

    Texts are compared by their strongest (``reduce="max"``, the paper's choice) or average
    (``"mean"``) activation of each feature, so the ``[N_tokens, F]`` matrix is never stored: rows
    are read ``chunk`` at a time (converted to float32), encoded, reduced per run of equal
    ``text_id`` and merged into the running ``[n_texts, F]`` result. A text split across chunks
    is merged correctly, and rows need not be sorted by text (sorted rows are just faster).

    Args:
        encode: SAE encoder, float32 ``[n, D]`` -> nonnegative ``[n, F]``.
        acts: ``[N_tokens, D]`` token activations (memmap is fine).
        text_id: ``[N_tokens]`` text index of each row, in ``[0, n_texts)``.
        n_texts: number of texts in the split.
        reduce: ``"max"`` or ``"mean"`` over each text's tokens.
        chunk: rows encoded at a time; results do not depend on it.
        d_in: SAE input width (``W_dec.shape[1]``), checked against ``D`` when given.
        special: optional ``[N_tokens]`` bool, rows holding a special token (see
            :func:`special_rows`); when given, the same pass sums every feature's activation
            over all rows and over these rows (``TextFeatures.special_share``).

    Returns:
        ``TextFeatures``; texts without any rows get an all-zero row (and a warning).
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got reduce={reduce!r}")
    chunk = _as_count("chunk", chunk)
    n_texts = _as_count("n_texts", n_texts)
    n_rows, _ = _check_acts(acts, d_in)
    tid = _check_text_ids(text_id, n_rows, n_texts)
    tokens_per_text = np.bincount(tid, minlength=n_texts).astype(np.int64)
    is_special = None if special is None else _check_index("special", special, n_rows).astype(bool)

    per_text: np.ndarray | None = None
    fire_count: np.ndarray | None = None
    mass = np.zeros((2, 0))  # [all rows, special rows] x F, sized on the first chunk
    for start, stop, f in _encoded_chunks(encode, acts, chunk):
        if per_text is None:
            fill = -np.inf if reduce == "max" else 0.0
            per_text = np.full((n_texts, f.shape[1]), fill, dtype=np.float32)
            fire_count = np.zeros(f.shape[1], dtype=np.int64)
            mass = np.zeros((2, f.shape[1]), dtype=np.float64)
        assert fire_count is not None
        fire_count += np.count_nonzero(f > 0, axis=0)
        _merge_runs(per_text, f, tid[start:stop], np.maximum if reduce == "max" else np.add)
        if is_special is not None:
            rows = is_special[start:stop]
            mass[0] += f.sum(axis=0, dtype=np.float64)
            mass[1] += f[rows].sum(axis=0, dtype=np.float64)

    assert per_text is not None and fire_count is not None
    _finish_per_text(per_text, tokens_per_text, reduce)
    logger.debug(
        "text_feature_matrix: %d tokens, %d texts, F=%d, %d alive features",
        n_rows,
        n_texts,
        per_text.shape[1],
        int(np.count_nonzero(fire_count)),
    )
    return TextFeatures(
        per_text=per_text,
        fire_count=fire_count,
        n_tokens=n_rows,
        tokens_per_text=tokens_per_text,
        reduce=reduce,
        mass=None if is_special is None else mass[0],
        special_mass=None if is_special is None else mass[1],
    )


def special_rows(token_id: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """``[N_tokens]`` bool: rows whose vocabulary id is a special token (pass the tokenizer's
    ``all_special_ids``), the mask :func:`text_feature_matrix` takes as ``special``."""
    tok = np.asarray(token_id)
    if tok.ndim != 1:
        raise ValueError(f"token_id must be 1-D, got shape {tok.shape}")
    return np.isin(tok, np.asarray(list(special_ids), dtype=tok.dtype))


def _check_text_ids(text_id: np.ndarray, n_rows: int, n_texts: int) -> np.ndarray:
    """``text_id`` as int64, one per activation row, each in ``[0, n_texts)``."""
    tid = _check_index("text_id", text_id, n_rows).astype(np.int64)
    if n_rows == 0:
        raise ValueError("activations have no rows")
    if tid.min() < 0 or tid.max() >= n_texts:
        raise ValueError(
            f"text_id values must lie in [0, n_texts={n_texts}), "
            f"got range [{tid.min()}, {tid.max()}]"
        )
    return tid


def _merge_runs(per_text: np.ndarray, f: np.ndarray, t: np.ndarray, ufunc: np.ufunc) -> None:
    """Fold one chunk's feature rows ``f`` (text ids ``t``) into ``per_text`` in place: reduce
    each run of equal text ids with ``ufunc`` (max or add), then merge the runs into their texts.
    ``ufunc.at`` is needed only when a text has two runs in the chunk (unsorted rows)."""
    run_starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    run_tids = t[run_starts]
    run_val = ufunc.reduceat(f, run_starts, axis=0)
    if np.unique(run_tids).size == run_tids.size:
        per_text[run_tids] = ufunc(per_text[run_tids], run_val)
    else:
        ufunc.at(per_text, run_tids, run_val)


def _finish_per_text(per_text: np.ndarray, tokens_per_text: np.ndarray, reduce: str) -> None:
    """Zero the rows of texts without tokens (they still hold the fill value), and turn sums
    into means for ``reduce="mean"``; in place."""
    empty = tokens_per_text == 0
    if empty.any():
        logger.warning(
            "%d of %d texts have no token rows; their feature activations are set to 0",
            int(empty.sum()),
            per_text.shape[0],
        )
        per_text[empty] = 0.0
    if reduce == "mean":
        per_text /= np.maximum(tokens_per_text, 1)[:, None].astype(np.float32)


# --------------------------------------------------------------------------------------------
# 2-3. Ranking features and texts
# --------------------------------------------------------------------------------------------


def top_variance_features(
    per_text: np.ndarray, n: int, among: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the ``n`` features whose per-text activation varies most across texts.

    Variance across texts is the paper's criterion for "interesting" features: a feature that is
    constant (including never firing) cannot distinguish texts. Variance is computed in float64;
    ties are broken by the lower feature index so the selection is deterministic. ``among`` (an
    ``[F]`` bool mask, e.g. alive and not special-token features) restricts the candidates.

    Returns:
        ``[n]`` int64 feature indices, highest variance first.
    """
    p = _check_per_text(per_text)
    candidates = np.arange(p.shape[1])
    if among is not None:
        mask = np.asarray(among)
        if mask.dtype != bool or mask.shape != (p.shape[1],):
            raise ValueError(
                f"among must be a bool mask of shape ({p.shape[1]},), got {mask.dtype} {mask.shape}"
            )
        candidates = np.flatnonzero(mask)
        if candidates.size == 0:
            raise ValueError("among selects no features")
    n = _clip_count("n", n, candidates.size, "features")
    var = p[:, candidates].astype(np.float64).var(axis=0)
    order = np.lexsort((candidates, -var))
    return candidates[order[:n]].astype(np.int64)


def top_texts(per_text: np.ndarray, feature: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` texts on which ``feature`` is most active, as ``(text_index, activation)``.

    Used to read what a feature responds to. Highest activation first; ties by lower text index.
    """
    p = _check_per_text(per_text)
    (feat,) = _check_features([feature], p.shape[1])
    k = _clip_count("k", k, p.shape[0], "texts")
    col = p[:, feat].astype(np.float64)
    order = np.lexsort((np.arange(col.size), -col))[:k]
    return [(int(i), float(col[i])) for i in order]


# --------------------------------------------------------------------------------------------
# 4. Tokens that drive a feature
# --------------------------------------------------------------------------------------------


def top_tokens(
    encode: Encode,
    acts: np.ndarray,
    token_id: np.ndarray,
    features: Sequence[int] | np.ndarray,
    k: int,
    min_count: int = 5,
    chunk: int = DEFAULT_CHUNK,
    d_in: int | None = None,
) -> dict[int, list[tuple[int, float, int]]]:
    """For each requested feature, the token ids on which it fires most strongly on average.

    Rule: over the whole split, every token id's mean activation of the feature is computed
    (sum over its occurrences / number of occurrences). Only token ids occurring at least
    ``min_count`` times are ranked, because a mean over one or two occurrences is noise and
    would let rare sub-word pieces crowd out the tokens a feature reliably responds to. Token
    ids are ranked by mean activation (ties: higher count, then lower token id), and token ids
    with mean exactly 0 (the feature never fires on them) are dropped, so a list can be shorter
    than ``k``. One streaming pass over ``acts`` serves all requested features.

    Args:
        encode: SAE encoder, float32 ``[n, D]`` -> nonnegative ``[n, F]``.
        acts: ``[N_tokens, D]`` token activations.
        token_id: ``[N_tokens]`` vocabulary id of each row.
        features: feature indices to report.
        k: token ids per feature (clipped to the number of eligible token ids).
        min_count: minimum occurrences of a token id in the split to be ranked.
        chunk: rows encoded at a time.
        d_in: SAE input width (``W_dec.shape[1]``), checked against ``D`` when given.

    Returns:
        ``{feature: [(token_id, mean_activation, count), ...]}`` in the order requested.
    """
    n_rows, _ = _check_acts(acts, d_in)
    tok = _check_index("token_id", token_id, n_rows)
    min_count = _as_count("min_count", min_count)
    chunk = _as_count("chunk", chunk)
    _as_count("k", k)
    feats_req = np.asarray(features)
    if feats_req.size == 0:
        raise ValueError("features must name at least one feature, got an empty list")
    if n_rows == 0:
        raise ValueError("activations have no rows")

    # Compact the vocabulary to the ids that occur, so the accumulator is [n_unique, n_feats].
    vocab, inverse = np.unique(tok, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=vocab.size).astype(np.int64)

    feats, sums = _token_sums(encode, acts, inverse, vocab.size, feats_req, chunk)
    eligible = np.flatnonzero(counts >= min_count)
    if eligible.size == 0:
        logger.warning(
            "no token id occurs at least min_count=%d times (max count %d); "
            "returning empty token lists",
            min_count,
            int(counts.max()),
        )
        return {int(f): [] for f in feats}
    k = _clip_count("k", k, eligible.size, f"token ids with count >= {min_count}")

    result: dict[int, list[tuple[int, float, int]]] = {}
    elig_counts = counts[eligible]
    elig_vocab = vocab[eligible]
    for j, feat in enumerate(feats):
        means = sums[j, eligible] / elig_counts
        order = np.lexsort((elig_vocab, -elig_counts, -means))
        order = order[means[order] > 0][:k]
        result[int(feat)] = [
            (int(elig_vocab[i]), float(means[i]), int(elig_counts[i])) for i in order
        ]
    return result


def _token_sums(
    encode: Encode,
    acts: np.ndarray,
    inverse: np.ndarray,
    n_vocab: int,
    features: np.ndarray,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The checked feature indices, and ``[n_features, n_vocab]`` float64 sums of each
    feature's activation per (compacted) token id, in one streaming pass over ``acts``."""
    feats: np.ndarray | None = None
    sums: np.ndarray | None = None
    for start, stop, f in _encoded_chunks(encode, acts, chunk):
        if feats is None:
            feats = _check_features(features, f.shape[1])
            sums = np.zeros((feats.size, n_vocab), dtype=np.float64)
        assert sums is not None
        inv = inverse[start:stop]
        sel = f[:, feats]
        for j in range(feats.size):
            sums[j] += np.bincount(inv, weights=sel[:, j], minlength=n_vocab)
    assert feats is not None and sums is not None
    return feats, sums


# --------------------------------------------------------------------------------------------
# 5. Label selectivity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selectivity:
    """How well each feature's per-text activation separates one class from the rest.

    Attributes:
        auc: ``[F]`` float64, the best one-vs-rest ROC AUC over classes.
        best_class: ``[F]`` int64, the class attaining ``auc`` (lowest index on ties).
        auc_per_class: ``[F, C]`` float64, one-vs-rest AUC per class (NaN for a class that is
            absent or is every text, where AUC is undefined).
        class_counts: ``[C]`` int64, texts per class.
    """

    auc: np.ndarray
    best_class: np.ndarray
    auc_per_class: np.ndarray
    class_counts: np.ndarray


def label_selectivity(
    per_text: np.ndarray, labels: np.ndarray, n_classes: int, block: int = 2048
) -> Selectivity:
    """One-vs-rest ROC AUC of every feature for every class, vectorised over features.

    AUC is the probability that a random text of the class activates the feature more than a
    random other text (ties count one half), i.e. the Mann-Whitney statistic
    ``U / (n1 * n0)`` with ``U = (sum of ranks of the class's texts) - n1 (n1 + 1) / 2`` on
    tie-averaged ranks. Ranking each column once (``scipy.stats.rankdata(axis=0)``) and summing
    ranks per class with one matrix product gives all ``F x C`` AUCs without a Python loop over
    features; the result equals ``sklearn.metrics.roc_auc_score``. A constant feature (e.g. one
    that never fires) gets AUC exactly 0.5. Columns are processed ``block`` at a time to bound
    the float64 rank matrix.

    Returns:
        ``Selectivity``; ``auc``/``best_class`` consider only classes with AUC defined.
    """
    p = _check_per_text(per_text)
    n_texts, n_features = p.shape
    n_classes = _as_count("n_classes", n_classes)
    block = _as_count("block", block)
    lab = _check_labels(labels, n_classes, n_texts)
    if not np.all(np.isfinite(p)):
        raise ValueError("per_text contains NaN or infinite values")

    onehot = np.zeros((n_texts, n_classes), dtype=np.float64)
    onehot[np.arange(n_texts), lab] = 1.0
    n1 = onehot.sum(axis=0)
    n0 = n_texts - n1
    defined = (n1 > 0) & (n0 > 0)
    if not defined.any():
        raise ValueError(
            f"AUC needs at least two classes present among the {n_texts} texts; "
            f"class counts are {n1.astype(int).tolist()}"
        )
    if not defined.all():
        logger.warning(
            "classes %s have no texts (or all texts); their AUC is NaN and they are skipped",
            np.flatnonzero(~defined).tolist(),
        )

    auc = np.full((n_features, n_classes), np.nan, dtype=np.float64)
    offset = (n1 * (n1 + 1) / 2.0)[:, None]
    denom = np.where(defined, n1 * n0, 1.0)[:, None]
    for start in range(0, n_features, block):
        stop = min(start + block, n_features)
        ranks = rankdata(p[:, start:stop], axis=0, method="average")
        u = onehot.T @ ranks - offset  # [C, b]
        auc[start:stop] = (u / denom).T
    auc[:, ~defined] = np.nan

    masked = np.where(defined[None, :], auc, -np.inf)
    best_class = masked.argmax(axis=1).astype(np.int64)
    best_auc = masked[np.arange(n_features), best_class]
    return Selectivity(
        auc=best_auc,
        best_class=best_class,
        auc_per_class=auc,
        class_counts=n1.astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# 5b. Calibrating selectivity: permutation null, split halves
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectivityNull:
    """Each feature's selectivity (best one-vs-rest AUC) under shuffled labels.

    The best of ``C`` one-vs-rest AUCs sits above 0.5 by chance alone (about 0.515 for two
    classes and 0.537 for five on a few hundred texts, more on fewer texts), so an observed
    selectivity means something only next to this null.
    """

    samples: np.ndarray
    """``[P, k]`` float64: selectivity of each feature under each label permutation."""

    @property
    def mean(self) -> np.ndarray:
        """``[k]`` null mean, the chance level to subtract."""
        return self.samples.mean(axis=0)

    @property
    def q95(self) -> np.ndarray:
        """``[k]`` 95th percentile of the null."""
        return np.quantile(self.samples, 0.95, axis=0)

    def p_value(self, observed: np.ndarray) -> np.ndarray:
        """``[k]`` permutation p-value ``(1 + #null >= observed) / (1 + P)``."""
        hits = np.count_nonzero(self.samples >= np.asarray(observed)[None, :], axis=0)
        return (1 + hits) / (1 + self.samples.shape[0])


def selectivity_null(
    per_text: np.ndarray, labels: np.ndarray, n_classes: int, n_permutations: int, seed: int
) -> SelectivityNull:
    """Selectivity of the given feature columns under ``n_permutations`` seeded label shuffles.

    Pass only the features of interest (``per_text[:, chosen]``): the cost is one rank pass
    over those columns plus one sparse product. A permutation keeps the class counts, and a
    feature's ranks do not depend on the labels, so every (permutation, class) rank sum comes
    from one ``[P*C, n] @ [n, k]`` product with a 0/1 matrix of permuted one-hot labels; the
    AUCs then follow exactly as in :func:`label_selectivity` (the same permutations give the
    same result as calling it once per shuffled label vector).
    """
    from scipy import sparse

    p = _check_per_text(per_text)
    n_texts = p.shape[0]
    n_classes = _as_count("n_classes", n_classes)
    n_permutations = _as_count("n_permutations", n_permutations)
    lab = _check_labels(labels, n_classes, n_texts)
    if not np.all(np.isfinite(p)):
        raise ValueError("per_text contains NaN or infinite values")
    n1 = np.bincount(lab, minlength=n_classes).astype(np.float64)
    n0 = n_texts - n1
    defined = (n1 > 0) & (n0 > 0)
    if not defined.any():
        raise ValueError(
            f"AUC needs at least two classes present among the {n_texts} texts; "
            f"class counts are {n1.astype(int).tolist()}"
        )
    rng = np.random.default_rng(operator.index(seed))
    shuffled = rng.permuted(np.tile(lab, (n_permutations, 1)), axis=1)  # [P, n]
    rows = (np.arange(n_permutations)[:, None] * n_classes + shuffled).ravel()
    cols = np.tile(np.arange(n_texts), n_permutations)
    onehot = sparse.csr_matrix(
        (np.ones(rows.size), (rows, cols)), shape=(n_permutations * n_classes, n_texts)
    )
    ranks = rankdata(p, axis=0, method="average")
    u = np.asarray(onehot @ ranks).reshape(n_permutations, n_classes, -1)
    u -= (n1 * (n1 + 1) / 2.0)[None, :, None]
    auc = u / np.where(defined, n1 * n0, 1.0)[None, :, None]
    auc[:, ~defined, :] = -np.inf
    return SelectivityNull(samples=auc.max(axis=1))


class Halves(NamedTuple):
    """A split of the texts into two disjoint halves, stratified by label."""

    select: np.ndarray
    """``[n_a]`` sorted text indices on which features are chosen (half A)."""
    score: np.ndarray
    """``[n_b]`` sorted text indices on which the chosen features are scored (half B)."""


def split_halves(labels: np.ndarray, seed: int, n_classes: int | None = None) -> Halves:
    """Split the texts into two halves of (nearly) equal class make-up, deterministically.

    Choosing features by variance and scoring their selectivity on the same texts lets the
    choice fit those texts' noise; scoring on held-out texts removes that bias. Each class is
    shuffled by its own seeded stream (``default_rng([seed, class])``, as in
    :func:`select_examples`) and its first ``n_c // 2`` texts go to ``select``, the rest to
    ``score`` (an odd class gives its extra text to the scoring half).
    """
    lab = np.asarray(labels)
    if lab.size == 0:
        raise ValueError("labels is empty")
    if n_classes is None:
        n_classes = int(lab.max()) + 1
    lab = _check_labels(lab, _as_count("n_classes", n_classes), None)
    seed = operator.index(seed)
    select, score = [], []
    for c in range(n_classes):
        idx = np.random.default_rng([seed, c]).permutation(np.flatnonzero(lab == c))
        select.append(idx[: idx.size // 2])
        score.append(idx[idx.size // 2 :])
    halves = Halves(np.sort(np.concatenate(select)), np.sort(np.concatenate(score)))
    if halves.select.size < 2:
        raise ValueError(
            f"split halves need at least 2 texts per half; {lab.size} texts with class counts "
            f"{np.bincount(lab, minlength=n_classes).tolist()} give {halves.select.size}"
        )
    return halves


@dataclass(frozen=True)
class SplitHalfSelectivity:
    """Features chosen by variance on one half of the texts, scored on the other half against
    their label-permutation null (on that half too)."""

    features: np.ndarray
    """``[k]`` int64, highest variance on the selecting half first."""
    auc: np.ndarray
    """``[k]`` selectivity (best one-vs-rest AUC) on the scoring half."""
    best_class: np.ndarray
    """``[k]`` class attaining ``auc``."""
    null: SelectivityNull
    """The same features' selectivity on the scoring half under shuffled labels."""

    @property
    def excess(self) -> np.ndarray:
        """``[k]`` selectivity above its chance level, ``auc - null.mean``."""
        return self.auc - self.null.mean


def split_half_selectivity(
    per_text: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    halves: Halves,
    n: int,
    among: np.ndarray | None = None,
    n_permutations: int = 20,
    seed: int = 0,
) -> SplitHalfSelectivity:
    """The top-``n`` variance features of ``halves.select`` (restricted to ``among``), with
    their selectivity and its permutation null on ``halves.score``."""
    p = _check_per_text(per_text)
    lab = _check_labels(labels, _as_count("n_classes", n_classes), p.shape[0])
    chosen = top_variance_features(p[halves.select], n, among=among)
    scored = p[np.ix_(halves.score, chosen)]
    sel = label_selectivity(scored, lab[halves.score], n_classes)
    null = selectivity_null(scored, lab[halves.score], n_classes, n_permutations, seed)
    return SplitHalfSelectivity(chosen, sel.auc, sel.best_class, null)


# --------------------------------------------------------------------------------------------
# 6. Dictionary overlap between two SAEs
# --------------------------------------------------------------------------------------------


def _unit_rows(w: np.ndarray, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D [F, D], got shape {w.shape}")
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        logger.warning("%s has %d zero rows; their cosine similarity is set to 0", name, zero.sum())
    return w / np.where(norms == 0, 1.0, norms)


def dictionary_overlap(W_dec_a: np.ndarray, W_dec_b: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each decoder direction of SAE ``a``, its max cosine similarity with any of SAE ``b``.

    This measures how much of ``a``'s dictionary survives in ``b`` (e.g. PT vs FT): a value
    near 1 means ``b`` has an essentially identical feature. The similarity is signed (an
    anti-parallel direction is a different feature for a nonnegative SAE). Rows are normalised
    first, so decoder scaling does not matter; a zero row gets similarity 0. ``a`` is processed
    ``block`` rows at a time, so memory is ``block x F_b`` floats even for 16k-wide SAEs. To
    ignore dead features, pass only the alive rows.

    Returns:
        ``[F_a]`` float32 in ``[-1, 1]``.
    """
    a = _unit_rows(W_dec_a, "W_dec_a")
    b = _unit_rows(W_dec_b, "W_dec_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"width mismatch: W_dec_a has width {a.shape[1]} but W_dec_b has width {b.shape[1]}"
        )
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"empty dictionary: W_dec_a {a.shape}, W_dec_b {b.shape}")
    block = _as_count("block", block)
    out = np.empty(a.shape[0], dtype=np.float32)
    bt = np.ascontiguousarray(b.T)
    for start in range(0, a.shape[0], block):
        stop = min(start + block, a.shape[0])
        out[start:stop] = (a[start:stop] @ bt).max(axis=1)
    return np.clip(out, -1.0, 1.0)


def overlap_summary(max_cos: np.ndarray, threshold: float = 0.7) -> dict[str, float]:
    """Summarise ``dictionary_overlap`` output.

    Returns:
        ``{"mmcs": mean max cosine similarity, "kept_frac": fraction of features with a match
        >= threshold, "threshold": threshold, "n_features": count}``.
    """
    m = np.asarray(max_cos, dtype=np.float64).reshape(-1)
    if m.size == 0:
        raise ValueError("max_cos is empty")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [-1, 1], got threshold={threshold}")
    return {
        "mmcs": float(m.mean()),
        "kept_frac": float(np.mean(m >= threshold)),
        "threshold": float(threshold),
        "n_features": int(m.size),
    }


# --------------------------------------------------------------------------------------------
# 7-8. Labels of text sets, example selection
# --------------------------------------------------------------------------------------------


class LabelDistribution(NamedTuple):
    """Class make-up of a set of texts (e.g. a feature's top texts)."""

    fractions: np.ndarray
    """``[C]`` float64, fraction of the texts in each class (sums to 1)."""
    dominant: int
    """Most frequent class (lowest index on ties)."""


def label_distribution(
    text_indices: Sequence[int] | np.ndarray, labels: np.ndarray, n_classes: int
) -> LabelDistribution:
    """Fraction of ``text_indices`` in each class, and the dominant class.

    Applied to a feature's top texts, this says whether the feature is label-specific.
    """
    n_classes = _as_count("n_classes", n_classes)
    lab = _check_labels(labels, n_classes, None)
    idx = np.asarray(text_indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("text_indices is empty")
    if idx.min() < 0 or idx.max() >= lab.size:
        raise ValueError(
            f"text index out of range [0, {lab.size}): got range [{idx.min()}, {idx.max()}]"
        )
    counts = np.bincount(lab[idx], minlength=n_classes).astype(np.float64)
    fractions = counts / counts.sum()
    return LabelDistribution(fractions=fractions, dominant=int(np.argmax(counts)))


def select_examples(
    labels: np.ndarray, per_label: int, seed: int, n_classes: int | None = None
) -> list[int]:
    """A fixed, seeded choice of ``per_label`` example texts for every label (for token maps).

    Each label draws from its own seeded stream (``default_rng([seed, label])``), so the
    choice for one label does not change when another label's texts change. A label with fewer
    texts contributes all of them (with a warning); a label with none is skipped with a warning.

    Returns:
        text indices sorted by label, then by index.
    """
    per_label = _as_count("per_label", per_label)
    lab = np.asarray(labels)
    if lab.size == 0:
        raise ValueError("labels is empty")
    if n_classes is None:
        n_classes = int(np.asarray(lab).max()) + 1
    lab = _check_labels(lab, n_classes, None)
    seed = operator.index(seed)
    chosen: list[int] = []
    for c in range(n_classes):
        idx = np.flatnonzero(lab == c)
        if idx.size == 0:
            logger.warning("label %d has no texts; no examples selected for it", c)
            continue
        take = per_label
        if idx.size < per_label:
            logger.warning(
                "per_label=%d requested but label %d has only %d texts; taking all of them",
                per_label,
                c,
                idx.size,
            )
            take = idx.size
        rng = np.random.default_rng([seed, c])
        pick = np.sort(rng.choice(idx, size=take, replace=False))
        chosen.extend(int(i) for i in pick)
    return chosen


# --------------------------------------------------------------------------------------------
# 9. Token maps
# --------------------------------------------------------------------------------------------


def token_map(
    encode: Encode,
    acts: np.ndarray,
    text_id: np.ndarray,
    position: np.ndarray,
    token_id: np.ndarray,
    text_index: int,
    features: Sequence[int] | np.ndarray,
    d_in: int | None = None,
) -> dict[str, Any]:
    """Activation of selected features on every token of one text, for token-level plots.

    Only the text's rows are read and encoded. Rows are returned in ``position`` order, so the
    caller can decode ``token_id`` with the tokenizer and lay the activations out as text.

    Returns:
        ``{"text_index": int, "rows": [n] int64 row indices into acts, "token_id": [n],
        "position": [n], "features": [k] int64, "activations": [n, k] float32}``.
    """
    n_rows, _ = _check_acts(acts, d_in)
    tid = _check_index("text_id", text_id, n_rows)
    pos = _check_index("position", position, n_rows)
    tok = _check_index("token_id", token_id, n_rows)
    text_index = operator.index(text_index)
    rows = np.flatnonzero(tid == text_index)
    if rows.size == 0:
        raise ValueError(f"text_index={text_index} has no token rows")
    rows = rows[np.argsort(pos[rows], kind="stable")]
    x = np.asarray(acts[rows], dtype=np.float32)
    f = _encode_rows(encode, x, None)
    feats = _check_features(features, f.shape[1])
    return {
        "text_index": text_index,
        "rows": rows.astype(np.int64),
        "token_id": tok[rows],
        "position": pos[rows],
        "features": feats,
        "activations": np.ascontiguousarray(f[:, feats]),
    }


__all__ = [
    "Encode",
    "Halves",
    "LabelDistribution",
    "Selectivity",
    "SelectivityNull",
    "SplitHalfSelectivity",
    "TextFeatures",
    "dictionary_overlap",
    "label_distribution",
    "label_selectivity",
    "overlap_summary",
    "select_examples",
    "selectivity_null",
    "special_rows",
    "split_half_selectivity",
    "split_halves",
    "text_feature_matrix",
    "token_map",
    "top_texts",
    "top_tokens",
    "top_variance_features",
]
