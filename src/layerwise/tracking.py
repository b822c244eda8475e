"""MLflow tracking: one run per stage execution, tagged so every number can be traced back.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` at the
repo root. The store is contacted when the run starts, before any expensive work, so a wrong or
unreachable URI fails the stage at once with the URI named (never a silent fallback to another
store). Any MLflow failure later is re-raised as :class:`TrackingError`; stages log before they
commit their outputs, so a failed log leaves the DVC outputs as they were (one exception:
``prepare`` records the split it wrote as a dataset after writing it; if that fails the stage
fails and DVC reruns it, writing the same split again).

A team shares one store: with an ``http(s)`` URI (an ``mlflow server``, ``make mlflow-server``)
the server picks where artifacts go, so every client can download them. Several stages may
write to one SQLite store at once (``dvc queue start -j 2``): its first use is serialised across
processes and a write refused with "database is locked" is retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from layerwise.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# Stores that keep artifacts themselves: the experiment gets no client-side artifact location.
SERVER_SCHEMES = ("http", "https", "databricks")
# SQLite's message for a write that could not take the database lock; the write changed nothing.
LOCKED = "database is locked"
LOCKED_RETRY_S = 120.0
T = TypeVar("T")


class TrackingError(UserError, RuntimeError):
    """MLflow could not be reached or written."""


def store_home(root: str | Path = ".") -> Path:
    """Where the default store and local artifacts live: the DVC repo a stage runs for.

    DVC sets ``DVC_ROOT`` to the main repo, also for a queued or ``--temp`` experiment that runs
    in a throwaway copy under ``.dvc/tmp/exps``: its runs must land in the repo's store, not in
    the copy that is deleted when it ends. Outside DVC it is ``root``.
    """
    return Path(os.environ.get("DVC_ROOT") or root).resolve()


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` (see
    :func:`store_home`)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(store_home(root) / DEFAULT_DB).as_posix()}"


def is_server(uri: str) -> bool:
    """True for a tracking server, which stores (and serves) artifacts itself."""
    return urlparse(uri).scheme in SERVER_SCHEMES


def git_commit(root: str | Path = ".") -> str:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it ('unknown' outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_exp_name() -> str:
    """Set by ``dvc exp run`` in the stage's environment; plain ``dvc repro`` is 'workspace'.

    Every run of one experiment carries it as the tag ``dvc_exp_name``, so MLflow finds them
    together with the filter ``tags.dvc_exp_name = '<name>'``.
    """
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def dir_md5(path: str | Path) -> str:
    """The md5 DVC records for a directory output (``dvc.lock``'s ``md5`` without ``.dir``).

    DVC hashes the JSON list of ``{"md5", "relpath"}`` of every file, sorted by path. Using
    its hash as a dataset digest ties an MLflow run to the exact DVC-versioned data it read.
    """
    root = Path(path)
    entries = [
        {"md5": hashlib.md5(file.read_bytes()).hexdigest(), "relpath": rel}
        for rel, file in sorted(
            (f.relative_to(root).as_posix(), f) for f in root.rglob("*") if f.is_file()
        )
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried while SQLite answers "database is locked".

    SQLite admits one writer at a time. MLflow waits for the lock, but SQLite refuses at once
    when waiting could deadlock, and a long queue of parallel stages can outwait the timeout;
    either way the refused write was rolled back, so doing it again is safe.
    """
    deadline = time.monotonic() + LOCKED_RETRY_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if LOCKED not in str(exc) or time.monotonic() >= deadline:
                raise
            logger.debug("MLflow store locked; retrying %s in %.2fs", fn, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(2 * delay, 1.0)


@contextlib.contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Hold a machine-wide lock for ``uri`` while a SQLite store is first used.

    MLflow creates and migrates the schema of a new SQLite file on first use; two processes
    doing so at once break each other's migration ("table already exists"), and two stages
    creating the same experiment at once collide. Other stores handle concurrency themselves.
    """
    if urlparse(uri).scheme != "sqlite":
        yield
        return
    key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"layerwise-mlflow-{key}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


class StageRun:
    """An open MLflow run for one stage execution. Use :func:`start_stage_run`."""

    def __init__(self, mlflow_module: Any, run: Any, uri: str) -> None:
        self._mlflow = mlflow_module
        self.run = run
        self.uri = uri

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            return retry_locked(fn, *args, **kwargs)
        except Exception as exc:
            raise TrackingError(
                f"MLflow {what} failed for tracking URI {self.uri!r}: {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: _clean(v) for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._call("log_params", self._mlflow.log_params, dict(items[i : i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numeric:
            self._call("log_metrics", self._mlflow.log_metrics, numeric, step=step)

    def log_artifact(
        self, path: str | Path, artifact_path: str | None = None, name: str | None = None
    ) -> None:
        """Log a file; ``name`` renames it in the store (staged outputs live under temp names
        until they are committed, but the artifact should carry the final name)."""
        path = Path(path)
        if name is None or name == path.name:
            self._call("log_artifact", self._mlflow.log_artifact, str(path), artifact_path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / name
            shutil.copyfile(path, renamed)
            self._call("log_artifact", self._mlflow.log_artifact, str(renamed), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", self._mlflow.log_artifacts, str(directory), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_dataset(self, name: str, source: dict[str, str], digest: str, context: str) -> None:
        """Record a dataset the stage used (MLflow's Dataset column): ``source`` says where it
        comes from, ``digest`` identifies its content, ``context`` how the stage used it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name, digest=digest, source_type="layerwise", source=json.dumps(source)
        )
        used = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
        client = self._mlflow.MlflowClient(self.uri)
        self._call("log_input", client.log_inputs, self.run_id, [used])


class start_stage_run:
    """Context manager: ``with start_stage_run("prepare", "sentiment", ...) as run: ...``.

    Run name ``<stage>@<item>``; tags ``git_commit``, ``dvc_exp_name`` (plus
    ``dvc_exp_baseline_rev`` under ``dvc exp run``), ``stage`` and the given ones (``task``,
    ``model``, ``seed``). The run ends FAILED when the block raises.
    """

    def __init__(
        self,
        stage: str,
        item: str,
        experiment: str,
        tags: dict[str, Any] | None = None,
        root: str | Path = ".",
    ) -> None:
        self.stage, self.item, self.experiment = stage, item, experiment
        self.tags = dict(tags or {})
        self.root = Path(root)
        self._run: StageRun | None = None

    def _open(self, mlflow: Any, uri: str) -> Any:
        """Select (creating if needed) the experiment and start the run."""
        mlflow.set_tracking_uri(uri)
        with first_use_lock(uri):
            if retry_locked(mlflow.get_experiment_by_name, self.experiment) is None:
                self._create_experiment(mlflow, uri)
            retry_locked(mlflow.set_experiment, self.experiment)
        return retry_locked(mlflow.start_run, run_name=f"{self.stage}@{self.item}")

    def _create_experiment(self, mlflow: Any, uri: str) -> None:
        """A server stores artifacts where all its clients can fetch them; a local store keeps
        them beside itself, not in whatever directory we run from. Another client of a server
        may create the experiment first: that is not an error."""
        location = None if is_server(uri) else (store_home(self.root) / ARTIFACTS_DIR).as_uri()
        try:
            retry_locked(mlflow.create_experiment, self.experiment, artifact_location=location)
        except Exception:
            if mlflow.get_experiment_by_name(self.experiment) is None:
                raise

    def _standard_tags(self) -> dict[str, Any]:
        tags = {
            "git_commit": git_commit(self.root),
            "dvc_exp_name": dvc_exp_name(),
            "stage": self.stage,
        }
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        return {**tags, **self.tags}

    def __enter__(self) -> StageRun:
        # Unreachable HTTP stores should fail in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        uri = tracking_uri(self.root)
        try:
            run = self._open(mlflow, uri)
        except Exception as exc:
            raise TrackingError(
                f"cannot use MLflow tracking URI {uri!r} ({type(exc).__name__}: "
                f"{_first_line(exc)}); fix or unset MLFLOW_TRACKING_URI (default: "
                "sqlite:///mlflow.db at the repo root)"
            ) from exc
        self._run = StageRun(mlflow, run, uri)
        try:
            self._run.set_tags(self._standard_tags())
        except BaseException:
            # __exit__ does not run when __enter__ raises: close the run here.
            self._end("FAILED")
            raise
        logger.info("MLflow run %s (%s@%s) at %s", run.info.run_id, self.stage, self.item, uri)
        return self._run

    def _end(self, status: str) -> None:
        """End the run with ``status``. ``mlflow.end_run`` forgets the run before it writes the
        status, so a locked write is retried through the client."""
        import mlflow

        active = mlflow.active_run()
        if active is None:
            return
        run_id = active.info.run_id
        try:
            mlflow.end_run(status=status)
        except Exception as exc:
            if LOCKED not in str(exc):
                raise
            retry_locked(mlflow.MlflowClient().set_terminated, run_id, status)

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        try:
            self._end(status)
        except Exception as end_exc:
            if exc_type is None:
                raise TrackingError(
                    f"MLflow end_run failed for {self._run.uri if self._run else '?'}: {end_exc}"
                ) from end_exc
            logger.warning("could not mark the MLflow run %s: %s", status, end_exc)
