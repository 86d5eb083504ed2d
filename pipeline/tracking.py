"""MLflow: where the store is, one run's lifecycle, and batched logging.

Everything goes through ``MlflowClient`` with an explicit tracking URI (no global ``mlflow``
state), so several studies or tests in one process cannot write into each other's stores. Runs
start the way ``mlflow.start_run`` starts them: MLflow's own context providers fill in the user,
the source and the git commit.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline import __version__
from pipeline.config import ConfigError, check_tracking_uri
from pipeline.config_load import cut, mask_secrets
from pipeline.faults import StorageFault, fault_message, storage_fault
from pipeline.sqlite import SQLITE_HEADER, schema_lock, sqlite_path

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

DEFAULT_STORE_DIR = Path("runs")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else ``sqlite:///runs/mlflow.db``.

    Pinned explicitly: MLflow 3 would otherwise create ``mlflow.db`` wherever the user stands.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_tracking_uri("tracking URI" if configured else "$MLFLOW_TRACKING_URI", uri)
        return uri
    DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    # Workers writing at the same moment wait up to a minute for SQLite's lock (5 s by default,
    # too short for two busy workers ending their runs together).
    return f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}?timeout=60"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local store sit beside its database; a server decides for itself."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if uri.startswith("sqlite:///"):
        return (sqlite_path(uri).parent / "artifacts").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        return None  # a file store keeps artifacts inside itself
    return (DEFAULT_STORE_DIR / "artifacts").resolve().as_uri()


_opened: set[str] = set()


def get_client(uri: str) -> MlflowClient:
    """A client on ``uri``. The first one in a process creates (or migrates) a SQLite store's
    schema under a file lock: two processes creating one fresh store at once otherwise race in
    MLflow's migrations and can leave it unusable. A server must answer the first time
    (``check_reachable``): one line in seconds, not minutes of retries and a traceback."""
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    if uri in _opened or not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    path = sqlite_path(uri)
    where = f"MLflow store {path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if storage_fault(exc):
            raise
        raise ConfigError(f"{where}: cannot create the folder {path.parent} ({exc.strerror})"
                          ) from None
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise ConfigError(f"{where} is not an SQLite database, so not an MLflow store "
                                  f"(overwritten?); move it aside, or set MLFLOW_TRACKING_URI "
                                  f"to another store")
    with schema_lock(path):
        try:
            client = MlflowClient(tracking_uri=uri)  # creates the schema, once, under the lock
        except Exception as exc:
            reason = storage_fault(exc)
            if reason is None:
                raise
            raise StorageFault(fault_message(where, reason)) from None
    _opened.add(uri)
    return client


def open_store_for_reading(uri: str) -> MlflowClient:
    """A client for commands that only read (compare, export, reeval's lookup): a store that
    is missing, empty or not MLflow's is an error, never created or given MLflow's schema
    (MLflow writes its tables into any database that lacks them, a 0-byte file included)."""
    where = f"MLflow store {mask_secrets(uri)}"
    if uri.startswith("sqlite:///"):
        _check_sqlite_store(sqlite_path(uri), f"MLflow store {sqlite_path(uri)}")
    elif uri.startswith("file:"):
        folder = Path(uri.removeprefix("file://") if uri.startswith("file://")
                      else uri.removeprefix("file:"))
        if not folder.is_dir():
            raise ConfigError(f"{where}: no such folder {folder} (deleted or moved?): the "
                              f"study's runs are not there")
    elif uri.startswith(("postgresql", "mysql", "mssql")):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(uri)
        except Exception as exc:
            raise ConfigError(f"{where}: not a usable database URL ({cut(str(exc))})") from None
        _check_mlflow_tables(engine, where)
    if uri.startswith("sqlite:///"):
        # a complete store: no schema to create, so no lock to take (its file could not be
        # made in a read-only folder, and reading needs none)
        return MlflowClient(tracking_uri=uri)
    return get_client(uri)  # a server is checked there




def _check_sqlite_store(path: Path, where: str) -> None:
    if not path.exists():
        raise ConfigError(f"{where} does not exist (deleted or moved?): the study's runs are "
                          f"not there; set MLFLOW_TRACKING_URI to the store it was run with")
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a regular file")
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if not header:
        raise ConfigError(f"{where}: {path} is empty (0 bytes), not an MLflow store; set "
                          f"MLFLOW_TRACKING_URI to the store the study was run with")
    if header != SQLITE_HEADER:
        raise ConfigError(f"{where}: {path} is not an SQLite database, so not an MLflow store")
    import sqlite3

    import sqlalchemy

    ro = f"{path.resolve().as_uri()}?mode=ro"  # read-only: the file cannot be changed
    engine = sqlalchemy.create_engine("sqlite://", creator=lambda: sqlite3.connect(ro, uri=True))
    _check_mlflow_tables(engine, where)


def _check_mlflow_tables(engine: Any, where: str) -> None:
    """MLflow's own test of a fresh database, the one after which it creates its tables."""
    from mlflow.store.db.utils import _all_tables_exist

    try:
        complete = _all_tables_exist(engine)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot read it ({type(exc).__name__}: "
                          f"{cut(str(exc).splitlines()[0] if str(exc) else '')})") from None
    finally:
        engine.dispose()
    if not complete:
        raise ConfigError(f"{where}: not an MLflow store (MLflow's tables are missing); set "
                          f"MLFLOW_TRACKING_URI to the store the study was run with")


# A server that is down: MLflow's defaults (7 retries with a doubling back-off, 120 s a
# request) take minutes to say so. The first contact in a process uses these instead, each only
# where the user has not set it; later requests keep MLflow's patience (a busy server, a
# restart mid-run).
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_answered: set[str] = set()


@contextmanager
def quick_http_failures() -> Iterator[None]:
    unset = {k: v for k, v in QUICK_HTTP.items() if k not in os.environ}
    os.environ.update(unset)
    try:
        yield
    finally:
        for key in unset:
            os.environ.pop(key, None)


def check_reachable(uri: str) -> None:
    """The store answers (once per process and store), or a one-line ConfigError in seconds;
    the URI in it has its password masked."""
    if uri in _answered:
        return
    with quick_http_failures():
        try:
            server = uri.startswith(("http://", "https://"))
            client = MlflowClient(tracking_uri=uri) if server else get_client(uri)
            client.search_experiments(max_results=1)
        except ConfigError:
            raise
        except Exception as exc:
            reason = storage_fault(exc)
            if reason is not None:
                raise StorageFault(fault_message(f"MLflow store {mask_secrets(uri)}", reason)
                                   ) from None
            raise ConfigError(f"MLflow at {mask_secrets(uri)} does not answer: "
                              f"{unreachable_reason(exc)}") from None
    _answered.add(uri)


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def unreachable_reason(exc: BaseException) -> str:
    """The cause in a few words ('[Errno 111] Connection refused'), else the first line."""
    text = str(exc).strip()
    found = _ERRNO.search(text)
    if found:
        return found.group(0).strip()
    if "timed out" in text:
        return f"timed out after {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s"
    return cut(text.splitlines()[0]) if text else type(exc).__name__


# MLflow 3's UI opens an experiment of unknown kind on its GenAI traces page; this kind (the
# UI's "machine learning" experiment) opens on its training runs.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location(
            client.tracking_uri), tags=EXPERIMENT_TAGS))
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def now_ms() -> int:
    return int(time.time() * 1000)


class RunLogger:
    """One open MLflow run: batched params, metrics and tags; figures and text as artifacts."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=items)  # MLflow splits large batches itself

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = now_ms()
        self.log_metric_points([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_metric_points(self, points: Sequence[Metric]) -> None:
        if points:
            self.client.log_batch(self.run_id, metrics=list(points))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            items = [RunTag(k, mask_secrets(str(v))[:5000]) for k, v in tags.items()]
            self.client.log_batch(self.run_id, tags=items)

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, fig, artifact_file)
        plt.close(fig)

    def log_image(self, fig: Figure, key: str, step: int) -> Image.Image:
        """A step-indexed image: the MLflow UI shows a slider over the steps of ``key``. Returns
        the rendered image (for a file of the same picture)."""
        import matplotlib.pyplot as plt

        from pipeline.plots import figure_image

        image = figure_image(fig)
        self.client.log_image(self.run_id, image, key=key, step=step)
        plt.close(fig)
        return image

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_training_data(self, features: np.ndarray, name: str,
                          source: str | Mapping[str, str] | None) -> None:
        """The training set as an MLflow dataset input (the run page's Datasets): its name, a
        digest of its contents, its shape and its source, a file path or (for data drawn by
        code) a description of the code."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        origin = source if isinstance(source, str) else CodeDatasetSource(dict(source or {}))
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and then warns that a path "can be
            # interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource".
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            dataset = from_numpy(features, source=origin, name=name)
        inputs = [DatasetInput(dataset._to_mlflow_entity(),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException:
            # An experiment holds one row per dataset (name, digest). Workers that start their
            # first trials together insert it at once and all but one fail on the unique key;
            # by then the winner's row is there, and a second try links this run to it.
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


@dataclass(frozen=True)
class Ending:
    """How a run ends when an exception of some type leaves it."""

    status: str  # FINISHED, KILLED or FAILED
    tags: Mapping[str, str] = field(default_factory=dict)


def start_run(client: MlflowClient, experiment: str, *, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Create a run as ``mlflow.start_run`` would (user, source, git commit from MLflow's
    context providers) without touching MLflow's global active-run state."""
    all_tags = {"package_version": __version__, **(tags or {})}
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    resolved = resolve_tags({k: mask_secrets(str(v)) for k, v in all_tags.items()})
    run = client.create_run(experiment_id(client, experiment), tags=resolved, run_name=run_name)
    return str(run.info.run_id)


# Ctrl-C or SIGTERM: the run ends KILLED and says why, and that the command resumes it
STOPPED = Ending("KILLED", {"killed_reason": "run the same command again to resume"})


@contextmanager
def mlflow_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    ended_by: Mapping[type[BaseException], Ending] | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[RunLogger]:
    """Open a run (or reopen ``run_id`` to continue it) and always close it with a status.

    Normal exit -> FINISHED. An exception whose type is in ``ended_by`` ends the run as that
    entry says (a study ends a pruned trial FINISHED with tag optuna_state=PRUNED); Ctrl-C and
    SIGTERM -> KILLED; any other exception -> FAILED with the error in tag ``error``. The
    exception propagates.
    """
    client = get_client(uri)
    resumed = run_id is not None
    if run_id is None:
        run_id = start_run(client, experiment, run_name=run_name, parent_run_id=parent_run_id,
                           tags=tags)
    else:
        client.update_run(run_id, status="RUNNING")
    logger = RunLogger(client, run_id)
    endings: dict[type[BaseException], Ending] = {KeyboardInterrupt: STOPPED}
    endings.update(ended_by or {})
    monitor = start_system_metrics(uri, run_id, resume=resumed) if system_metrics else None
    try:
        yield logger
    except BaseException as exc:
        if monitor is not None:
            monitor.finish()
        for exc_type, ending in endings.items():
            if isinstance(exc, exc_type):
                tags = dict(ending.tags)
                if ending is STOPPED:
                    tags["killed_reason"] = f"stopped by {exc or 'Ctrl-C'}: {tags['killed_reason']}"
                status = ending.status
                break
        else:
            status, tags = "FAILED", {"error": f"{type(exc).__name__}: {exc}"}
        try:
            close_run(logger, status, tags)
        except Exception:
            if storage_fault(exc) is None:
                raise
            # the store refused the write that caused this: the run stays RUNNING until a
            # resume ends it (sweep.close_orphan_runs); the fault is what the user must hear of
        raise
    else:
        if monitor is not None:
            monitor.finish()
        client.set_terminated(logger.run_id, "FINISHED")


def start_system_metrics(uri: str, run_id: str, *, resume: bool) -> Any:
    """MLflow's own system-metrics monitor (a thread sampling CPU, memory and disk every 10 s
    into system/* metrics), on this run of this store."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
    monitor.start()
    return monitor


def close_run(logger: RunLogger, status: str, tags: dict[str, str]) -> None:
    """End a run with a status, retried: it runs while a study is being stopped, when every
    worker writes at once."""
    for attempt in range(3):
        try:
            logger.set_tags(tags)
            logger.client.set_terminated(logger.run_id, status)
            return
        except Exception as exc:
            if attempt == 2 or storage_fault(exc):  # a full disk does not clear in seconds
                raise
            time.sleep(1.0 + attempt)
