"""A study's workers: the processes that run its trials, and the callbacks that stop them.

Each worker imports torch, Lightning and MLflow once and runs many trials (never a process per
trial). Workers receive the parsed ``StudyDefinition``: the study file is read once per command.

One job past 300 lines: the worker's trial loop and the guards that end it (budget, failures,
signals, stale runs) share one process's state.
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
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from pipeline import interrupt
from pipeline.config import Config
from pipeline.devices import default_device
from pipeline.errors import ConfigError, DataError
from pipeline.faults import StorageFault, fault_message, storage_fault
from pipeline.run_log import RunLogger, close_run
from pipeline.study import parent_run
from pipeline.study.objective import Objective
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import (
    ENDED_STATES,
    ERROR_ATTR,
    FINISHED_STATES,
    OWNER_ATTR,
    RUN_ATTR,
    create_or_load,
    finished_trials,
    this_worker,
)
from pipeline.tracking import get_client


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

STOPPED_EXIT = 3  # a worker's exit code when it was stopped by a signal, not by an error
FAULT_EXIT = 4  # a worker's exit code after a storage fault (a full disk, a read-only store)

class StaleRunCloser:
    """Optuna's heartbeat failed a trial (its worker stopped beating): its MLflow run too."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        kill_trial_run(self.uri, trial, "worker stopped sending heartbeats")

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
