"""Load a task's source into a ``datasets.Dataset`` of (text, label), clean it, split it.

Every source becomes the same thing: a ``Dataset`` with a ``text`` string column and a ``label``
``ClassLabel`` whose names are sorted (so class ids are stable across machines and runs). The
three splits (train / val / analysis) are stratified by label, disjoint and seeded.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layerwise.config import ConfigError, LabelSpec, ModelDef, TaskDef
from layerwise.errors import MissingInputError, UserError
from layerwise.sources import SourceError, resolve

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "analysis")
TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
"""Byte-order marks and the encodings they declare (Windows tools write UTF-16 with a BOM)."""


class DataError(UserError):
    """The data of a task cannot be turned into a usable classification set."""


# --------------------------------------------------------------------------------------------
# Reading raw records
# --------------------------------------------------------------------------------------------


def _decode(raw: bytes, encoding: str, path: Path, how: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} cannot be decoded as {encoding} ({how}): {exc.reason} at byte {exc.start}; "
            "save it as UTF-8"
        ) from None


def _strip_bom(raw: bytes) -> tuple[bytes, str | None]:
    """The bytes after a byte-order mark and the encoding it declares (None: no BOM)."""
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            return raw[len(bom) :], encoding
    return raw, None


def read_text_file(path: Path) -> str:
    """A label folder's text: in the encoding its byte-order mark declares, else UTF-8 falling
    back to latin-1 (one BBC article is latin-1; latin-1 decodes any bytes)."""
    raw, declared = _strip_bom(path.read_bytes())
    if declared is not None:
        return _decode(raw, declared, path, "its byte-order mark says so")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.info("%s is not UTF-8; decoded as latin-1", path)
        return raw.decode("latin-1")


def _read_table_text(path: Path) -> str:
    """A CSV/TSV/JSONL file's text: in the encoding its byte-order mark declares, else UTF-8.
    No latin-1 fallback: a table that is not UTF-8 is refused rather than silently misread."""
    raw, declared = _strip_bom(path.read_bytes())
    how = "no byte-order mark" if declared is None else "its byte-order mark says so"
    return _decode(raw, declared or "utf-8", path, how)


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        # .txt files under a directory are texts of a label folder, not tables.
        data_files = [
            p for p in sorted(path.rglob("*")) if p.suffix in TABLE_SUFFIXES and p.suffix != ".txt"
        ]
        return TABLE_SUFFIXES[data_files[0].suffix] if data_files else "folder"
    if path.suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[path.suffix]
    raise DataError(f"cannot tell the format of {path}; set format to csv/tsv/jsonl/parquet")


def _table_files(path: Path, fmt: str) -> list[Path]:
    if path.is_file():
        return [path]
    suffixes = {s for s, f in TABLE_SUFFIXES.items() if f == fmt}
    files = sorted(p for p in path.rglob("*") if p.suffix in suffixes)
    if not files:
        raise DataError(f"no {fmt} files under {path}")
    return files


def read_table(path: Path, fmt: str):
    """All table files under ``path`` as one pandas DataFrame (pandas ships with ``datasets``).

    Malformed files fail with the parser's own message, wrapped with the file's path.
    """
    import pandas as pd

    frames = []
    for file in _table_files(path, fmt):
        text = None if fmt == "parquet" else io.StringIO(_read_table_text(file))
        try:
            if fmt in ("csv", "tsv"):
                frame = pd.read_csv(
                    text,
                    sep="\t" if fmt == "tsv" else ",",
                    dtype=str,
                    keep_default_na=False,
                    quoting=3 if fmt == "tsv" else 0,  # TSV: quote characters are text
                )
            elif fmt == "jsonl":
                frame = pd.read_json(text, lines=True, dtype=False)
            else:
                frame = pd.read_parquet(file)
        except Exception as exc:
            raise DataError(f"{file} is not a readable {fmt} file: {exc}") from exc
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_folder(path: Path) -> tuple[list[str], list[str]]:
    """One sub-folder per label, one ``.txt`` file per text (BBC: first line is the headline)."""
    if not path.is_dir():
        raise DataError(f"format 'folder' needs a directory, got {path}")
    texts, labels = [], []
    label_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if not label_dirs:
        raise DataError(f"{path} has no label sub-folders")
    for label_dir in label_dirs:
        for file in sorted(label_dir.glob("*.txt")):
            texts.append(read_text_file(file))
            labels.append(label_dir.name)
    if not texts:
        raise DataError(f"no .txt files in the label folders of {path}")
    return texts, labels


def load_raw(task: TaskDef) -> tuple[list[str], list[Any]]:
    """Texts and raw labels of a task, with the text/label columns checked."""
    path = resolve(task.source, kind="dataset")
    fmt = detect_format(path, task.format)
    if fmt == "folder":
        return read_folder(path)
    frame = read_table(path, fmt)
    missing = [c for c in (task.text_field, task.label_field) if c not in frame.columns]
    if missing:
        which = " and ".join(
            f"{'text' if c == task.text_field else 'label'} column {c!r}" for c in missing
        )
        raise DataError(
            f"{task.source}: no {which}; columns present: {list(frame.columns)} "
            "(set text_field / label_field in task_defs)"
        )
    return frame[task.text_field].tolist(), frame[task.label_field].tolist()


# --------------------------------------------------------------------------------------------
# Labels and cleaning
# --------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalise_text(text: Any) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return _WS.sub(" ", str(text)).strip()


def _as_float(value: Any, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{source}: label value {value!r} is not a number") from None


def map_labels(raw: list[Any], spec: LabelSpec, source: str) -> tuple[list[str | None], list[str]]:
    """Raw label values -> class names (None = drop the row), and the class name list."""
    if spec.kind == "column":
        names = [normalise_text(v) or None for v in raw]
        classes = sorted({n for n in names if n is not None})
    elif spec.kind == "map":
        names = [spec.mapping.get(normalise_text(v)) for v in raw]
        classes = sorted(set(spec.mapping.values()))
    elif spec.kind == "sign":
        scores = np.array([_as_float(v, source) for v in raw])
        neg, pos = spec.names
        names = [
            None
            if not np.isfinite(s) or abs(s) < spec.threshold or s == 0
            else (pos if s > 0 else neg)
            for s in scores
        ]
        classes = sorted(spec.names)
    else:  # bins
        scores = np.array([_as_float(v, source) for v in raw])
        n = len(spec.names)
        # Rounded edges: linspace's float error would put scores on an edge in either bin.
        # Bins are closed on the right: (e_i, e_{i+1}], the first one also includes ``low``.
        edges = np.round(np.linspace(spec.low, spec.high, n + 1), 9)
        idx = np.digitize(np.round(scores, 9), edges[1:-1], right=True)
        outside = ~np.isfinite(scores) | (scores < spec.low) | (scores > spec.high)
        names = [None if o else spec.names[i] for i, o in zip(idx, outside, strict=True)]
        classes = list(spec.names)
    return names, classes


def build_dataset(task: TaskDef, min_chars: int, task_key: str = "task") -> Dataset:
    """Load, label and clean a task: strip, drop empty/short and duplicate texts (first kept)."""
    from datasets import ClassLabel, Dataset, Features, Value

    texts, raw_labels = load_raw(task)
    names, classes = map_labels(raw_labels, task.labels, task.source)
    seen: set[str] = set()
    rows_text, rows_label = [], []
    dropped = Counter()
    for text, name in zip(texts, names, strict=True):
        text = normalise_text(text)
        if name is None:
            dropped["unlabelled"] += 1
        elif len(text) < max(min_chars, 1):
            dropped["empty"] += 1
        elif text in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(text)
            rows_text.append(text)
            rows_label.append(name)
    logger.info("%s: %d texts kept, dropped %s", task_key, len(rows_text), dict(dropped))
    if not rows_text:
        raise DataError(
            f"task {task_key!r}: no texts left after cleaning ({dict(dropped)} dropped from "
            f"{len(texts)} rows of {task.source})"
        )
    counts = Counter(rows_label)
    empty = [c for c in classes if counts[c] == 0]
    if empty:
        raise DataError(
            f"task {task_key!r}: label class(es) {empty} have no texts after labelling "
            f"(counts: {dict(counts)}); fix task_defs.{task_key}.labels"
        )
    if len(classes) < 2:
        raise DataError(
            f"task {task_key!r} has only one class {classes}; classification needs >= 2"
        )
    class_label = ClassLabel(names=classes)
    return Dataset.from_dict(
        {"text": rows_text, "label": [class_label.str2int(n) for n in rows_label]},
        features=Features({"text": Value("string"), "label": class_label}),
    )


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_sizes(n: int, task: TaskDef, task_key: str) -> dict[str, int]:
    """Val and analysis are exact; train takes the rest up to ``max_train``."""
    rest = n - task.max_val - task.max_analysis
    if rest < 2:
        raise ConfigError(
            f"task_defs.{task_key}: max_val={task.max_val} + max_analysis={task.max_analysis} "
            f"leave {rest} of {n} texts for training; lower them"
        )
    return {"train": min(task.max_train, rest), "val": task.max_val, "analysis": task.max_analysis}


def stratified_splits(ds: Dataset, task: TaskDef, seed: int, task_key: str) -> DatasetDict:
    """Disjoint, label-stratified, seeded splits (scikit-learn's stratified sampling)."""
    from datasets import DatasetDict
    from sklearn.model_selection import train_test_split

    sizes = split_sizes(len(ds), task, task_key)
    labels = np.asarray(ds["label"])
    idx = np.arange(len(ds))
    names = ds.features["label"].names
    n_classes = len(names)
    counts = np.bincount(labels, minlength=n_classes)
    small = {names[c]: int(n) for c, n in enumerate(counts) if n < len(SPLITS)}
    if small:
        raise DataError(
            f"task {task_key!r}: cannot stratify splits {sizes}: class(es) {small} have fewer "
            f"than {len(SPLITS)} texts, one for each of {list(SPLITS)}; add texts or map "
            f"them to another class (task_defs.{task_key}.labels)"
        )
    try:
        rest, analysis = train_test_split(
            idx, test_size=sizes["analysis"], stratify=labels, random_state=seed
        )
        rest, val = train_test_split(
            rest, test_size=sizes["val"], stratify=labels[rest], random_state=seed + 1
        )
        if sizes["train"] < len(rest):
            train, _ = train_test_split(
                rest, train_size=sizes["train"], stratify=labels[rest], random_state=seed + 2
            )
        else:
            train = np.random.default_rng(seed).permutation(rest)
    except ValueError as exc:  # e.g. a class too small to appear in every split
        raise DataError(f"task {task_key!r}: cannot stratify splits {sizes}: {exc}") from exc
    out = {}
    for name, rows in (("train", train), ("val", val), ("analysis", analysis)):
        present = set(labels[rows].tolist())
        missing = [names[c] for c in range(n_classes) if c not in present]
        if missing:
            raise DataError(
                f"task {task_key!r}: split {name!r} ({len(rows)} texts) misses class(es) "
                f"{missing}; increase its size"
            )
        out[name] = ds.select(np.sort(rows))
    return DatasetDict(out)


def load_splits(path: str | Path) -> DatasetDict:
    """Prepared splits written by the prepare stage."""
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise MissingInputError(
            f"{path} holds no prepared splits: they are made by the prepare stage "
            f"(run `dvc repro prepare@{path.name}`)"
        )
    # In memory: the splits are small, and a later .map() must never write cache files into
    # a DVC output folder (that would change its hash).
    return load_from_disk(str(path), keep_in_memory=True)


def model_splits(path: str | Path, model: ModelDef, seed: int) -> DatasetDict:
    """The prepared splits as ``model`` uses them: each capped at the model's ``max_train`` /
    ``max_val`` / ``max_analysis`` (a larger model runs on fewer texts). Every stage of one
    model calls this with the same ``seed``, so they all see the same texts."""
    caps = {"train": model.max_train, "val": model.max_val, "analysis": model.max_analysis}
    return cap_splits(load_splits(path), caps, seed)


def cap_splits(splits: DatasetDict, caps: dict[str, int | None], seed: int) -> DatasetDict:
    """``splits`` with each split named in ``caps`` cut to its cap by :func:`cap_split`, seeded
    per split (``seed`` + its index in :data:`SPLITS`), so a reader of one split alone (the
    explorer's analysis texts) gets the rows the stages used."""
    for name, cap in caps.items():
        splits[name] = cap_split(splits[name], cap, seed + SPLITS.index(name))
    return splits


def cap_split(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """At most ``n`` rows of ``ds``: a label-stratified seeded sample (a plain seeded sample
    when some class is too small to stratify), kept in the split's order."""
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(ds):
        return ds
    labels = np.asarray(ds["label"])
    idx = np.arange(len(ds))
    try:
        keep, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class with one row, or fewer rows kept than classes
        keep = np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return ds.select(np.sort(keep))


def split_stats(splits: DatasetDict, tokenizer: Any | None) -> dict[str, Any]:
    """Rows per split and label, and token-length statistics (DVC metrics of prepare)."""
    names = splits["train"].features["label"].names
    stats: dict[str, Any] = {}
    for split, ds in splits.items():
        labels = np.asarray(ds["label"])
        stats[f"{split}/rows"] = len(ds)
        for i, name in enumerate(names):
            stats[f"{split}/label/{name}"] = int((labels == i).sum())
        if tokenizer is not None:
            lengths = np.array(
                [len(ids) for ids in tokenizer(list(ds["text"]), truncation=False)["input_ids"]]
            )
            stats[f"{split}/tokens/mean"] = round(float(lengths.mean()), 2)
            stats[f"{split}/tokens/median"] = float(np.median(lengths))
            stats[f"{split}/tokens/p95"] = float(np.percentile(lengths, 95))
            stats[f"{split}/tokens/max"] = int(lengths.max())
    return stats


__all__ = [
    "SPLITS",
    "DataError",
    "SourceError",
    "build_dataset",
    "load_raw",
    "load_splits",
    "split_stats",
    "stratified_splits",
]
