"""The project's DVC cache settings keep a stage's cached output folder on disk once:
``dvc repro`` hardlinks its files into the cache instead of copying them, so the fine-tuned
models, SAEs and crosscoders (folders) do not take their space twice. For a folder DVC links at
commit time only when ``hardlink`` is the first cache type; with ``reflink`` first it copies,
and on a file system without reflinks the workspace keeps a second copy (what a fresh
``make reproduce`` showed with the project's earlier setting)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml
from team_support import REPO_ROOT, dvc, project_env

WRITE = (
    "python -c \"import os; os.makedirs('out', exist_ok=True); "
    "open('out/w.bin', 'wb').write(bytes(range(256)) * 64)\""
)


def _project_cache_type() -> str:
    return dvc("config", "cache.type", cwd=REPO_ROOT, env=project_env(None)).strip()


def _tiny_repo(path: Path, cache_type: str) -> dict[str, str]:
    env = project_env(None)
    path.mkdir()
    dvc("init", "--no-scm", "-q", cwd=path, env=env)
    dvc("config", "cache.type", cache_type, cwd=path, env=env)
    stage = {"cmd": WRITE, "outs": ["out"]}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"write": stage}}))
    return env


def _cache_file(repo: Path) -> Path:
    """The cache object of ``out/w.bin`` (its bytes' md5, the name DVC stores it under)."""
    md5 = hashlib.md5((repo / "out" / "w.bin").read_bytes()).hexdigest()
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _repro(repo: Path, cache_type: str) -> tuple[os.stat_result, os.stat_result]:
    env = _tiny_repo(repo, cache_type)
    dvc("repro", "-q", cwd=repo, env=env)
    return (repo / "out" / "w.bin").stat(), _cache_file(repo).stat()


def test_project_cache_type_hardlinks_new_outputs(tmp_path: Path) -> None:
    cache_type = _project_cache_type()
    assert cache_type.split(",")[0].strip() == "hardlink", cache_type
    out, cached = _repro(tmp_path / "repo", cache_type)
    assert (out.st_ino, out.st_dev) == (cached.st_ino, cached.st_dev)
    assert out.st_nlink == 2
