"""MLflow: where the store is, one run's lifecycle, and batched logging.

Everything goes through ``MlflowClient`` with an explicit tracking URI (no global ``mlflow``
state), so several studies or tests in one process cannot write into each other's stores.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline import __version__
from pipeline.config import PROJECT_ROOT

DEFAULT_STORE_DIR = Path("runs")
BATCH_LIMIT = 100  # MLflow accepts at most 100 params (and 1,000 metrics) per log_batch


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///runs/mlflow.db``.

    Pinned explicitly: MLflow 3 would otherwise create ``mlflow.db`` wherever the user stands.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local store sit beside its database; a server decides for itself."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return None  # a file store keeps artifacts inside itself
    return (DEFAULT_STORE_DIR / "artifacts").resolve().as_uri()


def get_client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location(
            client.tracking_uri)))
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def mask_secrets(value: Any) -> Any:
    """Hide passwords in URIs (``postgresql://user:secret@host``) before they become params."""
    if isinstance(value, str):
        return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", value)
    return value


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLogger:
    """One open MLflow run: batched params, metrics, tags and artifacts."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(mask_secrets(v))[:6000]) for k, v in params.items()]
        for start in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH_LIMIT])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not metrics:
            return
        now = _now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Write ``data`` to ``artifact_file`` (e.g. 'samples/epoch_005.png') in the run."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


@contextmanager
def mlflow_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    killed_by: Mapping[type[BaseException], Mapping[str, str]] | None = None,
) -> Iterator[RunLogger]:
    """Open a run and always close it with the right status.

    Normal exit -> FINISHED. An exception whose type is in ``killed_by`` (Ctrl-C always is; a
    study adds Optuna's TrialPruned with tag optuna_state=PRUNED) -> KILLED with those tags. Any
    other exception -> FAILED with the error in tag ``error``. The exception propagates.
    """
    client = get_client(uri)
    all_tags = {"package_version": __version__, "git_commit": git_commit(), **(tags or {})}
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(
        experiment_id(client, experiment), tags={k: str(v) for k, v in all_tags.items()},
        run_name=run_name,
    )
    logger = RunLogger(client, run.info.run_id)
    killed: dict[type[BaseException], Mapping[str, str]] = {KeyboardInterrupt: {}}
    killed.update(killed_by or {})
    try:
        yield logger
    except BaseException as exc:
        for exc_type, extra_tags in killed.items():
            if isinstance(exc, exc_type):
                _close(logger, "KILLED", dict(extra_tags))
                break
        else:
            _close(logger, "FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        raise
    else:
        client.set_terminated(logger.run_id, "FINISHED")


def _close(logger: RunLogger, status: str, tags: dict[str, str]) -> None:
    try:
        logger.set_tags(tags)
    finally:
        logger.client.set_terminated(logger.run_id, status)


def _now_ms() -> int:
    return int(time.time() * 1000)
