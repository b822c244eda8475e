"""Atomic output writing and small file helpers.

A stage killed at any moment must leave each output path either as it was or complete, never
half-written: everything is written under a hidden temp sibling (same filesystem) and renamed
into place only after the stage's work, including its MLflow logging, succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.errors import MissingInputError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def _tmp_sibling(final: Path, is_dir: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_stale(final: Path) -> None:
    """Remove temp siblings a killed earlier run left behind for ``final`` (they would pile up
    and change the hash of directories that DVC tracks as deps)."""
    if not final.parent.is_dir():
        return
    for prefix in (f"{TMP_PREFIX}{final.name}-", f"{TMP_PREFIX}old-{final.name}-"):
        for stale in final.parent.glob(f"{prefix}*"):
            logger.info("removing %s left by an interrupted run", stale)
            _remove(stale)


def replace_path(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing what was there (files: atomic; dirs: near-atomic,
    the old dir is moved aside first and removed after the swap)."""
    if tmp.is_dir():
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
            _remove(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            _remove(old)
    else:
        os.replace(tmp, final)


class Staging:
    """Collects a stage's outputs in temp paths; :meth:`commit` renames them all into place.

    Use as a context manager: on an exception every temp path is deleted and the final paths
    are untouched.
    """

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}

    def dir(self, final: str | Path) -> Path:
        """A fresh temp directory that becomes ``final`` on commit."""
        return self._register(Path(final), is_dir=True)

    def file(self, final: str | Path) -> Path:
        """A temp file path that becomes ``final`` on commit."""
        return self._register(Path(final), is_dir=False)

    def _register(self, final: Path, is_dir: bool) -> Path:
        if final in self._pending:
            return self._pending[final]
        clean_stale(final)
        tmp = _tmp_sibling(final, is_dir)
        self._pending[final] = tmp
        return tmp

    def commit(self) -> None:
        for final, tmp in self._pending.items():
            replace_path(tmp, final)
        self._pending.clear()

    def abort(self) -> None:
        for tmp in self._pending.values():
            _remove(tmp)
        self._pending.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._pending:
            self.commit()


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write a directory in a temp sibling; rename into place if the block succeeds."""
    with Staging() as staging:
        yield staging.dir(final)


def to_jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays and paths to plain JSON types; NaN stays NaN (JSON allows it
    through ``allow_nan``, and DVC reads it)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, keys in stable order so diffs and hashes are stable."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def read_json(path: str | Path, made_by: str | None = None) -> Any:
    """Read JSON; a missing file names the stage that makes it."""
    path = Path(path)
    if not path.is_file():
        hint = f" (made by the {made_by} stage: run `dvc repro {made_by}`)" if made_by else ""
        raise MissingInputError(f"{path} not found{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None):
    """Write rows as CSV (DVC plots read it); columns default to the first row's keys."""
    import csv

    path = Path(path)
    columns = columns or (list(rows[0]) if rows else [])
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(to_jsonable(row))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def require(path: str | Path, made_by: str) -> Path:
    """Return ``path`` if it exists, else fail naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(
            f"{path} not found: it is made by the {made_by} stage (run `dvc repro {made_by}` first)"
        )
    return path
