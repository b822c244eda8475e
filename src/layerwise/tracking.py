"""MLflow tracking: one run per stage execution, tagged so every number can be traced back.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` at the
repo root. The store is contacted when the run starts, before any expensive work, so a wrong or
unreachable URI fails the stage at once with the URI named (never a silent fallback to another
store). Any MLflow failure later is re-raised as :class:`TrackingError`; stages log before they
commit their outputs, so a failed log leaves the DVC outputs as they were.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from layerwise.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"


class TrackingError(UserError, RuntimeError):
    """MLflow could not be reached or written."""


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(root).resolve() / DEFAULT_DB).as_posix()}"


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
    """Set by ``dvc exp run`` in the stage's environment; plain ``dvc repro`` is 'workspace'."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def _clean(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


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
            return fn(*args, **kwargs)
        except Exception as exc:
            raise TrackingError(
                f"MLflow {what} failed for tracking URI {self.uri!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
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
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / name
            shutil.copyfile(path, renamed)
            self._call("log_artifact", self._mlflow.log_artifact, str(renamed), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", self._mlflow.log_artifacts, str(directory), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})


class start_stage_run:
    """Context manager: ``with start_stage_run("prepare", "sentiment", ...) as run: ...``.

    Run name ``<stage>@<item>``; tags ``git_commit``, ``dvc_exp_name``, ``stage`` and the
    given ones (``task``, ``model``, ``seed``). The run ends FAILED when the block raises.
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

    def __enter__(self) -> StageRun:
        # Unreachable HTTP stores should fail in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        uri = tracking_uri(self.root)
        try:
            mlflow.set_tracking_uri(uri)
            if mlflow.get_experiment_by_name(self.experiment) is None:
                # Artifacts beside the store's root, not in whatever directory we run from.
                mlflow.create_experiment(
                    self.experiment,
                    artifact_location=(self.root.resolve() / "mlartifacts").as_uri(),
                )
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=f"{self.stage}@{self.item}")
        except Exception as exc:
            raise TrackingError(
                f"cannot use MLflow tracking URI {uri!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); fix or unset "
                "MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db at the repo root)"
            ) from exc
        self._run = StageRun(mlflow, run, uri)
        try:
            self._run.set_tags(
                {
                    "git_commit": git_commit(self.root),
                    "dvc_exp_name": dvc_exp_name(),
                    "stage": self.stage,
                    **self.tags,
                }
            )
        except BaseException:
            # __exit__ does not run when __enter__ raises: close the run here.
            mlflow.end_run(status="FAILED")
            raise
        logger.info("MLflow run %s (%s@%s) at %s", run.info.run_id, self.stage, self.item, uri)
        return self._run

    def __exit__(self, exc_type, exc, tb) -> None:
        import mlflow

        status = "FINISHED" if exc_type is None else "FAILED"
        try:
            mlflow.end_run(status=status)
        except Exception as end_exc:
            if exc_type is None:
                raise TrackingError(
                    f"MLflow end_run failed for {self._run.uri if self._run else '?'}: {end_exc}"
                ) from end_exc
            logger.warning("could not mark the MLflow run %s: %s", status, end_exc)
