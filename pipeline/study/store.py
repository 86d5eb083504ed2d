"""A study in its storage (storage.py): created or loaded, its attributes, trials, best trial.

compare and export need only this module: a study found by name, the definition it was created
from, and the MLflow runs its attributes point to.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna

from pipeline.config_load import mask_secrets
from pipeline.errors import ConfigError
from pipeline.study.spec import StudyDefinition, check_study_name, parse_study, study_changes
from pipeline.study.storage import folder_lock, open_storage, storage_url

# A study's budget counts these: a pruned trial is a finished one.
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENDED_STATES = (*FINISHED_STATES, optuna.trial.TrialState.FAIL)
SPEC_ATTR = "study_file"  # the study file's text, kept in the study so any machine can rebuild it
CREATED_ATTR = "created_at"  # when the study was created (seconds since the epoch)
CHANGES_ATTR = "study_file_changes"  # edits accepted on resume with --allow-changes
PARENT_ATTR = "mlflow_parent_run_id"  # study attribute: the study's MLflow parent run
RUN_ATTR = "mlflow_run_id"  # trial attribute: the trial's MLflow run (its first seed's)
TRIAL_RUN_ATTR = "mlflow_trial_run_id"  # with objective.seeds > 1: the run holding the seeds
ERROR_ATTR = "error"  # trial attribute: why a failed trial failed
# trial attribute: the trial's scores (objectives, constraints, main metrics, costs) as Optuna
# saw them: the mean of each val/ metric's last_k evaluations; what export's --pick reads
SCORES_ATTR = "scores"
OWNER_ATTR = "worker"  # trial attribute: host, pid and start time of the process running it

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
