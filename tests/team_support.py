"""Helpers of the team tests: real servers on free localhost ports, and a tiny DVC project.

Servers (``make mlflow-server``, ``moto_server``) run as child processes in their own session,
so teardown stops exactly them and their workers. The DVC project is a throwaway git repository
holding the repo's real ``prepare`` stage (copied from ``dvc.yaml``), its script and library
files (so DVC hashes the same deps) and the tiny keyword task: ``dvc repro`` there runs the
real stage in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO_ROOT

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 180  # an MLflow server starts two Python processes: slow on a busy machine
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=0"]


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serving(
    cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until the block ends; enter once ``ready_url`` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        _stop(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it and its workers); SIGKILL the group if any of it
    outlives 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def make_mlflow_server(port: int, store: Path) -> list[str]:
    """``make mlflow-server`` itself, on ``port`` with its SQLite backend and artifact root
    under ``store``, this interpreter's tools and one worker. ``-o`` keeps make from
    reinstalling the venv (the stamp counts as up to date)."""
    return [
        "make", "--no-print-directory", "-C", str(REPO_ROOT), "-o", ".venv/.installed",
        "mlflow-server", f"BIN={BIN}", f"MLFLOW_PORT={port}", f"MLFLOW_STORE={store}",
        "MLFLOW_SERVER_ARGS=--workers 1",
    ]  # fmt: skip


def server_env() -> dict[str, str]:
    """The server's environment, without its job runner (nothing here uses it; it is one more
    process to start)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; return its output, or fail showing it."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-4000:]}"
        )
    return done.stdout + done.stderr


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return run([str(BIN / "dvc"), *args], cwd, env)


def project_env(mlflow_uri: str | None) -> dict[str, str]:
    """Stage commands call ``python``: the venv's comes first on PATH. ``mlflow_uri`` None
    leaves the store at its default (``mlflow.db`` in the DVC repo)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    if mlflow_uri is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    return env


def prepare_only_pipeline() -> dict[str, Any]:
    """The repo's ``dvc.yaml`` with its ``prepare`` stage only."""
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    return {"stages": {"prepare": pipeline["stages"]["prepare"]}}


def make_project(path: Path, params: dict[str, Any], env: dict[str, str]) -> Path:
    """A git + DVC repository at ``path`` with the prepare stage, its deps and ``params``,
    committed."""
    path.mkdir(parents=True)
    pipeline = prepare_only_pipeline()
    for dep in pipeline["stages"]["prepare"]["do"]["deps"]:
        if "$" not in dep:
            (path / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO_ROOT / dep, path / dep)
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    run([*GIT, "init", "-q"], path, env)
    dvc("init", "-q", cwd=path, env=env)
    run([*GIT, "add", "-A"], path, env)
    run([*GIT, "commit", "-q", "-m", "tiny project"], path, env)
    return path


def commit_all(path: Path, env: dict[str, str], message: str) -> None:
    run([*GIT, "add", "-A"], path, env)
    run([*GIT, "commit", "-q", "-m", message], path, env)


def clone(source: Path, dest: Path, env: dict[str, str]) -> Path:
    run([*GIT, "clone", "-q", str(source), str(dest)], source.parent, env)
    return dest


def files_of(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
