"""Where a study lives: Optuna storage, the study's attributes, its trials and its best trial.

compare and export need only this module: a study found by name, the definition it was created
from, and the MLflow runs its attributes point to.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from pipeline.config import ConfigError
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
RUN_ATTR = "mlflow_run_id"  # trial attribute: the trial's MLflow run
ERROR_ATTR = "error"  # trial attribute: why a failed trial failed
OWNER_ATTR = "worker"  # trial attribute: host, pid and start time of the process running it
# Optuna's heartbeat for database storages: a trial whose worker stopped beating for GRACE
# seconds (another machine died, say) is failed by whichever worker notices first.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def storage_url(given: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the journal file runs/optuna.journal."""
    return given or os.environ.get("OPTUNA_STORAGE") or str(DEFAULT_STORAGE)


def open_storage(url: str, *, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial],
                                                  None] | None = None
                 ) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, sqlite://) as is; anything else is a journal file path.

    The journal file is Optuna's storage for several processes on one machine (SQLite locks
    under parallel writers); PostgreSQL is the one for many machines. ``on_stale``: a sweep's
    database storage runs Optuna's heartbeat, and this is called for each trial it fails.
    """
    if "://" in url:
        heartbeat: dict[str, Any] = {} if on_stale is None else dict(
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=on_stale)
        return _rdb_storage(url, **heartbeat)
    path = Path(url)
    if path.is_dir():
        raise ConfigError(f"--storage {url}: a folder; expected a journal file or a database URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    repair_journal(path)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def repair_journal(path: Path) -> None:
    """Drop torn records from a journal file before anything appends to it.

    A writer killed mid-write (or a full disk) can leave a last line without its newline or with
    half a JSON record. Optuna's reader skips it, but the next append lands right after it and
    makes the whole file unreadable (as it did before this repair existed: such a file is mended
    too). Done under the journal's own lock, so no writer is mid-record.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.splitlines(keepends=True)
        good = [line for line in lines if line.endswith(b"\n") and _is_record(line)]
        if len(good) == len(lines):
            return
        if all(line is kept for line, kept in zip(lines, good, strict=False)):
            with open(path, "rb+") as fh:  # only the tail is torn: cut it in place
                fh.truncate(sum(len(line) for line in good))
        else:
            tmp = path.with_name(path.name + ".repair")
            tmp.write_bytes(b"".join(good))
            os.replace(tmp, path)
        log.warning("warning: %s: dropped %d torn record(s) (%d bytes); a trial they updated "
                    "may be marked failed", path, len(lines) - len(good),
                    len(data) - sum(len(line) for line in good))
    finally:
        lock.release()


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _rdb_storage(url: str, attempts: int = 5, **kwargs: Any) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

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
                raise ConfigError(f"--storage {mask_url(url)}: cannot open the database "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
                ImportError, ValueError) as exc:
            raise ConfigError(f"--storage {mask_url(url)}: not a usable database URL "
                              f"({exc})") from None
    raise AssertionError("unreachable")


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
    from pipeline.tracking import mask_secrets

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
    kwargs: dict[str, Any] = dict(
        study_name=defn.name,
        storage=open_storage(storage, on_stale=on_stale),
        sampler=defn.spec.sampler.build(),
        pruner=defn.spec.pruner.build(),
        direction=defn.spec.objective.direction,
    )
    try:
        study, created = optuna.create_study(**kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**{k: v for k, v in kwargs.items()
                                              if k != "direction"}), False
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


def check_same_study(study: optuna.Study, new: StudyDefinition, old: StudyDefinition,
                     allow_changes: bool) -> None:
    """A resume with an edited objective, search space or base config would mix incomparable
    trials (and make export ship the wrong one): an error naming the changes, unless allowed.
    The direction can never change: Optuna fixes it when the study is created."""
    changes = study_changes(old, new)
    if not changes:
        return
    if old.spec.objective.direction != new.spec.objective.direction:
        raise ConfigError(f"study {new.name}: the objective's direction changed "
                          f"({old.spec.objective.direction} -> {new.spec.objective.direction}),"
                          f" which a study cannot do; give the study a new name")
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
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        raise ConfigError(
            f"--study {name}: not found in {url} (studies there: {', '.join(names) or 'none'})"
        ) from None
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


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED_STATES)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
