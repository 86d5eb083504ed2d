"""MLflow: where the store is, and a client on it that is checked before it is used.

Everything goes through ``MlflowClient`` with an explicit tracking URI (no global ``mlflow``
state), so several studies or tests in one process cannot write into each other's stores.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError, check_tracking_uri
from pipeline.config_load import cut, mask_secrets
from pipeline.faults import StorageFault, fault_message, storage_fault
from pipeline.sqlite import SQLITE_HEADER, schema_lock, sqlite_path

DEFAULT_STORE_DIR = Path("runs")


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
