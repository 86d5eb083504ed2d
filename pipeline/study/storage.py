"""Optuna storage: a journal file or a database URL, opened, checked or refused.

Only a sweep creates a storage or mends a journal's torn last record; every other command opens
one as it is. A file that is not a journal, or a damaged one, is refused and kept as it is.

One job past 300 lines: the journal's checks and the database URL's are the two kinds of one
storage that every command opens the same way.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal._storage import JournalOperation as _OP  # not exported

from pipeline.config_load import cut, mask_secrets
from pipeline.errors import ConfigError
from pipeline.outputs import check_output_folder
from pipeline.sqlite import SQLITE_HEADER, schema_lock, sqlite_path

DEFAULT_STORAGE = Path("runs") / "optuna.journal"
# Optuna's heartbeat for database storages: a trial whose worker stopped beating for GRACE
# seconds (another machine died, say) is failed by whichever worker notices first.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
log = logging.getLogger(__name__)


def storage_url(given: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the journal file runs/optuna.journal."""
    return given or os.environ.get("OPTUNA_STORAGE") or str(DEFAULT_STORAGE)


def open_storage(url: str, *, create: bool = False,
                 on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                 ) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, sqlite://) as is; anything else is a journal file path.

    The journal file is Optuna's storage for several processes on one machine (SQLite locks
    under parallel writers); PostgreSQL is the one for many machines. Only ``create`` (sweep)
    makes a new storage (a journal file, Optuna's tables) or mends a journal's torn last
    record; without it (compare, export, reeval, dashboard) a storage is opened as it is or
    refused. A file that is not a journal, or a damaged one, is refused either way and kept as
    it is. ``on_stale``: a sweep's database storage runs Optuna's heartbeat, and this is called
    for each trial it fails.
    """
    if "://" in url:
        heartbeat: dict[str, Any] = {} if on_stale is None else dict(
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=on_stale)
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(url, create=create, **heartbeat)
    path = Path(url)
    if path.is_dir():
        raise ConfigError(f"--storage {url}: a folder; expected a journal file or a database URL")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _journal_storage(path, create=True)
    if not path.exists():
        raise ConfigError(f"--storage {url}: no study storage there (run `make sweep` first, "
                          f"or give the storage the study was run with)")
    with folder_lock(path.parent, exclusive=False):  # not while a sweep creates the journal
        return _journal_storage(path, create=False)


def _journal_storage(path: Path, *, create: bool) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    if path.exists():
        check_journal(path, mend=create)
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as exc:  # records that are well formed but cannot be replayed
        raise ConfigError(_damaged(path, create, f"Optuna cannot replay its records "
                                                 f"({type(exc).__name__}: {cut(str(exc))})")
                          ) from None


@contextmanager
def folder_lock(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """A lock on the journal's folder, held by a sweep from opening a journal to creating its
    study (``create_or_load``): until its first record, a new journal is an empty file, which
    any other process would rightly refuse as a journal that was emptied."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# The fields Optuna writes in each kind of journal record (besides op_code and worker_id).
_RECORD_FIELDS: dict[int, dict[str, type]] = {
    _OP.CREATE_STUDY: {"study_name": str, "directions": list},
    _OP.DELETE_STUDY: {"study_id": int},
    _OP.SET_STUDY_USER_ATTR: {"study_id": int, "user_attr": dict},
    _OP.SET_STUDY_SYSTEM_ATTR: {"study_id": int, "system_attr": dict},
    _OP.CREATE_TRIAL: {"study_id": int},
    _OP.SET_TRIAL_PARAM: {"trial_id": int, "param_name": str, "distribution": str},
    _OP.SET_TRIAL_STATE_VALUES: {"trial_id": int, "state": int},
    _OP.SET_TRIAL_INTERMEDIATE_VALUE: {"trial_id": int, "step": int},
    _OP.SET_TRIAL_USER_ATTR: {"trial_id": int, "user_attr": dict},
    _OP.SET_TRIAL_SYSTEM_ATTR: {"trial_id": int, "system_attr": dict},
    _OP.DISCARD_TRIALS: {},
}
_RECORD_START = b'{"op_code":'  # how Optuna's json.dumps begins every record


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    if not isinstance(record, dict) or not isinstance(record.get("worker_id"), str):
        return False
    op = record.get("op_code")
    fields = _RECORD_FIELDS.get(op) if type(op) is int else None
    return fields is not None and all(
        isinstance(record.get(k), t) and not isinstance(record.get(k), bool)
        for k, t in fields.items())


def _is_torn_record(line: bytes) -> bool:
    """The start of a record, as a writer killed mid-write leaves it (records are ASCII)."""
    return (line.isascii() and b"\0" not in line
            and (line.startswith(_RECORD_START) or _RECORD_START.startswith(line)))


def check_journal(path: Path, *, mend: bool = False, sweep: bool | None = None) -> None:
    """Every line of a journal is one of Optuna's records, or a ConfigError says what is wrong
    (the file is then kept byte for byte).

    One damage is known and safe: a writer killed mid-write (or a full disk) leaves the last
    line without its newline. Optuna's reader skips it, but the next append would land right
    after it and make the whole file unreadable; so with ``mend`` (sweep, the command that
    appends) the file is copied aside and the torn tail cut off, under the journal's own lock,
    so that no writer is mid-record. Without it, the file is only read. ``sweep`` (default:
    ``mend``): the messages speak to the sweep command.
    """
    sweep = mend if sweep is None else sweep
    lock = None
    if mend:
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
    try:
        whole, records, lines, bad = 0, 0, 0, 0
        torn = False
        with open(path, "rb") as fh:
            for line in fh:
                lines += 1
                if _is_record(line) and line.endswith(b"\n"):
                    whole += len(line)
                    records += 1
                elif not line.endswith(b"\n") and _is_torn_record(line):
                    torn = True  # the last line: only the last can lack its newline
                else:
                    bad = bad or lines
        if bad and not records:
            raise ConfigError(f"--storage {path}: not an Optuna journal (line {bad} is not a "
                              f"journal record); give the journal file the study was run "
                              f"with, a database URL{', or a new path' if sweep else ''}")
        if bad:
            raise ConfigError(_damaged(path, sweep, f"line {bad} of {lines} is not a journal "
                                                    f"record ({records} records are)"))
        if lines == 0:
            raise ConfigError(_damaged(path, sweep, "it is empty (0 bytes)"))
        if torn and mend:
            _cut_torn_tail(path, whole)
    finally:
        if lock is not None:
            lock.release()


def _damaged(path: Path, sweep: bool, what: str) -> str:
    then = "run the sweep again to start a new journal" if sweep else (
        "give the storage the study was run with")
    return (f"--storage {path}: damaged journal: {what}; nothing was changed in it. Its "
            f"trials' runs are still in MLflow: `python -m pipeline recover --study NAME "
            f"--storage {path}` rebuilds a study from them (the file is kept, renamed); or keep "
            f"it aside (mv {path} {path}.damaged) and {then}")


def _cut_torn_tail(path: Path, whole: int) -> None:
    size = path.stat().st_size
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    shutil.copyfile(path, backup)
    with open(path, "rb+") as fh:
        fh.truncate(whole)
        os.fsync(fh.fileno())
    log.warning("warning: %s: dropped 1 torn record(s) (%d bytes) at its end, left by a writer "
                "killed mid-write (the file as it was: %s); a trial it updated may be marked "
                "failed", path, size - whole, backup)


def _rdb_storage(url: str, *, create: bool, attempts: int = 5,
                 **kwargs: Any) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    masked = mask_secrets(url)
    if url.startswith("sqlite:///"):
        _check_sqlite_file(sqlite_path(url), masked, create)
    if not create:  # Optuna would create its tables in a database that lacks them
        try:
            return optuna.storages.RDBStorage(url, skip_table_creation=True, **kwargs)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
                ImportError, ValueError) as exc:
            raise ConfigError(f"--storage {masked}: not a usable database URL "
                              f"({cut(str(exc))})") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            cause = exc.__cause__ or exc  # Optuna wraps the database's error
            raise ConfigError(f"--storage {masked}: cannot read Optuna's tables there "
                              f"({type(cause).__name__}: {cut(str(cause).splitlines()[0])})"
                              ) from None
    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
             sqlalchemy.exc.OperationalError)
    for attempt in range(attempts):
        try:
            with schema_lock(sqlite_path(url)) if url.startswith("sqlite:///") else nullcontext():
                return optuna.storages.RDBStorage(url, **kwargs)
        except races as exc:
            # Machines starting together on an empty database race to create Optuna's tables
            # and stamp their version (a duplicate key on alembic_version, seen with two
            # machines on PostgreSQL); on the next try the loser finds them made. A server
            # that does not answer is no race: no point in waiting for it.
            lost_race = not isinstance(exc, sqlalchemy.exc.OperationalError) or (
                "already exists" in str(exc))
            if attempt == attempts - 1 or not lost_race:
                raise ConfigError(f"--storage {masked}: cannot open the database "
                                  f"({type(exc).__name__}: {cut(str(exc).splitlines()[0])})"
                                  ) from None
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
                ImportError, ValueError) as exc:
            raise ConfigError(f"--storage {masked}: not a usable database URL "
                              f"({cut(str(exc))})") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            cause = exc.__cause__ or exc  # e.g. a file that is not a database
            raise ConfigError(f"--storage {masked}: cannot open the database "
                              f"({type(cause).__name__}: {cut(str(cause).splitlines()[0])})"
                              ) from None
    raise AssertionError("unreachable")


def _check_sqlite_file(path: Path, masked: str, create: bool) -> None:
    """SQLite would create a missing file, and refuses one that is not a database only once
    Optuna has started on it: both are decided here, the file untouched."""
    if not path.exists():
        if not create:
            raise ConfigError(f"--storage {masked}: no such database file {path} (run `make "
                              f"sweep` first, or give the storage the study was run with)")
        return
    if not path.is_file():
        raise ConfigError(f"--storage {masked}: {path} is not a regular file")
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"--storage {masked}: {path} is not an SQLite database; give the "
                          f"storage the study was run with{', or a new path' if create else ''}")


def mask_url(url: str) -> str:
    """``mask_secrets`` for a URL (the one masking function, in pipeline.config_load)."""
    return str(mask_secrets(url))


def check_storage(url: str) -> None:
    """A sweep's storage is usable, checked before anything is created (the MLflow store
    included): a journal that exists is a readable journal, a new one's folder can be made, a
    database answers. Nothing is created or written."""
    if "://" in url:
        masked = mask_secrets(url)
        if url.startswith("sqlite:///"):
            path = sqlite_path(url)
            _check_sqlite_file(path, masked, create=True)
            check_output_folder(path.parent, option=f"--storage {masked}:")
            return
        _check_server(url, masked)
        return
    path = Path(url)
    if path.is_dir():
        raise ConfigError(f"--storage {url}: a folder; expected a journal file or a database URL")
    if path.exists():
        with folder_lock(path.parent, exclusive=False):  # not while a sweep creates it
            check_journal(path, sweep=True)  # read only; a torn last record is mended later
    else:
        check_output_folder(path.parent, option=f"--storage {url}:")


def _check_server(url: str, masked: str) -> None:
    """A database server answers a connection (Optuna itself would retry, then print a
    traceback); its tables are Optuna's business, made when the study is created."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as exc:  # an unknown dialect, a driver that is not installed
        raise ConfigError(f"--storage {masked}: not a usable database URL "
                          f"({cut(str(exc))})") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        raise ConfigError(f"--storage {masked}: cannot open the database "
                          f"({type(cause).__name__}: {cut(str(cause).strip().splitlines()[0])})"
                          ) from None
    finally:
        engine.dispose()
