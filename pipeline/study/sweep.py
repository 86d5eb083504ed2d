"""Run a study: worker processes, progress, and the summary printed at the end.

Each worker imports torch, Lightning and MLflow once and runs many trials (never a process per
trial). Workers receive the parsed ``StudyDefinition``: the study file is read once per command.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.study import MaxTrialsCallback

from pipeline.config import Config
from pipeline.study import parent_run
from pipeline.study.objective import Objective
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import (
    ENDED_STATES,
    ERROR_ATTR,
    FINISHED_STATES,
    RUN_ATTR,
    best_trial,
    create_or_load,
    finished_trials,
    storage_url,
)
from pipeline.tracking import get_client, tracking_uri


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
    index: int
    parent_run_id: str
    tracking_uri: str
    threads: int
    timeout: float | None
    quiet: bool  # the study progress line replaces Optuna's log line per trial


@dataclass
class SweepSummary:
    study_name: str
    n_finished: int
    best_trial: optuna.trial.FrozenTrial | None
    parent_run_id: str
    seconds: float


def run_sweep(
    defn: StudyDefinition,
    *,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run (or resume) a study until it holds ``n_trials`` finished trials."""
    start = time.time()
    url = storage_url(storage)
    uri = tracking_uri(defn.base.tracking.tracking_uri)
    study, created = create_or_load(defn, url)
    target = n_trials or defn.spec.budget.n_trials
    parent = parent_run.ensure(study, defn, uri, url, created=created)
    threads = max(1, (os.cpu_count() or 1) // workers)
    budget = defn.spec.budget
    guard = FailureGuard(budget.max_consecutive_failures, budget.failure_cap, len(study.trials))
    args = [WorkerArgs(defn, url, target, guard, i, parent, uri, threads, budget.timeout,
                       quiet=progress) for i in range(workers)]

    client = get_client(uri)
    monitor = Progress(study, target) if progress else None
    try:
        if workers == 1:
            worker_main(args[0])
        else:
            run_workers(args, defn.name)
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")
        raise
    except BaseException as exc:
        client.set_tag(parent, "error", f"{type(exc).__name__}: {exc}")
        client.set_terminated(parent, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.close()
    failure = guard.verdict(study)
    if failure is not None:
        client.set_tag(parent, "error", failure)
        client.set_terminated(parent, "FAILED")
        raise SweepError(failure)
    client.set_terminated(parent, "FINISHED")
    best = best_trial(study)
    return SweepSummary(defn.name, len(finished_trials(study)), best, parent, time.time() - start)


def run_workers(args: list[WorkerArgs], study_name: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    procs = [ctx.Process(target=worker_process, args=(a,), name=f"worker-{a.index}")
             for a in args]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        # If this process is stopped (Ctrl-C, SIGTERM, a crash), stop the workers too rather
        # than leave them writing to the study; they end their runs KILLED.
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"study {study_name}: {', '.join(failed)} exited with an error")


def worker_process(args: WorkerArgs) -> None:
    """A spawned worker: SIGTERM means "stop", handled like Ctrl-C (runs end KILLED)."""
    from pipeline.logs import quiet_libraries

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    quiet_libraries()
    worker_main(args)


def worker_main(args: WorkerArgs) -> None:
    """One worker: run trials until the study holds ``target`` finished ones."""
    torch.set_num_threads(args.threads)
    if args.quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    defn = args.defn
    study, _ = create_or_load(defn, args.storage)
    # Distinct sampler seeds per worker and per resume, or they would propose the same trials.
    study.sampler = defn.spec.sampler.build(1000 * args.index + len(study.trials))
    device = worker_device(defn.base, args.index)
    objective = Objective(defn, args.parent_run_id, args.tracking_uri, args.threads, device)
    if len(finished_trials(study)) < args.target:
        stop = MaxTrialsCallback(args.target, states=FINISHED_STATES)  # counts every worker's
        study.optimize(objective, timeout=args.timeout, callbacks=[stop, args.guard],
                       catch=(Exception,), gc_after_trial=False)
    parent_run.report(study, args.parent_run_id, args.tracking_uri)


def worker_device(base: Config, index: int) -> str:
    """Worker i is pinned to GPU i mod n where there are GPUs; else what train would use."""
    from pipeline.train import default_device

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
        best = best_trial(self.study)
        self.bar.set_postfix_str("best: -" if best is None else
                                 f"best {best.value:.4g} (trial {best.number})", refresh=False)
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


def summary_lines(summary: SweepSummary) -> list[str]:
    lines = [f"study {summary.study_name}: {summary.n_finished} finished trials in "
             f"{summary.seconds:.0f} s; MLflow parent run {summary.parent_run_id}"]
    best = summary.best_trial
    if best is None:
        lines.append("no trial completed")
    else:
        lines.append(f"best trial {best.number}: objective {best.value:.6g}, MLflow run "
                     f"{best.user_attrs.get(RUN_ATTR, '?')}")
        lines += [f"  {k} = {v}" for k, v in sorted(best.params.items())]
    lines.append("browse: make ui  (MLflow UI at http://127.0.0.1:5000)")
    return lines
