"""Where a study lives: Optuna storage, the study's attributes, its trials and its best trial.

compare and export need only this module: a study found by name, the definition it was created
from, and the MLflow runs its attributes point to.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
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
from pipeline.study.spec import StudyDefinition, check_study_name, parse_study, study_changes

DEFAULT_STORAGE = Path("runs") / "optuna.journal"
# A study's budget counts these: a pruned trial is a finished one.
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENDED_STATES = (*FINISHED_STATES, optuna.trial.TrialState.FAIL)
SPEC_ATTR = "study_file"  # the study file's text, kept in the study so any machine can rebuild it
CREATED_ATTR = "created_at"  # when the study was created (seconds since the epoch)
CHANGES_ATTR = "study_file_changes"  # edits accepted on resume with --allow-changes
PARENT_ATTR = "mlflow_parent_run_id"  # study attribute: the study's MLflow parent run
log = logging.getLogger(__name__)
RUN_ATTR = "mlflow_run_id"  # trial attribute: the trial's MLflow run (its first seed's)
TRIAL_RUN_ATTR = "mlflow_trial_run_id"  # with objective.seeds > 1: the run holding the seeds
ERROR_ATTR = "error"  # trial attribute: why a failed trial failed
# trial attribute: the trial's scores (objectives, constraints, main metrics, costs) as Optuna
# saw them: the mean of each val/ metric's last_k evaluations; what export's --pick reads
SCORES_ATTR = "scores"
OWNER_ATTR = "worker"  # trial attribute: host, pid and start time of the process running it
# Optuna's heartbeat for database storages: a trial whose worker stopped beating for GRACE
# seconds (another machine died, say) is failed by whichever worker notices first.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


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
        _check_sqlite_file(Path(url.removeprefix("sqlite:///").split("?", 1)[0]), masked, create)
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
            with _file_lock(url):
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
    from pipeline.tracking import SQLITE_HEADER

    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"--storage {masked}: {path} is not an SQLite database; give the "
                          f"storage the study was run with{', or a new path' if create else ''}")


@contextmanager
def _file_lock(url: str) -> Iterator[None]:
    """For SQLite: one process at a time creates the schema (migrations race otherwise)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mask_url(url: str) -> str:
    """``mask_secrets`` for a URL (the one masking function, in pipeline.config_load)."""
    return str(mask_secrets(url))


def create_or_load(
    defn: StudyDefinition, storage: str, *, allow_changes: bool = False,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it.

    Creation is atomic in every Optuna storage (the study name is unique), so exactly one of
    several processes starting a new study at once learns it created it: that one creates the
    study's MLflow parent run, and the others wait for it (see ``parent_run.ensure``).
    The creator also enqueues the study file's ``enqueue`` trials. A resumed study must come
    from the same definition (see ``check_same_study``).
    """
    journal = None if "://" in storage else Path(storage)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
    # A new journal is created and given its study in one step (see ``folder_lock``).
    with folder_lock(journal.parent, exclusive=True) if journal else nullcontext():
        kwargs: dict[str, Any] = dict(
            study_name=defn.name,
            storage=open_storage(storage, create=True, on_stale=on_stale),
            sampler=defn.spec.sampler.build(),
            pruner=defn.spec.pruner.build(),
            directions=defn.directions,
        )
        loading = {k: v for k, v in kwargs.items() if k != "directions"}
        # Looked up first: a journal records a create that finds the name taken, so a resume
        # (or a refused one) would append a record each time.
        if _has_study(kwargs["storage"], defn.name):
            study, created = optuna.load_study(**loading), False
        else:
            try:
                study, created = optuna.create_study(**kwargs), True
            except optuna.exceptions.DuplicatedStudyError:  # another process, just now
                study, created = optuna.load_study(**loading), False
        if created:  # optuna-dashboard then names the objectives ("val/fid", not "Objective 0")
            with warnings.catch_warnings():  # "experimental since v3.2": it is what names them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(defn.metrics)
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, defn.text)
        study.set_user_attr(CREATED_ATTR, time.time())
    elif stored != defn.text:
        check_same_study(study, defn, parse_study(stored, default_name=defn.name),
                         allow_changes)
    if created:  # only once: a resumed study has run (or still holds) them
        for params in defn.enqueue:
            study.enqueue_trial(params)
    return study, created


def _has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def check_storage(url: str) -> None:
    """A sweep's storage is usable, checked before anything is created (the MLflow store
    included): a journal that exists is a readable journal, a new one's folder can be made, a
    database answers. Nothing is created or written."""
    if "://" in url:
        masked = mask_secrets(url)
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
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


def existing_study(name: str, url: str) -> optuna.Study | None:
    """The study if the storage already holds it, read as it is (nothing created or written);
    None for a new storage or name."""
    if "://" not in url and not Path(url).exists():
        return None
    try:
        opened = open_storage(url)
    except ConfigError:
        if "://" in url:
            return None  # a database without Optuna's tables yet
        raise
    if not _has_study(opened, name):
        return None
    return optuna.load_study(study_name=name, storage=opened)


def check_same_study(study: optuna.Study, new: StudyDefinition, old: StudyDefinition,
                     allow_changes: bool) -> None:
    """A resume with an edited objective, search space or base config would mix incomparable
    trials (and make export ship the wrong one): an error naming the changes, unless allowed.
    The direction can never change: Optuna fixes it when the study is created."""
    changes = study_changes(old, new)
    if not changes:
        return
    if old.directions != new.directions:
        raise ConfigError(f"study {new.name}: the objectives' directions changed "
                          f"({', '.join(old.directions)} -> {', '.join(new.directions)}), "
                          f"which a study cannot do; give the study a new name")
    if not allow_changes:
        raise ConfigError(f"study {new.name} was created from a different study file: "
                          f"{'; '.join(changes)}. Resume with --allow-changes to accept them, "
                          f"or give the study a new name")
    history = [*study.user_attrs.get(CHANGES_ATTR, []),
               {"time": time.time(), "changes": changes}]
    study.set_user_attr(CHANGES_ATTR, history)
    study.set_user_attr(SPEC_ATTR, new.text)


def find_study(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyDefinition]:
    """A study by name in the (default) storage, with the definition it was created from."""
    check_study_name("--study", name)
    url = storage_url(storage)
    if "://" not in url and not Path(url).exists():
        raise ConfigError(f"--study {name}: no study storage at {url} (run `make sweep` first)")
    opened = open_storage(url)  # as it is: nothing created, mended or written
    try:
        study = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        names = optuna.get_all_study_names(opened)
        raise ConfigError(f"--study {name}: not found in {mask_secrets(url)} (studies there: "
                          f"{', '.join(names) or 'none'})") from None
    text = study.user_attrs.get(SPEC_ATTR)
    if text is None:
        raise ConfigError(f"--study {name}: the study has no study file recorded")
    return study, parse_study(text, default_name=name)


def this_worker() -> dict[str, Any]:
    """Who runs a trial: enough to tell later, on the same host, whether it is still alive."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (a reused pid has another one)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def worker_alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's: Optuna's heartbeat (database storages) decides
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return owner.get("started") is None or _start_time(pid) == owner.get("started")


def fail_dead_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials left RUNNING by a worker on this host that has died (SIGKILL, a crash, a reboot)
    become FAIL, with the reason in their ``error`` attribute. Returns them."""
    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if owner is None or worker_alive(owner):
            continue
        reason = f"worker died (pid {owner.get('pid')} on {owner.get('host')})"
        try:
            storage.set_trial_user_attr(trial._trial_id, ERROR_ATTR, reason)
            if storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                failed.append(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
    return failed


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state, by lower-case name (complete, pruned, fail, running, waiting)."""
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(t.state == state for t in trials)
            for state in optuna.trial.TrialState}


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED_STATES)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best trial of a one-objective study; None before any completes, and always for a
    multi-objective study, which has a front instead (``pareto_front``)."""
    if len(study.directions) > 1:
        return None
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other dominates (feasible ones only, when the study has
    constraints), sorted by the first objective, best first; a one-objective study's front is
    its best trial."""
    if len(study.directions) == 1:
        best = best_trial(study)
        return [] if best is None else [best]
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
