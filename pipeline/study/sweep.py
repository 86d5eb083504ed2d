"""Run a study: worker processes, progress, and the summary printed at the end.

Each worker imports torch, Lightning and MLflow once and runs many trials (never a process per
trial). Workers receive the parsed ``StudyDefinition``: the study file is read once per command.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from pipeline import interrupt
from pipeline.config import Config
from pipeline.devices import default_device
from pipeline.errors import ConfigError, DataError
from pipeline.faults import StorageFault, fault_message, storage_fault
from pipeline.study import parent_run
from pipeline.study.objective import Objective
from pipeline.study.space import check_pairs
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import (
    ENDED_STATES,
    ERROR_ATTR,
    FINISHED_STATES,
    OWNER_ATTR,
    RUN_ATTR,
    best_trial,
    check_storage,
    create_or_load,
    existing_study,
    fail_dead_trials,
    finished_trials,
    pareto_front,
    storage_url,
    this_worker,
    trial_counts,
)
from pipeline.tracking import (
    RunLogger,
    check_reachable,
    close_run,
    get_client,
    tracking_uri,
)


class SweepError(RuntimeError):
    """A study that stopped before its target: its trials kept failing."""


@dataclass
class FailureGuard:
    """Stops a study whose trials keep failing (a bad search range, a broken config) instead of
    letting it run away: ``max_consecutive`` failures in a row, or ``cap`` in all, counted over
    the trials this command started (numbers from ``first``), every worker's included."""

    max_consecutive: int
    cap: int
    first: int

    def verdict(self, study: optuna.Study) -> str | None:
        ended = sorted((t for t in study.get_trials(deepcopy=False, states=ENDED_STATES)
                        if t.number >= self.first), key=lambda t: t.number)
        failed = [t for t in ended if t.state == optuna.trial.TrialState.FAIL]
        in_a_row = 0
        for t in reversed(ended):
            if t.state != optuna.trial.TrialState.FAIL:
                break
            in_a_row += 1
        if in_a_row >= self.max_consecutive:
            why = f"{in_a_row} trials failed in a row"
        elif len(failed) >= self.cap:
            why = f"{len(failed)} trials failed"
        else:
            return None
        last = failed[-1].user_attrs.get(ERROR_ATTR, "see the trial's MLflow run")
        return (f"study {study.study_name} stopped: {why}; last error (trial "
                f"{failed[-1].number}): {last}")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL and self.verdict(study):
            study.stop()


@dataclass
class WorkerArgs:
    defn: StudyDefinition
    storage: str
    target: int  # finished (complete + pruned) trials the study should hold
    guard: FailureGuard
    creator: bool  # this command created the study
    index: int
    parent_run_id: str
    tracking_uri: str
    threads: int
    timeout: float | None
    # Optuna's log level in the worker: the caller's (a spawned worker starts from Optuna's
    # default, INFO), at least WARNING when the study progress line replaces a line per trial
    optuna_verbosity: int
    parent_pid: int = 0  # the sweep command's process, whose death stops the worker


@dataclass
class SweepSummary:
    study_name: str
    n_finished: int
    best_trial: optuna.trial.FrozenTrial | None
    parent_run_id: str
    seconds: float
    # RUNNING when this command's workers are done: another machine's last trials (the trial
    # budget counts them, so this machine did not start more), or a dead worker's leftovers
    n_running: int = 0
    objectives: str = ""  # "maximize val/pacgan_score, minimize cost/g_params"
    counts: dict[str, int] = field(default_factory=dict)  # complete, pruned, fail
    front: list[optuna.trial.FrozenTrial] = field(default_factory=list)  # several objectives
    metrics: list[str] = field(default_factory=list)  # the objectives' metrics, in order
    directions: list[str] = field(default_factory=list)  # and their directions
    already_complete: bool = False  # the study held its trials before: nothing was run
    links: dict[str, str] = field(default_factory=dict)  # name -> MLflow UI address


STOPPED_EXIT = 3  # a worker's exit code when it was stopped by a signal, not by an error
FAULT_EXIT = 4  # a worker's exit code after a storage fault (a full disk, a read-only store)


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


def summarize(study: optuna.Study, defn: StudyDefinition, parent: str, uri: str, start: float,
              *, already_complete: bool = False) -> SweepSummary:
    from pipeline.study.parent_run import objectives_text

    counts = trial_counts(study)
    best = best_trial(study)
    experiment = get_client(uri).get_run(parent).info.experiment_id
    links = ui_links(experiment, parent, best.user_attrs.get(RUN_ATTR) if best else None)
    return SweepSummary(
        defn.name, len(finished_trials(study)), best, parent, time.time() - start,
        counts["running"], objectives_text(defn), counts, pareto_front(study), defn.metrics,
        defn.directions, already_complete, links)


def ui_links(experiment_id: str, parent: str, best_run: str | None) -> dict[str, str]:
    """Direct MLflow UI addresses. MLflow 3's UI starts in its GenAI mode (traces, an
    assistant); ``workflowType=machine_learning`` switches it to model training, and it keeps
    that mode for the browser afterwards."""
    base = f"{UI_ADDRESS}/#/experiments/{experiment_id}"
    links = {"runs": f"{base}/runs{ML_MODE}", "parent run": f"{base}/runs/{parent}{ML_MODE}"}
    if best_run:
        links["best run"] = f"{base}/runs/{best_run}{ML_MODE}"
    return links


UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui`'s default
ML_MODE = "?workflowType=machine_learning"


class StaleRunCloser:
    """Optuna's heartbeat failed a trial (its worker stopped beating): its MLflow run too."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        kill_trial_run(self.uri, trial, "worker stopped sending heartbeats")


def close_dead_trials(study: optuna.Study, uri: str) -> None:
    for trial in fail_dead_trials(study):
        kill_trial_run(uri, trial, trial_error(study, trial))


def trial_error(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    fresh = study._storage.get_trial(trial._trial_id)
    return str(fresh.user_attrs.get(ERROR_ATTR, "worker died"))


def kill_trial_run(uri: str, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """A dead worker's trial run, left RUNNING, ends KILLED with the reason as a tag."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if not run_id:
        return
    client = get_client(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
    except Exception:
        return  # the run is not in this store
    close_run(RunLogger(client, run_id), "KILLED", {"killed_reason": reason,
                                                     "optuna_state": "FAIL"})


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


def run_workers(args: list[WorkerArgs], study_name: str) -> None:
    """Start the workers and wait for them. A worker stopped by a signal stops the whole study;
    stopping this process stops every worker (and a worker whose parent dies stops itself)."""
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    faults = ctx.SimpleQueue()  # a worker's one-line fault, printed once by this process
    procs = [ctx.Process(target=worker_process, args=(a, faults), name=f"worker-{a.index}")
             for a in args]
    stopped = None
    try:
        # Started with SIGINT ignored (inherited through spawn's exec): a Ctrl-C while a worker
        # still imports torch would print its traceback; this process gets the Ctrl-C and
        # stops the workers with SIGTERM. A worker sets its own handlers once it runs.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for p in procs:
                p.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        running = list(procs)
        while running and not stopped:
            multiprocessing.connection.wait([p.sentinel for p in running], timeout=1.0)
            for p in [p for p in running if not p.is_alive()]:
                running.remove(p)
                if p.exitcode == STOPPED_EXIT or (p.exitcode or 0) < 0:
                    stopped = f"{p.name} was stopped by a signal"
                elif p.exitcode == FAULT_EXIT:
                    stopped = "fault"  # the others would hit the same disk or store
            stopped = stopped or interrupt.requested()
    finally:
        # If this process is stopped (Ctrl-C, SIGTERM, a crash) or a worker was, stop the
        # others rather than leave them writing to the study; they end their runs KILLED.
        for p in procs:
            if p.is_alive():
                p.terminate()  # a stop request: each ends its trial at its next safe point
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    if not faults.empty():
        raise StorageFault(faults.get())
    if stopped:
        raise interrupt.Stopped(stopped)
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"study {study_name}: {', '.join(failed)} exited with an error")


def worker_process(args: WorkerArgs, faults: Any) -> None:
    """A spawned worker: SIGTERM and SIGINT mean "stop": the trial's run ends KILLED, the trial
    FAIL, and the process exits with STOPPED_EXIT, quietly. It also stops if its parent dies.
    A storage fault (or a store that turned unreadable) goes to ``faults`` for the sweep
    command to print once, and the worker exits FAULT_EXIT."""
    from pipeline.logs import quiet_libraries

    signal.signal(signal.SIGTERM, interrupt.request_stop_once)
    signal.signal(signal.SIGINT, interrupt.request_stop)
    _die_with_parent(args.parent_pid)
    quiet_libraries()
    try:
        worker_main(args)
    except KeyboardInterrupt:
        sys.exit(STOPPED_EXIT)
    except (StorageFault, ConfigError, DataError) as exc:  # e.g. the store damaged meanwhile
        faults.put(str(exc))
        sys.exit(FAULT_EXIT)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this process when its parent dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(args: WorkerArgs) -> None:
    """One worker: run trials until the study holds ``target`` finished ones."""
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(args.optuna_verbosity)
    defn = args.defn
    study, _ = create_or_load(defn, args.storage, allow_changes=True,  # checked by the command
                              on_stale=StaleRunCloser(args.tracking_uri))
    study.sampler = defn.spec.sampler.build(seed_offset(args.creator, args.index,
                                                        len(study.trials)))
    device = worker_device(defn.base, args.index)
    objective = Objective(defn, args.parent_run_id, args.tracking_uri, args.threads, device)
    warm_up(args.tracking_uri)
    with one_line_faults(f"study {defn.name}"):
        if len(finished_trials(study)) < args.target:
            stop = TrialBudget(args.target)
            study.optimize(objective, timeout=args.timeout,
                           callbacks=[stop, args.guard, stop_between_trials],
                           catch=(Exception,), gc_after_trial=False)
            if objective.fault is not None:
                raise StorageFault(fault_message(f"study {defn.name} stopped at trial "
                                                 f"{objective.fault[0]}", objective.fault[1],
                                                 resumes=True))
            interrupt.check()
        parent_run.report(study, args.parent_run_id, args.tracking_uri, defn)


@contextlib.contextmanager
def one_line_faults(what: str) -> Iterator[None]:
    """A storage fault raised anywhere inside (Optuna writing a trial's end to a full disk,
    say) becomes a StorageFault: one line for the command to print."""
    try:
        yield
    except StorageFault:
        raise
    except Exception as exc:
        reason = storage_fault(exc)
        if reason is None:
            raise
        raise StorageFault(fault_message(what, reason, resumes=True)) from exc


def warm_up(uri: str) -> None:
    """A worker's one-off costs, paid before its first trial instead of inside it: the store's
    connection and schema check (1-1.5 s on SQLite), and the map of installed packages that
    MLflow's save_model checks the model's requirements against (0.7 s, built once per process).
    In the first trial they made a fresh worker's first run ~2 s longer than the next ones."""
    from mlflow.utils import requirements_utils

    get_client(uri)
    requirements_utils._init_packages_to_modules_map()


class TrialBudget:
    """Stops a worker, after one of its trials, once the study's finished trials and those
    running in other workers reach ``target``.

    Optuna's MaxTrialsCallback counts finished trials only: a worker that ended the 7th of 8
    started a 9th while another ran the 8th (seen with 2 workers: a whole trial more, run alone
    at the end). A trial that fails frees its place again: its own worker, still alive, sees the
    count drop and goes on. A trial RUNNING under this process's name is a leftover (a worker
    runs one trial at a time), not counted. Two workers that check at the same instant can still
    both start one more (at most workers - 1 extra).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.me = this_worker()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        running = optuna.trial.TrialState.RUNNING
        counted = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED_STATES, running))
                   if t.state != running or t.user_attrs.get(OWNER_ATTR) != self.me]
        if len(counted) >= self.target:
            study.stop()


def seed_offset(creator: bool, index: int, n_trials: int) -> int:
    """Added to the study's sampler seed: distinct for every process, or two would propose the
    same trials. The creating command's workers get reproducible offsets (a one-worker study is
    repeatable from its seed); any other process (another machine, a resume) adds its host and
    pid."""
    if creator:
        return 1000 * index + n_trials
    entropy = f"{socket.gethostname()}/{os.getpid()}/{index}/{n_trials}/{time.time_ns()}"
    return 1 + int.from_bytes(hashlib.sha256(entropy.encode()).digest()[:4], "big")


def stop_between_trials(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if interrupt.requested():
        study.stop()


def worker_device(base: Config, index: int) -> str:
    """Worker i is pinned to GPU i mod n where there are GPUs; else what train would use."""
    device = default_device(base.train.accelerator)
    if device.startswith("cuda"):
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


class Progress:
    """One study-level line: finished trials of N, best value so far, elapsed (tqdm)."""

    def __init__(self, study: optuna.Study, target: int, interval: float | None = None) -> None:
        from tqdm import tqdm

        self.study = study
        self.bar = tqdm(total=target, desc=f"study {study.study_name}", unit="trial",
                        file=sys.stderr, dynamic_ncols=True)
        # Redrawn in place on a terminal; a log file gets a new line each time, so fewer.
        self.interval = interval or (2.0 if sys.stderr.isatty() else 30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._update()
        self._thread.start()

    def _update(self) -> None:
        done = len(finished_trials(self.study))
        self.bar.n = min(done, self.bar.total)
        if len(self.study.directions) > 1:
            front = pareto_front(self.study)
            self.bar.set_postfix_str(f"Pareto front: {len(front)} trials", refresh=False)
        else:
            best = best_trial(self.study)
            self.bar.set_postfix_str("best: -" if best is None else
                                     f"best {best.value:.4g} (trial {best.number})",
                                     refresh=False)
        self.bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._update()
            except Exception:  # a storage hiccup must not kill the display
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._update()
        self.bar.close()


def example_pick(summary: SweepSummary) -> str:
    """A --pick rule for this front: the best second objective with the first at least as good
    as the front's middle member's."""
    first, second = summary.metrics[0], summary.metrics[1]
    middle = summary.front[len(summary.front) // 2].values[0]
    best = "smallest" if summary.directions[1] == "minimize" else "largest"
    op = ">=" if summary.directions[0] == "maximize" else "<="
    return f"{best} {second} with {first} {op} {middle:.3g}"


def summary_lines(summary: SweepSummary) -> list[str]:
    running = f" ({summary.n_running} still running in other processes)" \
        if summary.n_running else ""
    c = summary.counts
    counts = (f"{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
              f"{c.get('fail', 0)} failed" if c else "")
    if summary.already_complete:
        lines = [f"study {summary.study_name} already complete ({summary.n_finished} trials"
                 f"{': ' + counts if counts else ''}); use TRIALS=N (--trials N) to add more"]
    else:
        lines = [f"study {summary.study_name}: {summary.n_finished} finished trials"
                 f"{' (' + counts + ')' if counts else ''}{running} in {summary.seconds:.0f} s"]
    lines.append(f"objective: {summary.objectives}" if summary.objectives else "")
    best = summary.best_trial
    if summary.front and len(summary.metrics) > 1:
        lines.append(f"Pareto front: {len(summary.front)} trials (MLflow tag pareto=true)")
        for t in summary.front:
            values = ", ".join(f"{m} {v:.4g}" for m, v in zip(summary.metrics, t.values,
                                                                strict=True))
            lines.append(f"  trial {t.number}: {values}")
        lines.append(f"export one: make export STUDY={summary.study_name} "
                     f"PICK='{example_pick(summary)}' (or TRIAL=N)")
    elif best is None:
        lines.append("no trial completed")
    else:
        lines.append(f"best trial {best.number}: objective {best.value:.6g}, MLflow run "
                     f"{best.user_attrs.get(RUN_ATTR, '?')}")
        lines += [f"  {k} = {v}" for k, v in sorted(best.params.items())]
    lines.append(f"MLflow parent run {summary.parent_run_id}")
    if summary.links:
        lines.append("browse: make ui, then")
        lines += [f"  {name}: {url}" for name, url in summary.links.items()]
    else:
        lines.append(f"browse: make ui  (MLflow UI at {UI_ADDRESS})")
    return [line for line in lines if line]
