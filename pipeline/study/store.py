"""Where a study lives: Optuna storage, the study's attributes, its trials and its best trial.

compare and export need only this module: a study found by name, the definition it was created
from, and the MLflow runs its attributes point to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna

from pipeline.config import ConfigError
from pipeline.study.spec import StudyDefinition, parse_study

DEFAULT_STORAGE = Path("runs") / "optuna.journal"
# A study's budget counts these: a pruned trial is a finished one.
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENDED_STATES = (*FINISHED_STATES, optuna.trial.TrialState.FAIL)
SPEC_ATTR = "study_file"  # the study file's text, kept in the study so any machine can rebuild it
PARENT_ATTR = "mlflow_parent_run_id"  # study attribute: the study's MLflow parent run
RUN_ATTR = "mlflow_run_id"  # trial attribute: the trial's MLflow run
ERROR_ATTR = "error"  # trial attribute: why a failed trial failed


def storage_url(given: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the journal file runs/optuna.journal."""
    return given or os.environ.get("OPTUNA_STORAGE") or str(DEFAULT_STORAGE)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, sqlite://) as is; anything else is a journal file path.

    The journal file is Optuna's storage for several processes on one machine (SQLite locks
    under parallel writers); PostgreSQL is the one for many machines.
    """
    if "://" in url:
        return _rdb_storage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
             sqlalchemy.exc.OperationalError)
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except races:
            # Machines starting together on an empty database race to create Optuna's tables
            # and stamp their version (a duplicate key on alembic_version, seen with two
            # machines on PostgreSQL); on the next try the loser finds them made.
            time.sleep(1.0 + attempt)
    return optuna.storages.RDBStorage(url)


def create_or_load(defn: StudyDefinition, storage: str) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it.

    Creation is atomic in every Optuna storage (the study name is unique), so exactly one of
    several processes starting a new study at once learns it created it: that one creates the
    study's MLflow parent run, and the others wait for it (see ``parent_run.ensure``).
    The creator also enqueues the study file's ``enqueue`` trials.
    """
    kwargs: dict[str, Any] = dict(
        study_name=defn.name,
        storage=open_storage(storage),
        sampler=defn.spec.sampler.build(),
        pruner=defn.spec.pruner.build(),
        direction=defn.spec.objective.direction,
    )
    try:
        study, created = optuna.create_study(**kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.create_study(**kwargs, load_if_exists=True), False
    if study.user_attrs.get(SPEC_ATTR) is None:
        study.set_user_attr(SPEC_ATTR, defn.text)
    if created:  # only once: a resumed study has run (or still holds) them
        for params in defn.enqueue:
            study.enqueue_trial(params)
    return study, created


def find_study(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyDefinition]:
    """A study by name in the (default) storage, with the definition it was created from."""
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


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED_STATES)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
