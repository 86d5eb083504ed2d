"""Run a study: check what it needs, start its workers (worker.py), and close what they left.

Before any worker starts, the storage, the shared inputs and the MLflow store are checked and
the runs of trials that died earlier are closed; the summary comes from summary.py.
"""

from __future__ import annotations

import contextlib
import os
import time

import optuna

from pipeline import interrupt
from pipeline.faults import StorageFault
from pipeline.run_log import RunLogger, close_run
from pipeline.study import parent_run
from pipeline.study.space import check_pairs
from pipeline.study.spec import StudyDefinition
from pipeline.study.storage import check_storage, storage_url
from pipeline.study.store import (
    ERROR_ATTR,
    create_or_load,
    existing_study,
    fail_dead_trials,
    finished_trials,
)
from pipeline.study.summary import Progress, SweepSummary, summarize
from pipeline.study.worker import (
    FailureGuard,
    StaleRunCloser,
    WorkerArgs,
    kill_trial_run,
    run_workers,
    worker_main,
)
from pipeline.tracking import check_reachable, get_client, tracking_uri


class SweepError(RuntimeError):
    """A study that stopped before its target: its trials kept failing."""


def run_sweep(
    defn: StudyDefinition,
    *,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
    allow_changes: bool = False,
) -> SweepSummary:
    """Run (or resume) a study until it holds ``n_trials`` finished trials.

    Before anything is written: MLflow must answer, and a resumed study must have been created
    from the same objective, search space and base config (``allow_changes`` to accept edits).
    Trials a dead worker left RUNNING are failed and their runs marked KILLED first.
    """
    from pipeline.prepare import check_inputs

    start = time.time()
    # Checked in this order, so that a refusal creates nothing: the storage, the data and
    # settings every trial would share, then (for a resumed study) that its runs are in the
    # MLflow store, before the store is opened for writing (which creates one).
    url = storage_url(storage)
    check_storage(url)
    check_inputs(defn.base)
    check_pairs(defn.space, defn.base.to_dict())
    uri = tracking_uri(defn.base.tracking.tracking_uri)
    parent_run.check_kept(existing_study(defn.name, url), uri)
    check_reachable(uri)
    study, created = create_or_load(defn, url, allow_changes=allow_changes,
                                     on_stale=StaleRunCloser(uri))
    close_dead_trials(study, uri)
    close_orphan_runs(study, defn, uri)
    target = n_trials or defn.spec.budget.n_trials
    parent = parent_run.ensure(study, defn, uri, url, created=created)
    threads = max(1, (os.cpu_count() or 1) // workers)
    budget = defn.spec.budget
    guard = FailureGuard(budget.max_consecutive_failures, budget.failure_cap(target),
                         len(study.trials))
    verbosity = optuna.logging.get_verbosity()
    if progress:
        verbosity = max(verbosity, optuna.logging.WARNING)
    args = [WorkerArgs(defn, url, target, guard, created, i, parent, uri, threads,
                       budget.timeout, optuna_verbosity=verbosity, parent_pid=os.getpid())
            for i in range(workers)]

    client = get_client(uri)
    RunLogger(client, parent).set_tags({"study_state": "running"})
    if len(finished_trials(study)) >= target:
        # nothing to run: say so at once, without starting workers (which cost seconds each)
        close_run(RunLogger(client, parent), "FINISHED", {"study_state": "finished"})
        return summarize(study, defn, parent, uri, start, already_complete=True)
    monitor = Progress(study, target) if progress else None
    try:
        with interrupt.stop_on_signals():
            if workers == 1:
                worker_main(args[0])
            else:
                run_workers(args, defn.name)
    except KeyboardInterrupt as exc:
        close_run(RunLogger(client, parent), "KILLED", {
            "stopped": "signal", "study_state": "stopped, resumable",
            "killed_reason": f"stopped by {exc or 'Ctrl-C'}; run the same command again to "
                             f"resume the study"})
        raise
    except StorageFault as exc:
        with contextlib.suppress(Exception):  # the store may be the one that is full
            close_run(RunLogger(client, parent), "KILLED", {
                "study_state": "stopped by a fault, resumable", "killed_reason": str(exc)})
        raise
    except BaseException as exc:
        close_run(RunLogger(client, parent), "FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        if monitor is not None:
            monitor.close()
    failure = guard.verdict(study)
    if failure is not None:
        close_run(RunLogger(client, parent), "FAILED", {"error": failure,
                                                         "study_state": "failed"})
        raise SweepError(failure)
    close_run(RunLogger(client, parent), "FINISHED", {"study_state": "finished"})
    return summarize(study, defn, parent, uri, start)

def close_dead_trials(study: optuna.Study, uri: str) -> None:
    for trial in fail_dead_trials(study):
        kill_trial_run(uri, trial, trial_error(study, trial))


def trial_error(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    fresh = study._storage.get_trial(trial._trial_id)
    return str(fresh.user_attrs.get(ERROR_ATTR, "worker died"))

def close_orphan_runs(study: optuna.Study, defn: StudyDefinition, uri: str) -> None:
    """Trial runs still RUNNING whose trial has ended: a full disk or a read-only store kept
    them from closing when their trial failed (or a killed worker's seed runs). Ended FAILED,
    so that nothing stays RUNNING once the study resumes. A RUNNING trial's runs are left to
    its worker, which may be alive on another machine."""
    client = get_client(uri)
    experiment = client.get_experiment_by_name(defn.base.tracking.experiment)
    if experiment is None:
        return
    runs = client.search_runs([experiment.experiment_id], max_results=1000, filter_string=(
        f"tags.optuna_study = '{defn.name}' and attributes.status = 'RUNNING'"))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in runs:
        number = run.data.tags.get("optuna_trial")
        trial = trials.get(int(number)) if number and number.isdigit() else None
        if trial is None or trial.state == optuna.trial.TrialState.RUNNING:
            continue
        close_run(RunLogger(client, run.info.run_id), "FAILED", {
            "optuna_state": trial.state.name,
            "error": f"left RUNNING when trial {trial.number} ended {trial.state.name} (a full "
                     f"disk, a read-only store or a killed process kept it from closing); "
                     f"closed when the study resumed"})
