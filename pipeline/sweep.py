"""Run a study: worker processes, the per-trial objective, progress, and the study's MLflow run.

One parent MLflow run per study; one child run per trial (``mlflow.parentRunId``). Each worker
imports torch, Lightning and MLflow once and runs many trials: never a process per trial.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import MaxTrialsCallback

from pipeline.config import Config, config_from_dict
from pipeline.search_space import sample
from pipeline.study import (
    FINISHED_STATES,
    StudyDefinition,
    create_or_load,
    finished_trials,
    load_study_file,
    make_sampler,
    storage_url,
)
from pipeline.tracking import RunLogger, experiment_id, get_client, mask_secrets, tracking_uri

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"


@dataclass
class WorkerArgs:
    study_file: str
    storage: str
    target: int  # finished (complete + pruned) trials the study should hold
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
    study_file: str | Path,
    *,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run (or resume) a study until it holds ``n_trials`` finished trials."""
    start = time.time()
    defn = load_study_file(study_file)  # every mistake in the file is reported here
    url = storage_url(storage)
    uri = tracking_uri(defn.base.tracking.tracking_uri)
    study, created = create_or_load(defn, url)
    target = n_trials or defn.spec.budget.n_trials
    parent = ensure_parent_run(study, defn, uri, url, created=created)
    threads = max(1, (os.cpu_count() or 1) // workers)
    args = [WorkerArgs(str(study_file), url, target, i, parent, uri, threads,
                       defn.spec.budget.timeout, quiet=progress) for i in range(workers)]

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

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    worker_main(args)


def worker_main(args: WorkerArgs) -> None:
    """One worker: run trials until the study holds ``target`` finished ones."""
    torch.set_num_threads(args.threads)
    if args.quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    defn = load_study_file(args.study_file)
    study, _ = create_or_load(defn, args.storage)
    # Distinct sampler seeds per worker and per resume, or they would propose the same trials.
    study.sampler = make_sampler(defn.spec.sampler, 1000 * args.index + len(study.trials))
    device = worker_device(defn.base, args.index)
    objective = Objective(defn, args.parent_run_id, args.tracking_uri, args.threads, device)
    if len(finished_trials(study)) < args.target:
        stop = MaxTrialsCallback(args.target, states=FINISHED_STATES)  # counts every worker's
        study.optimize(objective, timeout=args.timeout, callbacks=[stop], catch=(Exception,),
                       gc_after_trial=False)
    report_to_parent(study, args.parent_run_id, args.tracking_uri)


def worker_device(base: Config, index: int) -> str:
    """Worker i is pinned to GPU i mod n where there are GPUs; else what train would use."""
    from pipeline.train import default_device

    device = default_device(base.train.accelerator)
    if device.startswith("cuda"):
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


class Objective:
    def __init__(self, defn: StudyDefinition, parent_run_id: str, uri: str, threads: int,
                 device: str) -> None:
        self.defn = defn
        self.parent_run_id = parent_run_id
        self.uri = uri
        self.threads = threads
        self.device = device

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        from pipeline.train import fit

        nested, sampled = sample(trial, self.defn.space, self.defn.base.to_dict())
        nested["train"].update(progress_bar=False, threads=self.threads)
        nested["tracking"]["tracking_uri"] = self.uri
        cfg = config_from_dict(nested)
        metric = self.defn.spec.objective.metric
        callbacks = []
        if self.defn.spec.pruner.name != "none":
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=metric))
        result = fit(
            cfg,
            run_name=trial_run_name(trial.number, cfg),
            parent_run_id=self.parent_run_id,
            tags={"optuna_study": self.defn.name, "optuna_trial": trial.number},
            extra_params={f"sampled.{k}": v for k, v in sampled.items()},
            callbacks=callbacks,
            killed_by={optuna.TrialPruned: {"optuna_state": "PRUNED"}},
            device=self.device,
            on_run_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
        )
        values = result.history.get(metric, [])
        client = get_client(self.uri)
        if not values:
            client.set_tag(result.run_id, "optuna_state", "FAIL")
            raise RuntimeError(f"objective {metric} was never logged (eval.every_n_epochs > "
                               f"train.epochs?)")
        objective = sum(values[-self.defn.spec.objective.last_k:]) / len(
            values[-self.defn.spec.objective.last_k:])
        client.set_tag(result.run_id, "optuna_state", "FAIL" if math.isnan(objective)
                       else "COMPLETE")
        client.log_metric(result.run_id, "objective", objective, step=result.epochs_evaluated[-1])
        return objective


def trial_run_name(number: int, cfg: Config) -> str:
    m, t = cfg.model, cfg.train

    def arch(widths: list[int]) -> str:
        return "x".join(map(str, widths))

    return (f"trial-{number:03d} G{arch(m.g_hidden)} D{arch(m.d_hidden)} {m.activation} "
            f"{t.loss} lr{t.g_lr:.0e}/{t.d_lr:.0e}")


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# --- the study's parent run -----------------------------------------------------------------


def ensure_parent_run(study: optuna.Study, defn: StudyDefinition, uri: str, storage: str, *,
                      created: bool, wait: float = 120.0) -> str:
    """The study's MLflow run: created once, reused when the study is resumed.

    Only the process that created the study creates the run. When machines start a new study
    together, the others wait up to ``wait`` seconds for its id to appear in the study, so a
    study never ends up with two parent runs; after that (its creator died before making the
    run) they make it themselves.
    """
    client = get_client(uri)
    run_id = study.user_attrs.get(PARENT_ATTR)
    deadline = time.monotonic() + wait
    while not run_id and not created and time.monotonic() < deadline:
        time.sleep(0.5)
        run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return str(run_id)
        except Exception:  # a different tracking store than the study was started with
            pass
    exp = experiment_id(client, defn.base.tracking.experiment)
    run = client.create_run(exp, run_name=f"study {defn.name}", tags={
        "optuna_study": defn.name, "optuna_storage": mask_secrets(storage),
        "objective": f"{defn.spec.objective.direction} {defn.spec.objective.metric}",
        "dataset": defn.base.data.name,
    })
    run_id = run.info.run_id
    study.set_user_attr(PARENT_ATTR, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(defn.text)
        client.log_artifact(run_id, str(path))
    return run_id


def report_to_parent(study: optuna.Study, run_id: str, uri: str) -> None:
    """Best value and trial, a CSV of all trials, and Optuna's plots, on the parent run.

    Every worker (and every machine) reports when it stops. Metrics are logged at step = the
    number of finished trials, so the newest state is the latest value in MLflow; a report
    older than the one already there (a worker that stopped first but was slow to draw its
    plots) is skipped rather than overwrite it.
    """
    from pipeline.study_plots import study_plots

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in optuna.trial.TrialState}
    n_finished = counts["complete"] + counts["pruned"]
    best = best_trial(study)
    metrics = {f"n_{k}": float(v) for k, v in counts.items()}
    metrics["n_finished"] = float(n_finished)
    tags: dict[str, Any] = {}
    if best is not None:
        metrics["best_value"] = float(best.value)  # type: ignore[arg-type]
        metrics["best_trial"] = float(best.number)
        tags = {"best_trial": best.number, "best_run_id": best.user_attrs.get(RUN_ATTR, "")}
    table = study.trials_dataframe().to_csv(index=False).encode()
    plots = study_plots(study)  # seconds: drawn before the check below, not after it

    client = get_client(uri)
    if client.get_run(run_id).data.metrics.get("n_finished", -1.0) > n_finished:
        return
    logger = RunLogger(client, run_id)
    logger.log_metrics(metrics, step=n_finished)
    logger.set_tags(tags)
    logger.log_bytes(table, "trials.csv")
    for name, png in plots.items():
        logger.log_bytes(png, f"plots/{name}.png")


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
